"""SMART Backend Services, pure: assertions, scopes, keys, token caching on a frozen clock.

No network: the token endpoint is a fake `requests` transport adapter mounted on the session. Test
keys are generated here; none is committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
import orjson
import pytest
import requests
import time_machine
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from fhirpanel.config import FhirSettings, Settings
from fhirpanel.errors import AuthError, ConfigError, ExitCode, ServerError
from fhirpanel.fhir.client import BasicAuth, BearerAuth, NoAuth, auth_from_settings
from fhirpanel.fhir.smart import (
    ASSERTION_TYPE,
    SmartBackendAuth,
    default_scopes,
    jwk_thumbprint,
    jwks_for_settings,
    load_signing_key,
    public_jwk,
    requested_scopes,
)

BASE = "https://ehr.example/fhir"
TOKEN_URL = "https://auth.ehr.example/oauth2/token"
START = 1_790_000_000.0  # a fixed instant for the frozen clock (2026-09-21)


def pem(key: Any, password: bytes | None = None) -> str:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return str(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        ).decode()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def smart_settings(key: Any, **changes: Any) -> FhirSettings:
    values: dict[str, Any] = {
        "base_url": BASE,
        "auth": "smart",
        "smart_client_id": "fhirpanel-test",
        "smart_private_key": pem(key),
        "smart_key_id": "key-1",
        "smart_algorithm": "ES384" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS384",
        "max_retries": 2,
        "backoff_factor": 0.001,
        "backoff_max": 0.01,
    }
    values.update(changes)
    return FhirSettings(**values)


# ---------------------------------------------------------------- a fake authorization server


@dataclass
class FakeAuthServer(BaseAdapter):
    """Answers discovery and token requests from a script; records every request."""

    discovery: tuple[int, Any] = (
        200,
        {"token_endpoint": TOKEN_URL, "token_endpoint_auth_methods_supported": ["private_key_jwt"]},
    )
    token_answers: list[tuple[int, Any]] = field(default_factory=list)
    default_token: Callable[[int], tuple[int, Any]] = field(
        default=lambda n: (
            200,
            {"access_token": f"token-{n}", "token_type": "bearer", "expires_in": 300},
        )
    )
    delay: float = 0.0
    discoveries: int = 0
    forms: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        super().__init__()

    def send(
        self,
        request: requests.PreparedRequest,  # type: ignore[override]
        **kwargs: Any,
    ) -> requests.Response:
        with self.lock:
            if request.method == "GET" and request.url == BASE + "/.well-known/smart-configuration":
                self.discoveries += 1
                status, body = self.discovery
            elif request.method == "POST" and request.url == TOKEN_URL:
                raw = request.body.decode() if isinstance(request.body, bytes) else request.body
                self.forms.append({k: v[0] for k, v in parse_qs(raw or "").items()})
                n = len(self.forms)
                status, body = (
                    self.token_answers.pop(0) if self.token_answers else self.default_token(n)
                )
            else:
                status, body = 404, {"error": "not here"}
        if self.delay:
            time.sleep(self.delay)
        response = requests.Response()
        response.status_code = status
        response._content = body if isinstance(body, bytes) else orjson.dumps(body)
        response.headers = CaseInsensitiveDict({"Content-Type": "application/json"})
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        return None

    @property
    def assertions(self) -> list[str]:
        return [f["client_assertion"] for f in self.forms]


@pytest.fixture
def server() -> FakeAuthServer:
    return FakeAuthServer()


def session_for(server: FakeAuthServer) -> requests.Session:
    session = requests.Session()
    session.mount("https://", server)
    return session


def auth_for(server: FakeAuthServer, key: Any, **changes: Any) -> SmartBackendAuth:
    return SmartBackendAuth(smart_settings(key, **changes), session=session_for(server))


def bearer(auth: SmartBackendAuth) -> str:
    request = requests.Request("GET", BASE + "/Patient").prepare()
    auth.apply(request)
    return request.headers["Authorization"]


@pytest.fixture
def frozen() -> Iterator[time_machine.Traveller]:
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


# ---------------------------------------------------------------- the assertion


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_the_assertion_is_signed_and_carries_the_smart_claims(
    kind: str,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
    server: FakeAuthServer,
    frozen: time_machine.Traveller,
) -> None:
    key: Any = rsa_key if kind == "rsa" else ec_key
    alg = "RS384" if kind == "rsa" else "ES384"
    auth = auth_for(server, key)
    assert bearer(auth) == "Bearer token-1"

    form = server.forms[0]
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == ASSERTION_TYPE
    assert form["scope"] == " ".join(default_scopes("v1"))
    assertion = form["client_assertion"]
    header = jwt.get_unverified_header(assertion)
    assert header == {"alg": alg, "kid": "key-1", "typ": "JWT"}
    claims = jwt.decode(
        assertion,
        key.public_key(),
        algorithms=[alg],
        audience=TOKEN_URL,
        options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
    )
    assert claims["iss"] == claims["sub"] == "fhirpanel-test"
    assert claims["aud"] == TOKEN_URL
    assert claims["iat"] == int(START)
    assert 0 < claims["exp"] - START <= 300  # SMART: at most five minutes
    # A signature from another key of the same kind does not verify.
    other = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP384R1())
    )
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(assertion, other.public_key(), algorithms=[alg], audience=TOKEN_URL)


def test_every_assertion_has_a_new_jti(rsa_key: rsa.RSAPrivateKey) -> None:
    auth = SmartBackendAuth(smart_settings(rsa_key, smart_token_url=TOKEN_URL))
    jtis = {
        jwt.decode(auth.client_assertion(TOKEN_URL), options={"verify_signature": False})["jti"]
        for _ in range(50)
    }
    assert len(jtis) == 50


def test_kid_defaults_to_the_rfc7638_thumbprint(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    from sekmet.auth.keys import thumbprint  # an independent implementation to compare with

    for key in (rsa_key, ec_key):
        settings = smart_settings(key, smart_key_id="", smart_token_url=TOKEN_URL)
        auth = SmartBackendAuth(settings)
        jwk = public_jwk(key, settings.smart_algorithm)
        assert auth.kid == jwk["kid"] == jwk_thumbprint(jwk) == thumbprint(jwk)
        assert jwt.get_unverified_header(auth.client_assertion(TOKEN_URL))["kid"] == auth.kid
        jwks = jwks_for_settings(settings)
        assert jwks == {"keys": [jwk]}
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)  # public members only


def test_the_published_jwk_verifies_the_assertion(ec_key: ec.EllipticCurvePrivateKey) -> None:
    settings = smart_settings(ec_key, smart_token_url=TOKEN_URL)
    jwk = jwks_for_settings(settings)["keys"][0]
    assert jwk["kid"] == "key-1" and jwk["alg"] == "ES384" and jwk["crv"] == "P-384"
    assertion = SmartBackendAuth(settings).client_assertion(TOKEN_URL)
    public = jwt.PyJWK(jwk).key
    assert jwt.decode(assertion, public, algorithms=["ES384"], audience=TOKEN_URL)["iss"]


# ---------------------------------------------------------------- scopes


def test_v1_scopes_read_and_write_what_fhirpanel_touches() -> None:
    scopes = default_scopes("v1")
    for rtype in (
        "Patient",
        "Encounter",
        "Condition",
        "Practitioner",
        "PractitionerRole",
        "Organization",
    ):
        assert f"system/{rtype}.read" in scopes and f"system/{rtype}.write" not in scopes
    for rtype in ("CareTeam", "CarePlan", "RiskAssessment", "Group"):
        assert {f"system/{rtype}.read", f"system/{rtype}.write"} <= set(scopes)
    assert "system/Provenance.write" in scopes and "system/Provenance.read" not in scopes
    assert len(scopes) == len(set(scopes)) == 6 + 8 + 1


def test_v2_scopes_use_permission_letters_in_cruds_order() -> None:
    scopes = default_scopes("v2")
    assert "system/Patient.rs" in scopes and "system/Organization.rs" in scopes
    assert "system/CareTeam.crus" in scopes and "system/Group.crus" in scopes
    assert "system/Provenance.c" in scopes
    for scope in scopes:
        letters = scope.rsplit(".", 1)[1]
        assert letters == "".join(ch for ch in "cruds" if ch in letters)  # order kept
        assert "d" not in letters  # fhirpanel never deletes
    assert len(scopes) == 11


def test_explicit_scopes_win_and_are_space_separated(rsa_key: rsa.RSAPrivateKey) -> None:
    settings = smart_settings(rsa_key, smart_scopes="system/*.rs, system/CareTeam.cu\n")
    assert requested_scopes(settings) == "system/*.rs system/CareTeam.cu"
    assert requested_scopes(smart_settings(rsa_key, smart_scope_version="v2")) == " ".join(
        default_scopes("v2")
    )


# ---------------------------------------------------------------- keys


def test_key_from_a_file_and_from_the_environment(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "key.pem"
    path.write_text(pem(ec_key))
    path.chmod(0o600)
    from_file = load_signing_key(
        smart_settings(ec_key, smart_private_key="", smart_key_file=str(path))
    )
    one_line = pem(ec_key).replace("\n", "\\n")  # how some env files carry a PEM
    from_env = load_signing_key(smart_settings(ec_key, smart_private_key=one_line))
    expected = ec_key.private_numbers()
    assert isinstance(from_file, ec.EllipticCurvePrivateKey)
    assert isinstance(from_env, ec.EllipticCurvePrivateKey)
    assert from_file.private_numbers() == from_env.private_numbers() == expected


def test_settings_from_env_reach_the_provider(ec_key: ec.EllipticCurvePrivateKey) -> None:
    env = {
        "FHIRPANEL_FHIR_BASE_URL": BASE,
        "FHIRPANEL_FHIR_AUTH": "smart",
        "FHIRPANEL_FHIR_SMART_CLIENT_ID": "abc",
        "FHIRPANEL_FHIR_SMART_ALGORITHM": "ES384",
        "FHIRPANEL_FHIR_SMART_PRIVATE_KEY": pem(ec_key),
        "FHIRPANEL_FHIR_SMART_SCOPE_VERSION": "v2",
    }
    settings = Settings.load(env=env)
    auth = auth_from_settings(settings.fhir)
    assert isinstance(auth, SmartBackendAuth)
    assert auth.client_id == "abc" and auth.algorithm == "ES384"
    assert auth.scope.split()[0] == "system/Patient.rs"
    assert "PRIVATE" not in repr(auth) and "PRIVATE" not in repr(settings)


def _config_error(settings: FhirSettings) -> str:
    with pytest.raises(ConfigError) as caught:
        SmartBackendAuth(settings)
    assert caught.value.exit_code == ExitCode.USAGE
    message = str(caught.value)
    assert "BEGIN" not in message and "MII" not in message  # no key material
    return message


def test_key_errors_are_clear(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    assert "no private key" in _config_error(smart_settings(rsa_key, smart_private_key=""))
    both = smart_settings(rsa_key, smart_key_file=str(tmp_path / "k.pem"))
    assert "not both" in _config_error(both)
    missing = smart_settings(rsa_key, smart_private_key="", smart_key_file=str(tmp_path / "no"))
    message = _config_error(missing)
    assert str(tmp_path / "no") in message and "cannot read" in message
    garbage = smart_settings(rsa_key, smart_private_key="-----BEGIN PRIVATE KEY-----\nxx\n")
    assert "not a PEM private key" in _config_error(garbage)
    public_pem = (
        rsa_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert "public key" in _config_error(smart_settings(rsa_key, smart_private_key=public_pem))
    encrypted = smart_settings(rsa_key, smart_private_key=pem(rsa_key, b"secret"))
    assert "encrypted" in _config_error(encrypted)


def test_key_must_fit_the_algorithm(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    assert "RS384 but" in _config_error(smart_settings(ec_key, smart_algorithm="RS384"))
    assert "ES384 but" in _config_error(smart_settings(rsa_key, smart_algorithm="ES384"))
    p256 = ec.generate_private_key(ec.SECP256R1())
    assert "P-384" in _config_error(smart_settings(p256, smart_algorithm="ES384"))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    assert "1024-bit" in _config_error(smart_settings(small, smart_algorithm="RS384"))
    edwards = ed25519.Ed25519PrivateKey.generate()
    assert "Ed25519" in _config_error(smart_settings(edwards, smart_algorithm="RS384"))


def test_client_id_is_required(rsa_key: rsa.RSAPrivateKey) -> None:
    assert "smart_client_id" in _config_error(smart_settings(rsa_key, smart_client_id=""))
    assert "smart_token_url" in _config_error(smart_settings(rsa_key, smart_token_url="ftp://x"))


def test_no_secret_in_repr(rsa_key: rsa.RSAPrivateKey, server: FakeAuthServer) -> None:
    auth = auth_for(server, rsa_key)
    bearer(auth)
    text = repr(auth) + repr(auth.access_token())
    assert "token-1" not in text and "PRIVATE" not in text and "fhirpanel-test" in text


# ---------------------------------------------------------------- discovery


def test_the_token_endpoint_is_discovered_once(
    server: FakeAuthServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    auth = auth_for(server, rsa_key)
    bearer(auth)
    auth.invalidate()
    bearer(auth)
    assert server.discoveries == 1 and len(server.forms) == 2
    assert auth.token_url == TOKEN_URL


def test_a_configured_token_url_skips_discovery(
    server: FakeAuthServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    server.discovery = (404, {"error": "nope"})
    auth = auth_for(server, rsa_key, smart_token_url=TOKEN_URL)
    assert bearer(auth) == "Bearer token-1" and server.discoveries == 0


@pytest.mark.parametrize(
    ("discovery", "expected"),
    [
        ((404, b"Not Found"), "answered 404"),
        ((200, {"issuer": "https://auth.ehr.example"}), "no token_endpoint"),
        ((200, {"token_endpoint": "/relative/token"}), "no token_endpoint"),
        ((200, b"<html>login</html>"), "not a JSON object"),
    ],
)
def test_failed_discovery_is_a_config_error(
    server: FakeAuthServer, rsa_key: rsa.RSAPrivateKey, discovery: tuple[int, Any], expected: str
) -> None:
    server.discovery = discovery
    auth = auth_for(server, rsa_key)
    with pytest.raises(ConfigError, match=expected) as caught:
        bearer(auth)
    assert "smart_token_url" in str(caught.value)


def test_discovery_5xx_is_retried_then_a_server_error(
    server: FakeAuthServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    server.discovery = (503, {"error": "down"})
    with pytest.raises(ServerError):
        bearer(auth_for(server, rsa_key))
    assert server.discoveries == 3  # one try and max_retries=2 more


# ---------------------------------------------------------------- caching and renewal


def test_token_is_cached_and_renewed_before_expiry(
    server: FakeAuthServer, rsa_key: rsa.RSAPrivateKey, frozen: time_machine.Traveller
) -> None:
    auth = auth_for(server, rsa_key)
    assert {bearer(auth) for _ in range(20)} == {"Bearer token-1"}
    assert len(server.forms) == 1
    frozen.shift(239)  # expires_in 300: renewed 60 s before expiry, at 240 s
    assert bearer(auth) == "Bearer token-1"
    frozen.shift(1)
    assert bearer(auth) == "Bearer token-2"
    assert len(server.forms) == 2
    token = auth.access_token()
    assert token.expires_at - token.renew_at == 60


@pytest.mark.parametrize(
    ("expires_in", "renew_after"),
    [
        (None, 240),  # absent: 300 s assumed
        (3600, 3540),
        (30, 15),  # short tokens renew halfway, not every request
        ("120", 60),
        ("soon", 240),  # nonsense: 300 s assumed, with a warning
    ],
)
def test_renewal_time_follows_expires_in(
    server: FakeAuthServer,
    rsa_key: rsa.RSAPrivateKey,
    frozen: time_machine.Traveller,
    expires_in: Any,
    renew_after: float,
) -> None:
    body: dict[str, Any] = {"access_token": "t", "token_type": "Bearer"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    server.default_token = lambda n: (200, {**body, "access_token": f"t{n}"})
    auth = auth_for(server, rsa_key)
    bearer(auth)
    frozen.shift(renew_after - 0.5)
    assert bearer(auth) == "Bearer t1"
    frozen.shift(0.5)
    assert bearer(auth) == "Bearer t2"


def test_invalidate_fetches_a_new_token(server: FakeAuthServer, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = auth_for(server, rsa_key)
    assert bearer(auth) == "Bearer token-1"
    auth.invalidate()
    assert bearer(auth) == "Bearer token-2"
    assert len(set(server.assertions)) == 2  # a new assertion, not a replay


def test_a_stale_401_does_not_discard_a_newer_token(
    server: FakeAuthServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    auth = auth_for(server, rsa_key)
    bearer(auth)  # this thread sent token-1

    def renew_elsewhere() -> None:
        bearer(auth)
        auth.invalidate()  # another thread's 401 on token-1
        bearer(auth)  # ... which fetched token-2

    worker = threading.Thread(target=renew_elsewhere)
    worker.start()
    worker.join(timeout=10)
    auth.invalidate()  # our 401 on token-1 arrives late: token-2 stays
    assert bearer(auth) == "Bearer token-2" and len(server.forms) == 2


def test_threads_share_one_token_request(
    server: FakeAuthServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    server.delay = 0.05  # a slow token endpoint: every thread arrives while it works
    auth = auth_for(server, rsa_key)
    seen: list[str] = []
    barrier = threading.Barrier(8)

    def use() -> None:
        barrier.wait(timeout=10)
        seen.append(bearer(auth))

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert seen == ["Bearer token-1"] * 8 and len(server.forms) == 1


# ---------------------------------------------------------------- refusals


def test_a_refused_assertion_is_an_auth_error(
    server: FakeAuthServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    def refuse(n: int) -> tuple[int, Any]:
        echoed = server.forms[-1]["client_assertion"]  # a careless server echoing the JWT
        return 401, {
            "error": "invalid_client",
            "error_description": f"signature check failed for {echoed}",
        }

    server.default_token = refuse
    with pytest.raises(AuthError) as caught:
        bearer(auth_for(server, rsa_key))
    error = caught.value
    assert error.exit_code == ExitCode.AUTH and error.status == 401
    assert "invalid_client" in str(error) and "signature check failed" in str(error)
    assert server.forms[0]["client_assertion"] not in str(error) and "<jwt>" in str(error)
    assert len(server.forms) == 1  # a refusal is not retried


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ((400, {"error": "invalid_scope"}), "invalid_scope"),
        ((403, b"Forbidden"), "without an OAuth error body"),
        ((200, {"token_type": "bearer"}), "no access_token"),
        ((200, {"access_token": "x", "token_type": "DPoP"}), "bearer only"),
        ((200, b"not json"), "not a JSON object"),
    ],
)
def test_bad_token_answers_are_auth_errors(
    server: FakeAuthServer, rsa_key: rsa.RSAPrivateKey, answer: tuple[int, Any], expected: str
) -> None:
    server.token_answers = [answer]
    with pytest.raises(AuthError, match=expected):
        bearer(auth_for(server, rsa_key))


def test_token_503_is_retried_with_a_fresh_assertion(
    server: FakeAuthServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    server.token_answers = [(503, {"error": "busy"})]
    assert bearer(auth_for(server, rsa_key)) == "Bearer token-2"
    assert len(server.forms) == 2 and len(set(server.assertions)) == 2


def test_token_endpoint_down_gives_up_after_max_retries(
    server: FakeAuthServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    server.default_token = lambda n: (502, b"bad gateway")
    with pytest.raises(ServerError):
        bearer(auth_for(server, rsa_key))
    assert len(server.forms) == 3


# ---------------------------------------------------------------- auth_from_settings


def test_secret_files(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    auth = auth_from_settings(
        FhirSettings(base_url=BASE, auth="bearer", token_file=str(token_file))
    )
    assert isinstance(auth, BearerAuth)
    request = requests.Request("GET", BASE).prepare()
    auth.apply(request)
    assert request.headers["Authorization"] == "Bearer s3cret-token"

    password_file = tmp_path / "password"
    password_file.write_text("pa ss\r\n")
    basic = auth_from_settings(
        FhirSettings(base_url=BASE, auth="basic", username="u", password_file=str(password_file))
    )
    assert isinstance(basic, BasicAuth)
    assert basic._header == BasicAuth("u", "pa ss")._header
    assert isinstance(auth_from_settings(FhirSettings(base_url=BASE)), NoAuth)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"token_file": "MISSING"}, "cannot read"),
        ({"token_file": "EMPTY"}, "is empty"),
        ({"token_file": "EMPTY", "token": "also"}, "not both"),
    ],
)
def test_secret_file_errors(tmp_path: Path, changes: dict[str, str], expected: str) -> None:
    (tmp_path / "EMPTY").write_text("\n")
    resolved: dict[str, Any] = {
        k: str(tmp_path / v) if k.endswith("_file") else v for k, v in changes.items()
    }
    with pytest.raises(ConfigError, match=expected) as caught:
        auth_from_settings(FhirSettings(base_url=BASE, auth="bearer", **resolved))
    assert "token_file" in str(caught.value)
