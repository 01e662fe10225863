"""Fixtures for the interop suite: real FHIR servers on 127.0.0.1 (tests/interop/servers.py).

A server that cannot run here skips its tests with the reason; with CI set it fails instead, so
CI never skips them silently."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.interop.servers import MedplumServer, medplum_available


def _medplum(atomic_transactions: bool) -> Iterator[MedplumServer]:
    reason = medplum_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the Medplum server cannot run: {reason}")
        pytest.skip(f"the Medplum server cannot run: {reason}")
    with MedplumServer(atomic_transactions=atomic_transactions) as server:
        yield server


@pytest.fixture(scope="session")
def medplum() -> Iterator[MedplumServer]:
    """Medplum's FHIR router as Medplum runs it by default: a `transaction` Bundle is run as a
    batch (HTTP 200, a status per entry). One server per session: tests use their own ids."""
    yield from _medplum(atomic_transactions=False)


@pytest.fixture(scope="session")
def medplum_atomic() -> Iterator[MedplumServer]:
    """Medplum's FHIR router with the transaction feature on: atomic, at most 50 updates, at
    most 8 entries when one is conditional."""
    yield from _medplum(atomic_transactions=True)
