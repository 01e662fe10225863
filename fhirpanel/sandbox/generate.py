"""Synthetic primary-care population (FHIR R4 JSON), streamed patient by patient from a seed.

`generate_population` yields the resources; `write_population` writes them as Bulk Data NDJSON
plus FHIR transaction Bundles. The same (patients, seed, as_of, malformed_rate) always gives
byte-identical output: every random choice comes from `random.Random` instances seeded from those
arguments, nothing reads the clock, and nothing iterates over a hash-ordered set.

The population is shaped so that every rule in docs/methods.md sections 1-5 is exercised: visit
patterns are dealt from a shuffled deck per block of patients (so each pattern occurs in any
population of a few hundred), and condition prevalence follows US primary care by age band.
Figures are approximations from published prevalence surveys; the codes are real, the people are
not.

This module is the public API. The figures are data (catalogue.toml, read by catalogue.py); the
practice's clinicians are built in directory.py, each patient's visits in visits.py, and each
patient's resources in patients.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any, Final

import orjson

from fhirpanel.domain.dates import months_before
from fhirpanel.errors import ConfigError
from fhirpanel.sandbox.catalogue import ConditionDef
from fhirpanel.sandbox.common import Resource
from fhirpanel.sandbox.directory import (
    Directory,
    build_directory,
    is_valid_npi,
    npi_check_digit,
    organization_resources,
    pcp_count,
    practitioner_resource,
    practitioner_role_resource,
)
from fhirpanel.sandbox.patients import CONDITION_CATALOGUE, MALFORMED_ID_SUFFIX, PatientGenerator
from fhirpanel.sandbox.visits import UTILISATION_MODES

__all__ = [
    "CONDITION_CATALOGUE",
    "MALFORMED_ID_SUFFIX",
    "RESOURCE_TYPES",
    "UTILISATION_MODES",
    "ConditionDef",
    "build_directory",
    "generate_population",
    "is_valid_npi",
    "months_before",
    "npi_check_digit",
    "pcp_count",
    "write_population",
]

RESOURCE_TYPES: Final = (
    "Patient",
    "Encounter",
    "Condition",
    "Practitioner",
    "PractitionerRole",
    "Organization",
)


def _check_arguments(
    patients: int, malformed_rate: float, bundle_size: int = 1, utilisation: str = "mild"
) -> None:
    if utilisation not in UTILISATION_MODES:
        raise ConfigError(
            f"utilisation must be one of {', '.join(UTILISATION_MODES)}, not {utilisation!r}"
        )
    if patients < 0:
        raise ConfigError(f"patients must be zero or more, not {patients}")
    if not 0.0 <= malformed_rate < 0.5:
        raise ConfigError(f"malformed rate must be in [0, 0.5), not {malformed_rate}")
    if bundle_size < 1:
        raise ConfigError(f"bundle size must be at least 1, not {bundle_size}")


def _directory_resources(seed: int, directory: Directory) -> list[Resource]:
    out = organization_resources(seed)
    clinicians = directory.clinicians
    out += [practitioner_resource(c) for c in clinicians]
    out += [practitioner_role_resource(c) for c in clinicians]
    return out


def _as_date(as_of: date) -> date:
    return date(as_of.year, as_of.month, as_of.day)  # a datetime passed in loses its time


def generate_population(
    patients: int,
    seed: int,
    as_of: date,
    malformed_rate: float = 0.01,
    *,
    utilisation: str = "mild",
) -> Iterator[dict[str, Any]]:
    """FHIR R4 resources of a synthetic primary-care practice, streamed: organisations,
    practitioners and roles first, then each patient with their encounters and conditions.
    `utilisation`: how emergency visits and inpatient stays follow risk (UTILISATION_MODES)."""
    _check_arguments(patients, malformed_rate, utilisation=utilisation)
    generator = PatientGenerator(patients, seed, _as_date(as_of), malformed_rate, utilisation)
    yield from _directory_resources(seed, generator.directory)
    for group in generator.groups():
        for resource, _ in group:
            yield resource


def write_population(
    out_dir: Path,
    patients: int,
    seed: int,
    as_of: date,
    malformed_rate: float = 0.01,
    bundle_size: int = 500,
    *,
    utilisation: str = "mild",
) -> dict[str, int]:
    """Write `<Type>.ndjson` (Bulk Data style) and `bundles/transaction-NNNN.json` (PUT by id,
    at most `bundle_size` entries, organisations and clinicians first). A patient's resources
    share a bundle when they fit (a merged pair too), so references point at the same or an
    earlier bundle. Malformed records no server would store (a bad date, a dangling or missing
    Condition subject) are left out of the bundles. Returns NDJSON counts per resource type.
    `utilisation`: how emergency visits and inpatient stays follow risk (UTILISATION_MODES)."""
    _check_arguments(patients, malformed_rate, bundle_size, utilisation)
    out_dir = Path(out_dir)
    bundle_dir = out_dir / "bundles"
    bundle_dir.mkdir(parents=True, exist_ok=True)
    for stale in bundle_dir.glob("transaction-*.json"):  # a rerun must not leave extra bundles
        stale.unlink()
    generator = PatientGenerator(patients, seed, _as_date(as_of), malformed_rate, utilisation)
    counts = dict.fromkeys(RESOURCE_TYPES, 0)
    handles = {
        rtype: (out_dir / f"{rtype}.ndjson").open("wb", buffering=1 << 20)
        for rtype in RESOURCE_TYPES
    }
    writer = _BundleWriter(bundle_dir, bundle_size)
    try:
        directory = [(res, True) for res in _directory_resources(seed, generator.directory)]
        writer.add_group(_serialise(directory, handles, counts))
        for group in generator.groups():
            writer.add_group(_serialise(group, handles, counts))
        writer.flush()
    finally:
        for handle in handles.values():
            handle.close()
    return counts


def _serialise(
    group: list[tuple[Resource, bool]], handles: dict[str, Any], counts: dict[str, int]
) -> list[bytes]:
    """Write each resource's NDJSON line; return the bundle entries of the storable ones."""
    entries = []
    for resource, storable in group:
        rtype = resource["resourceType"]
        line = orjson.dumps(resource)
        handles[rtype].write(line + b"\n")
        counts[rtype] += 1
        if storable:
            url = f"{rtype}/{resource['id']}".encode()
            entries.append(
                b'{"resource":' + line + b',"request":{"method":"PUT","url":"' + url + b'"}}'
            )
    return entries


class _BundleWriter:
    """Packs entries into transaction Bundles of at most `size` entries, keeping a group in one
    bundle when it fits. One entry per line: compact, and readable in a diff."""

    def __init__(self, directory: Path, size: int) -> None:
        self.directory = directory
        self.size = size
        self.pending: list[bytes] = []
        self.written = 0

    def add_group(self, entries: list[bytes]) -> None:
        if len(self.pending) + len(entries) > self.size:
            self.flush()
        while len(entries) > self.size:  # a group larger than a bundle is split in order
            self.pending = entries[: self.size]
            entries = entries[self.size :]
            self.flush()
        self.pending.extend(entries)

    def flush(self) -> None:
        if not self.pending:
            return
        self.written += 1
        body = (
            b'{"resourceType":"Bundle","type":"transaction","entry":[\n'
            + b",\n".join(self.pending)
            + b"\n]}\n"
        )
        (self.directory / f"transaction-{self.written:04d}.json").write_bytes(body)
        self.pending = []
