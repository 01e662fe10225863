"""One error hierarchy with stable process exit codes (never reuse a code)."""

from __future__ import annotations

from typing import Any


class ExitCode:
    OK = 0
    FAILURE = 1  # unexpected bug
    USAGE = 2  # bad command line or configuration
    SOURCE = 10  # the FHIR server or export could not be read
    AUTH = 11  # the FHIR server refused our credentials
    MAPPING = 12  # a mappings/ file is missing or invalid
    WRITEBACK = 13  # write-back failed
    BUSY = 14  # another refresh holds the lock
    CAPABILITY = 15  # the server lacks a required capability
    HELD = 16  # a pass would change too much at once: held for an operator to accept
    STORE = 17  # the state store (database) cannot be opened or used


def one_line(exc: BaseException) -> str:
    """An error's message on one line: whitespace runs (newlines from a server's text, a
    multi-line exception) become single spaces, control characters are dropped."""
    text = " ".join(str(exc).split())
    return "".join(ch for ch in text if ch.isprintable()) or type(exc).__name__


class FhirpanelError(Exception):
    """Root of every error fhirpanel raises on purpose."""

    exit_code = ExitCode.FAILURE


class ConfigError(FhirpanelError):
    exit_code = ExitCode.USAGE


class MappingError(FhirpanelError):
    exit_code = ExitCode.MAPPING


class SourceError(FhirpanelError):
    """Reading from a FHIR server or an export failed."""

    exit_code = ExitCode.SOURCE


class FhirHttpError(SourceError):
    """A FHIR server answered with an HTTP error; keeps its OperationOutcome."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        url: str = "",
        outcome: dict[str, Any] | None = None,
        hapi_code: str | None = None,
    ) -> None:
        self.status = status
        self.url = url
        self.outcome = outcome
        self.hapi_code = hapi_code
        super().__init__(f"HTTP {status} from {url or 'server'}: {message}")


class AuthError(FhirHttpError):
    exit_code = ExitCode.AUTH


class NotFoundError(FhirHttpError):
    pass


class GoneError(FhirHttpError):
    """410: a deleted resource, or an expired search (HAPI's cached page sets)."""


class VersionConflictError(FhirHttpError):
    """409 (HAPI) or 412 (sekmet, spec) on a stale If-Match or a conditional clash."""


class InvalidRequestError(FhirHttpError):
    """400/422: the request or the resource was refused as invalid."""


class ServerError(FhirHttpError):
    """5xx after retries were exhausted."""


class TransportError(SourceError):
    """Connection failures and timeouts after retries were exhausted."""


class UnsafeLinkError(SourceError):
    """A paging link pointed at another host than the configured base."""


class CapabilityError(FhirpanelError):
    exit_code = ExitCode.CAPABILITY


class WriteBackError(FhirpanelError):
    exit_code = ExitCode.WRITEBACK


class BusyError(FhirpanelError):
    exit_code = ExitCode.BUSY


class ChangeHeld(FhirpanelError):
    """A pass would remove, end or change more than `[safety]` allows: nothing was written."""

    exit_code = ExitCode.HELD

    def __init__(self, message: str, figures: dict[str, Any]) -> None:
        self.figures = figures
        super().__init__(message)
