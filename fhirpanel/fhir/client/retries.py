"""Retries under the FHIR client: urllib3's `Retry` with backoff, jitter, a per-request time budget
and POST retried only when the server surely did not act on it."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from urllib3.connectionpool import ConnectionPool
from urllib3.exceptions import InvalidHeader, MaxRetryError, ResponseError
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from fhirpanel.config import FhirSettings

# Worth another try: throttled, or a gateway/server that is briefly unavailable.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# A POST is not idempotent: retry it only when the server surely did not act on it.
POST_RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})


RetryListener = Callable[[str | None, str | None, int | None, Exception | None], None]


class BudgetedRetry(Retry):
    """urllib3 `Retry` with: exponential backoff from the first retry with jitter; POST retried on
    429/503 only (and on connect errors, which urllib3 retries for any method); an invalid
    Retry-After ignored rather than raised; and a time budget over all retries of a request,
    counted from its first failure, waits included."""

    budget_seconds: float | None = None
    first_failure_at: float | None = None
    listener: RetryListener | None = None
    _jitter = random.Random()  # noqa: S311 - spreads retries in time; not security

    def new(self, **kw: Any) -> Self:
        retry = super().new(**kw)
        retry.budget_seconds = self.budget_seconds
        retry.first_failure_at = self.first_failure_at
        retry.listener = self.listener
        return retry

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if method.upper() == "POST" and status_code in POST_RETRY_STATUSES:
            return True
        return super().is_retry(method, status_code, has_retry_after)

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        now = time.monotonic()
        started = self.first_failure_at if self.first_failure_at is not None else now
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        retry.first_failure_at = started
        if self.budget_seconds is not None:
            wait = retry.planned_wait(response)
            if now - started + wait > self.budget_seconds:
                status = response.status if response is not None else None
                reason = error or ResponseError(
                    f"retry budget of {self.budget_seconds:g}s spent (last status {status})"
                )
                raise MaxRetryError(_pool, url, reason) from reason  # type: ignore[arg-type]
        if self.listener is not None:
            self.listener(method, url, response.status if response is not None else None, error)
        return retry

    def planned_wait(self, response: BaseHTTPResponse | None) -> float:
        """The longest this retry will sleep before trying again."""
        if response is not None and self.respect_retry_after_header:
            retry_after = self.get_retry_after(response)
            if retry_after:
                return retry_after
        return self._backoff_ceiling()

    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        try:
            return super().get_retry_after(response)
        except InvalidHeader:
            return None

    def get_backoff_time(self) -> float:
        ceiling = self._backoff_ceiling()
        # Equal jitter: half the wait fixed, half random, so clients that failed together spread.
        return ceiling / 2 + self._jitter.random() * ceiling / 2

    def _backoff_ceiling(self) -> float:
        failures = 0
        for entry in reversed(self.history):
            if entry.redirect_location is not None:
                break
            failures += 1
        if failures == 0:
            return 0.0
        return float(min(self.backoff_max, self.backoff_factor * 2 ** (failures - 1)))


def build_retry(settings: FhirSettings, listener: RetryListener | None = None) -> BudgetedRetry:
    retry = BudgetedRetry(
        total=settings.max_retries,
        connect=None,
        read=None,
        status=None,
        other=0,
        allowed_methods=IDEMPOTENT_METHODS,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=settings.backoff_factor,
        backoff_max=settings.backoff_max,
        respect_retry_after_header=True,
        raise_on_status=False,  # the last error response comes back and is mapped like any other
        raise_on_redirect=False,
    )
    retry.budget_seconds = settings.retry_budget_seconds
    retry.listener = listener
    return retry
