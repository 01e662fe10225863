"""`fhirpanel serve`: the API and dashboard under gunicorn, bound to `api.host:api.port` with
`api.workers` worker processes.

The master process checks the settings and migrates the store once, then closes it; each worker
builds its own app (and database connections) after the fork. The access log leaves query
strings out (a token must never be sent in one, but an old bookmark may still do it) and the
code of a single-use sign-in link; its lines, like the error log's, have control characters
escaped (`fhirpanel.api.gunicorn_log.SafeLogger`), so a request cannot write a line of its own.
"""

from __future__ import annotations

import logging
from typing import Any

from fhirpanel.config import Settings
from fhirpanel.errors import ConfigError

log = logging.getLogger(__name__)

THREADS_PER_WORKER = 4  # gthread workers: a slow request does not hold up the others
# Remote address, method, path (no query string), status, bytes, seconds.
ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(L)s'
LOGGER_CLASS = "fhirpanel.api.gunicorn_log.SafeLogger"  # escapes control characters


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    api = settings.api
    if api.workers < 1:
        raise ConfigError("api.workers must be at least 1")
    if not 0 < api.port < 65536:
        raise ConfigError(f"api.port must be between 1 and 65535, not {api.port}")
    host = f"[{api.host}]" if ":" in api.host else api.host  # an IPv6 address
    return {
        "bind": [f"{host}:{api.port}"],
        "workers": api.workers,
        "worker_class": "gthread",
        "threads": THREADS_PER_WORKER,
        "proc_name": "fhirpanel-api",
        "accesslog": "-",
        "access_log_format": ACCESS_LOG_FORMAT,
        "logger_class": LOGGER_CLASS,
        "errorlog": "-",
        "loglevel": settings.log_level_for(service=True).lower(),
        "timeout": 60,
        "graceful_timeout": 20,
        "preload_app": False,  # each worker opens its own store connections
        # gunicorn >= 25.1 opens a control socket at one path per user ($HOME/.gunicorn):
        # two servers (the demo and a benchmark) would fight over it. Not needed here.
        "control_socket_disable": True,
    }


def check_before_serving(settings: Settings) -> None:
    """Fail in the master with a clear message rather than in every worker: tokens present
    and well-formed, the store reachable and migrated."""
    from fhirpanel.api.app import check_api_settings
    from fhirpanel.api.auth import TokenTable
    from fhirpanel.store import Store

    check_api_settings(settings.api)
    if not TokenTable.from_settings(settings.api):
        raise ConfigError(
            "no API tokens configured: set api.admin_tokens and/or "
            "api.read_tokens (FHIRPANEL_API_ADMIN_TOKENS, "
            "FHIRPANEL_API_READ_TOKENS)"
        )
    store = Store(settings.database)  # migrates to the newest schema
    store.close()  # no connection may cross the fork into the workers


def serve(settings: Settings) -> None:
    """Run gunicorn in the foreground until it is stopped (SIGTERM or Ctrl-C)."""
    from gunicorn.app.base import BaseApplication

    check_before_serving(settings)
    options = gunicorn_options(settings)

    class FhirpanelApplication(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings:  # older gunicorn lacks the newest settings
                    self.cfg.set(key, value)

        def load(self) -> Any:
            from fhirpanel.api.app import create_app

            return create_app(settings)

    api = settings.api
    log.info("serving the API on http://%s:%d with %d worker(s)", api.host, api.port, api.workers)
    FhirpanelApplication().run()
