"""SMART Backend Services authorization: a client-credentials grant with a signed JWT assertion.

`SmartBackendAuth` is an `AuthProvider` for `FhirClient`. It finds the token endpoint in
`{base}/.well-known/smart-configuration` (or takes `fhir.smart_token_url`), signs a short-lived
client assertion with the registered private key (RS384 or ES384, PyJWT), trades it for an access
token, caches the token until shortly before it expires and fetches a new one after a 401 (or a
403 that says the token is invalid or expired: `client.token_refused`), once per request. One
instance may be shared by threads (the worker and the API): renewal happens under a lock.

Neither the private key, the assertion nor the access token ever reaches a log line, a message or
a repr. `fhirpanel smart-jwks` prints the JWKS (public key) to register with the EHR.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit

import jwt
import requests
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from fhirpanel.config import FhirSettings
from fhirpanel.errors import (
    AuthError,
    ConfigError,
    ServerError,
    TransportError,
)
from fhirpanel.fhir.parse import RESOURCE_TYPES

log = logging.getLogger(__name__)

SigningKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
Clock: TypeAlias = Callable[[], float]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# SMART Backend Services: the assertion's exp is at most five minutes ahead. We stay 10 s under
# so a server whose clock lags ours a little still accepts it.
ASSERTION_LIFETIME_SECONDS = 290
DEFAULT_EXPIRES_IN = 300  # when the token response leaves expires_in out
RENEW_MARGIN_SECONDS = 60  # renew this long before expiry (at most halfway through a short token)
MIN_RSA_BITS = 2048  # RFC 7518 s.3.3: RS* keys of 2048 bits or more
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_JWT_LIKE = re.compile(r"eyJ[\w-]*\.[\w-]*\.[\w-]*")
_MAX_DETAIL = 300

# What fhirpanel does to each type (fhir/source reads; writeback searches by identifier, then
# creates or updates; Provenance is only created). Nothing is ever deleted.
READ_TYPES = RESOURCE_TYPES
WRITE_TYPES = ("CareTeam", "CarePlan", "RiskAssessment", "Group")
CREATE_ONLY_TYPES = ("Provenance",)


# ---------------------------------------------------------------- scopes


def default_scopes(version: Literal["v1", "v2"]) -> list[str]:
    """System scopes for the types fhirpanel reads and writes. v1: `.read`/`.write`; v2: the
    `c r u d s` permission letters in that order (SMART App Launch 2.x, scopes-and-launch-context),
    `.rs` to read and search, `.crus` to also create and update, `.c` for Provenance."""
    scopes: list[str] = []
    if version == "v1":
        scopes += [f"system/{t}.read" for t in READ_TYPES]
        for rtype in WRITE_TYPES:
            scopes += [f"system/{rtype}.read", f"system/{rtype}.write"]
        scopes += [f"system/{t}.write" for t in CREATE_ONLY_TYPES]
    else:
        scopes += [f"system/{t}.rs" for t in READ_TYPES]
        scopes += [f"system/{t}.crus" for t in WRITE_TYPES]
        scopes += [f"system/{t}.c" for t in CREATE_ONLY_TYPES]
    return scopes


def requested_scopes(settings: FhirSettings) -> str:
    """`fhir.smart_scopes` (spaces or commas between scopes) or the default set, space-separated
    as OAuth wants them."""
    given = [s for s in re.split(r"[\s,]+", settings.smart_scopes) if s]
    return " ".join(given or default_scopes(settings.smart_scope_version))


# ---------------------------------------------------------------- keys


def load_signing_key(settings: FhirSettings) -> SigningKey:
    """The private key from `fhir.smart_key_file` or `fhir.smart_private_key` (PEM), checked
    against `fhir.smart_algorithm`. Errors name the setting or the file, never the key."""
    if settings.smart_key_file and settings.smart_private_key:
        raise ConfigError("SMART: set fhir.smart_key_file or fhir.smart_private_key, not both")
    if settings.smart_key_file:
        path = Path(settings.smart_key_file)
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"SMART: cannot read the private key file {path}: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
        _warn_if_shared(path)
        where = f"the private key file {path}"
    elif settings.smart_private_key:
        text = settings.smart_private_key.strip()
        if "\\n" in text and "\n" not in text:  # a PEM squeezed onto one line in an env file
            text = text.replace("\\n", "\n")
        pem = text.encode("utf-8")
        where = "fhir.smart_private_key (FHIRPANEL_FHIR_SMART_PRIVATE_KEY)"
    else:
        raise ConfigError(
            "SMART: no private key; set fhir.smart_key_file "
            "(FHIRPANEL_FHIR_SMART_KEY_FILE) or FHIRPANEL_FHIR_SMART_PRIVATE_KEY"
        )
    key = _parse_private_key(pem, where)
    _check_key_fits(key, settings.smart_algorithm, where)
    return key


def _parse_private_key(pem: bytes, where: str) -> SigningKey:
    if b"PUBLIC KEY-----" in pem and b"PRIVATE KEY-----" not in pem:
        raise ConfigError(
            f"SMART: {where} holds a public key; fhirpanel signs with the private "
            "key (the public one is what you register with the EHR)"
        )
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # cryptography: encrypted, and no password given
        raise ConfigError(
            f"SMART: {where} is an encrypted key; give fhirpanel an unencrypted "
            "PEM (protect it with file permissions or a secret store)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"SMART: {where} is not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(
            f"SMART: {where} is a {type(key).__name__.removeprefix('_')}; "
            "SMART Backend Services needs an RSA key (RS384) or a P-384 EC key "
            "(ES384)"
        )
    return key


def _check_key_fits(key: SigningKey, algorithm: str, where: str) -> None:
    if algorithm == "RS384":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(
                f"SMART: fhir.smart_algorithm is RS384 but {where} is an EC key "
                "(use ES384, or an RSA key)"
            )
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(
                f"SMART: {where} is a {key.key_size}-bit RSA key; RS384 needs "
                f"{MIN_RSA_BITS} bits or more"
            )
    elif algorithm == "ES384":
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(
                f"SMART: fhir.smart_algorithm is ES384 but {where} is an RSA key "
                "(use RS384, or a P-384 EC key)"
            )
        # RFC 7518 s.3.4: ES384 is ECDSA over P-384 (secp384r1).
        if not isinstance(key.curve, ec.SECP384R1):
            raise ConfigError(
                f"SMART: ES384 needs a P-384 (secp384r1) key; {where} is on {key.curve.name}"
            )
    else:
        raise ConfigError(f"SMART: unsupported fhir.smart_algorithm {algorithm!r} (RS384 or ES384)")


def _warn_if_shared(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("SMART private key file %s is readable by other users; chmod 600 it", path)


def public_jwk(key: SigningKey, algorithm: str, kid: str = "") -> dict[str, Any]:
    """The public half as a JWK to register with the EHR (`kid` default: its RFC 7638
    thumbprint, the same default `SmartBackendAuth` puts in the assertion header)."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = dict(RSAAlgorithm.to_jwk(public, as_dict=True))
    else:
        jwk = dict(ECAlgorithm.to_jwk(public, as_dict=True))
    jwk.update({"alg": algorithm, "use": "sig", "key_ops": ["verify"]})
    jwk["kid"] = kid or jwk_thumbprint(jwk)
    return jwk


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace."""
    required = ("e", "kty", "n") if jwk.get("kty") == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps(
        {name: jwk[name] for name in required}, separators=(",", ":"), sort_keys=True
    )
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def jwks_for_settings(settings: FhirSettings) -> dict[str, Any]:
    key = load_signing_key(settings)
    return {"keys": [public_jwk(key, settings.smart_algorithm, settings.smart_key_id)]}


# ---------------------------------------------------------------- the provider


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    obtained_at: float
    expires_at: float
    renew_at: float
    scope: str


class SmartBackendAuth:
    """SMART Backend Services for `FhirClient`: `apply` sets `Authorization: Bearer <token>`,
    fetching or renewing the token first when needed; `invalidate` (after a 401, or a 403 that
    blames the token) drops it.

    `session` (tests: a fake transport adapter) and `clock` (wall time: the assertion's `iat` and
    `exp` are epoch seconds) may be injected."""

    def __init__(
        self,
        settings: FhirSettings,
        *,
        session: requests.Session | None = None,
        clock: Clock = time.time,
    ) -> None:
        if not settings.smart_client_id:
            raise ConfigError(
                "SMART: fhir.smart_client_id (FHIRPANEL_FHIR_SMART_CLIENT_ID) is "
                "not set; it is the client id the EHR gave at registration"
            )
        if settings.smart_token_url and not _is_http_url(settings.smart_token_url):
            raise ConfigError("SMART: fhir.smart_token_url must be an http(s) URL")
        self.settings = settings
        self.client_id = settings.smart_client_id
        self.algorithm = settings.smart_algorithm
        self._key = load_signing_key(settings)
        self.kid = settings.smart_key_id or public_jwk(self._key, self.algorithm)["kid"]
        self.scope = requested_scopes(settings)
        self._token_url = settings.smart_token_url or None
        if self._token_url:
            _warn_if_plain_http(self._token_url)
        self._session = session
        self._clock = clock
        self._lock = threading.Lock()
        self._local = threading.local()  # the token each thread last sent
        self._token: AccessToken | None = None
        self.token_requests = 0  # token endpoint calls that got an answer (for logs and tests)

    def __repr__(self) -> str:
        return (
            f"SmartBackendAuth(client_id={self.client_id!r}, algorithm={self.algorithm!r}, "
            f"kid={self.kid!r}, token_url={self._token_url!r})"
        )

    # ------------------------------------------------------------ AuthProvider

    def apply(self, request: requests.PreparedRequest) -> None:
        token = self.access_token()
        self._local.token = token
        request.headers["Authorization"] = f"Bearer {token.value}"

    def invalidate(self) -> None:
        """Drop the cached token, unless another thread has already replaced the one this thread
        sent (then that newer token is kept rather than fetched twice)."""
        sent = getattr(self._local, "token", None)
        with self._lock:
            if self._token is not None and (sent is None or sent is self._token):
                log.info(
                    "SMART: access token for %s refused; a new one will be requested",
                    self.client_id,
                )
                self._token = None

    # ------------------------------------------------------------ tokens

    def access_token(self) -> AccessToken:
        """The cached token, or a new one when there is none or its renewal time has come."""
        with self._lock:
            token = self._token
            if token is None or self._clock() >= token.renew_at:
                token = self._request_token()
                self._token = token
            return token

    @property
    def token_url(self) -> str:
        with self._lock:
            return self._discovered_token_url()

    def _discovered_token_url(self) -> str:
        if self._token_url is None:
            self._token_url = self._discover()
        return self._token_url

    def _discover(self) -> str:
        """`token_endpoint` from `{base}/.well-known/smart-configuration`."""
        url = self.settings.base_url.rstrip("/") + "/.well-known/smart-configuration"
        hint = "set fhir.smart_token_url (FHIRPANEL_FHIR_SMART_TOKEN_URL) to the token endpoint"
        response = self._send("GET", url, lambda: None, what="SMART discovery")
        if response.status_code >= 500:
            raise ServerError(response.status_code, "SMART discovery failed", url=url)
        if response.status_code != 200:
            raise ConfigError(
                f"SMART discovery: GET {url} answered {response.status_code}; "
                f"the server publishes no SMART configuration there ({hint})"
            )
        document = _json_object(response)
        if document is None:
            raise ConfigError(f"SMART discovery: {url} is not a JSON object ({hint})")
        endpoint = document.get("token_endpoint")
        if not isinstance(endpoint, str) or not _is_http_url(endpoint):
            raise ConfigError(f"SMART discovery: {url} has no token_endpoint URL ({hint})")
        _note_server_support(document, self.algorithm)
        _warn_if_plain_http(endpoint)
        log.info("SMART: token endpoint %s (from %s)", endpoint, url)
        return endpoint

    def _request_token(self) -> AccessToken:
        token_url = self._discovered_token_url()

        def form() -> dict[str, str]:  # a fresh assertion (new jti) for every attempt
            return {
                "grant_type": "client_credentials",
                "scope": self.scope,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self.client_assertion(token_url),
            }

        response = self._send("POST", token_url, form, what="SMART token request")
        self.token_requests += 1
        if response.status_code >= 500:
            raise ServerError(response.status_code, "SMART token request failed", url=token_url)
        if response.status_code != 200:
            raise AuthError(
                response.status_code,
                f"SMART token request refused: {_oauth_error(response)}",
                url=token_url,
            )
        return self._parse_token(response, token_url)

    def client_assertion(self, token_url: str) -> str:
        """The signed JWT (SMART Backend Services, "authenticating to the token endpoint")."""
        now = int(self._clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECONDS,
            "jti": secrets.token_urlsafe(24),
        }
        return jwt.encode(
            claims, self._key, algorithm=self.algorithm, headers={"kid": self.kid, "typ": "JWT"}
        )

    def _parse_token(self, response: requests.Response, token_url: str) -> AccessToken:
        body = _json_object(response)
        if body is None:
            raise AuthError(
                response.status_code, "SMART token response is not a JSON object", url=token_url
            )
        value = body.get("access_token")
        if not isinstance(value, str) or not value.strip():
            raise AuthError(
                response.status_code, "SMART token response has no access_token", url=token_url
            )
        token_type = body.get("token_type", "bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise AuthError(
                response.status_code,
                f"SMART token type {token_type!r} is not supported (bearer only)",
                url=token_url,
            )
        lifetime = _expires_in(body.get("expires_in"))
        now = self._clock()
        granted = body.get("scope") if isinstance(body.get("scope"), str) else self.scope
        missing = sorted(set(self.scope.split()) - set(str(granted).split()))
        if missing:
            log.warning("SMART: the server did not grant %s", " ".join(missing))
        log.info("SMART: access token for %s, valid %ss", self.client_id, f"{lifetime:g}")
        return AccessToken(
            value=value.strip(),
            obtained_at=now,
            expires_at=now + lifetime,
            renew_at=now + max(lifetime - RENEW_MARGIN_SECONDS, lifetime / 2),
            scope=str(granted),
        )

    # ------------------------------------------------------------ HTTP

    def _send(
        self, method: str, url: str, form: Callable[[], dict[str, str] | None], *, what: str
    ) -> requests.Response:
        """One request, retried on connection errors and 429/502/503/504 at most
        `fhir.max_retries` times within `fhir.retry_budget_seconds`. Never follows a redirect
        with a form (the assertion stays with the endpoint it was made for)."""
        s = self.settings
        started = time.monotonic()
        attempt = 0
        while True:
            error: Exception | None = None
            response: requests.Response | None = None
            try:
                response = self._http(method, url, form())
            except requests.exceptions.RequestException as exc:
                error = exc
            if response is not None and response.status_code not in _RETRY_STATUSES:
                return response
            wait = min(s.backoff_max, s.backoff_factor * 2**attempt)
            if response is not None:
                wait = _retry_after(response, wait, s.backoff_max)
            spent = time.monotonic() - started
            if attempt >= s.max_retries or spent + wait > s.retry_budget_seconds:
                if response is not None:
                    return response
                detail = " ".join(str(error).split())[:200]
                raise TransportError(
                    f"{what}: {method} {url} failed ({type(error).__name__}: {detail})"
                )
            attempt += 1
            why = f"status {response.status_code}" if response is not None else type(error).__name__
            log.info("%s: retrying after %s", what, why)
            time.sleep(wait)

    def _http(self, method: str, url: str, data: dict[str, str] | None) -> requests.Response:
        s = self.settings
        session = self._session or requests.Session()
        try:
            return session.request(
                method,
                url,
                data=data,
                headers={"Accept": "application/json", "User-Agent": s.user_agent},
                timeout=(s.connect_timeout, s.read_timeout),
                verify=s.verify_tls,
                allow_redirects=data is None,
                auth=_no_credentials,
            )
        finally:
            if self._session is None:
                session.close()


# ---------------------------------------------------------------- helpers


def _no_credentials(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """An explicit no-op auth: requests would otherwise add ~/.netrc credentials, and a token
    endpoint given both Basic credentials and an assertion may refuse the request."""
    return request


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _warn_if_plain_http(token_url: str) -> None:
    parts = urlsplit(token_url)
    if parts.scheme == "http" and (parts.hostname or "") not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "SMART token endpoint %s is plain http: tokens cross the network unencrypted", token_url
        )


def _json_object(response: requests.Response) -> dict[str, Any] | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _oauth_error(response: requests.Response) -> str:
    """`error (error_description)` from an OAuth error body (RFC 6749 s.5.2), cleaned: anything
    shaped like a JWT is masked, in case a server echoes the assertion back."""
    body = _json_object(response)
    if body is None:
        return f"HTTP {response.status_code} without an OAuth error body"
    error = body.get("error")
    description = body.get("error_description")
    text = str(error) if isinstance(error, str) and error else "unknown error"
    if isinstance(description, str) and description.strip():
        text += f" ({description})"
    text = _JWT_LIKE.sub("<jwt>", " ".join(text.split()))
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def _expires_in(value: Any) -> float:
    if value is None:
        return float(DEFAULT_EXPIRES_IN)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0:
        log.warning(
            "SMART token response: expires_in %r is not a positive number; assuming %ss",
            value,
            DEFAULT_EXPIRES_IN,
        )
        return float(DEFAULT_EXPIRES_IN)
    return seconds


def _retry_after(response: requests.Response, default: float, ceiling: float) -> float:
    header = response.headers.get("Retry-After", "").strip()
    if header.isdigit():
        return min(float(header), ceiling)
    return default


def _note_server_support(document: Mapping[str, Any], algorithm: str) -> None:
    """Warn (only) when the configuration says the server will not take what we send."""
    methods = document.get("token_endpoint_auth_methods_supported")
    if (
        isinstance(methods, Sequence)
        and not isinstance(methods, str)
        and "private_key_jwt" not in methods
    ):
        log.warning(
            "SMART: the server does not list private_key_jwt among its token endpoint auth methods"
        )
    algorithms = document.get("token_endpoint_auth_signing_alg_values_supported")
    if (
        isinstance(algorithms, Sequence)
        and not isinstance(algorithms, str)
        and algorithm not in algorithms
    ):
        log.warning(
            "SMART: the server lists signing algorithms %s, not %s",
            ", ".join(map(str, algorithms)),
            algorithm,
        )


if __name__ == "__main__":  # the old way to print the JWKS: say where it went
    raise SystemExit("the JWKS is printed by `fhirpanel smart-jwks [--config FILE]`")
