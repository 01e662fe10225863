"""Credentials for the FHIR client: the `AuthProvider` seam and the plain kinds (none, bearer,
basic); SMART Backend Services lives in fhir/smart.py. Secrets never reach a repr or a message."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import requests

from fhirpanel.config import FhirSettings
from fhirpanel.errors import ConfigError


class AuthProvider(Protocol):
    """The seam for credentials (SMART Backend Services: fhir/smart.py): sets headers on each
    request."""

    def apply(self, request: requests.PreparedRequest) -> None: ...

    def invalidate(self) -> None:
        """Called once per request on a 401, or a 403 that says the token is invalid or
        expired (`token_refused`); the request is then retried once."""
        ...


class NoAuth:
    def apply(self, request: requests.PreparedRequest) -> None:
        return None

    def invalidate(self) -> None:
        return None

    def __repr__(self) -> str:
        return "NoAuth()"


class BearerAuth:
    """A fixed bearer token, or one obtained from `fetch()` and fetched again after a 401."""

    def __init__(self, token: str | None = None, *, fetch: Callable[[], str] | None = None) -> None:
        if not token and fetch is None:
            raise ConfigError("bearer auth needs a token")
        self._token = token or None
        self._fetch = fetch

    def apply(self, request: requests.PreparedRequest) -> None:
        if self._token is None and self._fetch is not None:
            self._token = self._fetch()
        request.headers["Authorization"] = f"Bearer {self._token}"

    def invalidate(self) -> None:
        if self._fetch is not None:
            self._token = None

    def __repr__(self) -> str:
        return "BearerAuth(token=***)"


class BasicAuth:
    def __init__(self, username: str, password: str) -> None:
        if not username:
            raise ConfigError("basic auth needs a username")
        raw = f"{username}:{password}".encode()
        self._header = "Basic " + base64.b64encode(raw).decode("ascii")
        self.username = username

    def apply(self, request: requests.PreparedRequest) -> None:
        request.headers["Authorization"] = self._header

    def invalidate(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password=***)"


def auth_from_settings(settings: FhirSettings) -> AuthProvider:
    if settings.auth == "bearer":
        return BearerAuth(secret_setting(settings.token, settings.token_file, "token"))
    if settings.auth == "basic":
        password = secret_setting(settings.password, settings.password_file, "password")
        return BasicAuth(settings.username, password)
    if settings.auth == "smart":
        from fhirpanel.fhir.smart import SmartBackendAuth  # PyJWT and cryptography, when used

        return SmartBackendAuth(settings)
    return NoAuth()


def secret_setting(value: str, file: str, name: str) -> str:
    """`fhir.<name>`, or the contents of `fhir.<name>_file` without its trailing newline (a
    mounted secret). The error names the setting and the file, never the secret."""
    if not file:
        return value
    if value:
        raise ConfigError(f"set fhir.{name} or fhir.{name}_file, not both")
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"fhir.{name}_file: cannot read {file}: {why}") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise ConfigError(f"fhir.{name}_file: {file} is empty")
    return secret


class RequestsAuth(requests.auth.AuthBase):
    def __init__(self, provider: AuthProvider) -> None:
        self.provider = provider

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        self.provider.apply(request)
        return request


# An explicit no-op, so requests does not fall back to ~/.netrc credentials either.
NO_CREDENTIALS = RequestsAuth(NoAuth())
