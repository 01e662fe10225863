"""Health checks (no token needed): `/healthz` says the process answers; `/readyz` says whether it
can serve: the store answers, the FHIR server answers `GET [base]/metadata` (when one is
configured), and a refresh has stored results. It answers 503 when any of these fails."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy.exc import SQLAlchemyError

from fhirpanel.config import FhirSettings

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

PROBE_TIMEOUT = (2.0, 3.0)  # connect, read: a readiness probe must answer quickly itself
PROBE_CACHE_SECONDS = 10.0  # probes every few seconds from several places share one request


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    status: int | None = None


class FhirProbe:
    """`GET [base]/metadata` with a short timeout, its answer cached a few seconds. Any HTTP
    answer below 500 counts as reachable (a 401 still proves the server is up); the check sends
    no credentials."""

    def __init__(
        self,
        fhir: FhirSettings,
        *,
        cache_seconds: float = PROBE_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = fhir.base_url.rstrip("/")
        self.verify = fhir.verify_tls
        self.user_agent = fhir.user_agent
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, ProbeResult] | None = None

    def check(self) -> ProbeResult:
        if not self.base:
            return ProbeResult(True, "not configured")
        with self._lock:
            now = self.clock()
            if self._cached is not None and now - self._cached[0] < self.cache_seconds:
                return self._cached[1]
            result = self._probe()
            self._cached = (self.clock(), result)
            return result

    def _probe(self) -> ProbeResult:
        try:
            response = requests.get(
                f"{self.base}/metadata",
                timeout=PROBE_TIMEOUT,
                verify=self.verify,
                headers={"Accept": "application/fhir+json", "User-Agent": self.user_agent},
            )
        except requests.RequestException as exc:
            log.warning("readiness: FHIR server unreachable (%s)", type(exc).__name__)
            return ProbeResult(False, f"unreachable: {type(exc).__name__}")
        if response.status_code >= 500:
            return ProbeResult(False, f"answered HTTP {response.status_code}", response.status_code)
        return ProbeResult(True, f"answered HTTP {response.status_code}", response.status_code)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    ctx = current_app.extensions["fhirpanel"]
    checks: dict[str, dict[str, Any]] = {}
    store_ok = ctx.store.ping()
    checks["store"] = {"ok": store_ok, "detail": "answered" if store_ok else "unreachable"}
    fhir = ctx.fhir_probe.check()
    checks["fhir"] = {"ok": fhir.ok, "detail": fhir.detail}
    if store_ok:
        checks["last_run"] = _last_run_check(ctx.store)
    else:
        checks["last_run"] = {"ok": False, "detail": "store unreachable"}
    ready = all(c["ok"] for c in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return jsonify(body), 200 if ready else 503


def _last_run_check(store: Any) -> dict[str, Any]:
    """Ready once some refresh stored results; a failed last run is reported but the results
    of the one before are still served."""
    try:
        last = store.last_run()
        good = store.last_run(statuses=("succeeded", "partial"))
    except SQLAlchemyError:
        return {"ok": False, "detail": "store unreachable"}
    if good is None:
        return {
            "ok": False,
            "detail": "no refresh has stored results yet",
            "run_id": last["id"] if last else None,
            "status": last["status"] if last else None,
        }
    assert last is not None  # noqa: S101 - `good` is one of them
    detail = (
        "last refresh succeeded"
        if last["id"] == good["id"]
        else (f"last refresh {last['status']}; serving the results of run {good['id']}")
    )
    return {
        "ok": True,
        "detail": detail,
        "run_id": last["id"],
        "status": last["status"],
        "finished_at": last["finished_at"],
    }
