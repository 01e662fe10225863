"""Log lines that a request cannot forge: control characters are written escaped.

A URL path can carry `%0d%0a` (decoded into the WSGI `PATH_INFO`), and any field a client
chooses (a path parameter, a header) can hold other control characters: written raw, a CR/LF
starts a line of the client's making ("... sign-in: alice (admin)") and an ESC drives the
terminal of whoever reads the log. `escape_controls` writes them as `\\r`, `\\n`, `\\t`,
`\\xNN` or `\\uNNNN` (C0, DEL, C1, the Unicode line and paragraph separators and the bidi
overrides) and doubles a backslash, so an escaped form cannot be faked either.

`EscapingFilter` applies it to every record of the API's loggers (`install`, called by
`create_app`); `fhirpanel.api.gunicorn_log` applies it to gunicorn's access and error logs.
"""

from __future__ import annotations

import logging
import re

# The loggers of fhirpanel/api and the session store: their messages can carry request input.
API_LOGGERS = (
    "fhirpanel.api",
    "fhirpanel.api.app",
    "fhirpanel.api.auth",
    "fhirpanel.api.dashboard",
    "fhirpanel.api.health",
    "fhirpanel.api.metrics",
    "fhirpanel.api.params",
    "fhirpanel.api.problems",
    "fhirpanel.api.routes",
    "fhirpanel.api.serve",
    "fhirpanel.service.review",
    "fhirpanel.store.sessions",
)

_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t", "\\": "\\\\"}
_CONTROLS = "\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\\\\{_CONTROLS}]")
_UNSAFE_KEEPING_BACKSLASHES = re.compile(f"[{_CONTROLS}]")


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str, *, backslashes: bool = True) -> str:
    """`text` with every control character (and the backslash) escaped: one printable line.
    `backslashes=False` leaves backslashes alone, for text that is already escaped (gunicorn's
    error log quotes a bad request line with `repr`)."""
    pattern = _UNSAFE if backslashes else _UNSAFE_KEEPING_BACKSLASHES
    if not pattern.search(text):
        return text
    return pattern.sub(_escape_one, text)


class EscapingFilter(logging.Filter):
    """Formats the record's message once and stores it escaped (the traceback, added by the
    formatter, keeps its lines)."""

    def __init__(self, *, backslashes: bool = True) -> None:
        super().__init__()
        self.backslashes = backslashes

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_fhirpanel_escaped", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it itself
            return True
        record.msg, record.args = escape_controls(message, backslashes=self.backslashes), None
        record._fhirpanel_escaped = True
        return True


_FILTERS = {True: EscapingFilter(), False: EscapingFilter(backslashes=False)}


def install(names: tuple[str, ...] = API_LOGGERS, *, backslashes: bool = True) -> None:
    """Put the escaping filter on these loggers (idempotent)."""
    chosen = _FILTERS[backslashes]
    for name in names:
        logger = logging.getLogger(name)
        if chosen not in logger.filters:
            logger.addFilter(chosen)
