"""gunicorn's logger for `fhirpanel serve` (its `logger_class`): every access and error log
line is written with control characters escaped (a `%0d%0a` in a path cannot start a forged
line, whatever `access_log_format` says), and the code of a single-use sign-in link
(`/login/once/<code>`) is left out of the access log. Imported by gunicorn only."""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from fhirpanel.api.logsafe import install
from fhirpanel.store.sessions import LOGIN_LINK_PREFIX

REDACTED = "<redacted>"


def redact_path(path: str) -> str:
    """A sign-in link's code is a credential until used: keep it out of the log."""
    if path.startswith(LOGIN_LINK_PREFIX):
        return LOGIN_LINK_PREFIX + REDACTED
    return path


class SafeLogger(Logger):  # type: ignore[misc]
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        install((self.access_log.name,))
        # gunicorn quotes a refused request line with repr(): escape what is left, but leave
        # its backslashes single.
        install((self.error_log.name,), backslashes=False)

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        path = environ.get("PATH_INFO") or ""
        # PATH_INFO holds the path's bytes as latin-1 (PEP 3333): show them as the UTF-8 the
        # app reads, so the access log and the app's log name a path alike.
        try:
            atoms["U"] = path = path.encode("latin-1").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            pass
        raw_uri = environ.get("RAW_URI") or ""
        if path.startswith(LOGIN_LINK_PREFIX) or raw_uri.startswith(LOGIN_LINK_PREFIX):
            atoms["U"] = redact_path(path)
            atoms["r"] = (
                f"{environ.get('REQUEST_METHOD')} {LOGIN_LINK_PREFIX}{REDACTED} "
                f"{environ.get('SERVER_PROTOCOL')}"
            )
            atoms.pop("{raw_uri}e", None)
            atoms.pop("{path_info}e", None)
        return atoms
