"""SMART Backend Services against real loopback servers.

`SmartGate` (written here, on 127.0.0.1) is a small authorization server and a bearer-checking
gate in front of the real sandbox FHIR server: it publishes `.well-known/smart-configuration`,
verifies each client assertion with the registered public key (signature, `kid`, `aud`, `exp` at
most 5 minutes ahead, `iss` == `sub` == client id, `jti` never reused), issues short-lived tokens,
can revoke them, and forwards FHIR requests carrying a live token to the sandbox (401 otherwise).
The last tests run against sekmet's own SMART token endpoint and guard, an independent verifier.
Keys are generated per module; none is committed.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import jwt
import orjson
import pytest
import time_machine
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhirpanel.config import FhirSettings
from fhirpanel.errors import AuthError, ConfigError, ExitCode
from fhirpanel.fhir.client import FhirClient, NoAuth
from fhirpanel.fhir.smart import ASSERTION_TYPE, SmartBackendAuth, default_scopes, jwks_for_settings
from fhirpanel.sandbox.server import SandboxServer
from tests.conftest import AS_OF, ROOT
from tests.integration.faults import FaultProxy, Status, outcome, read_body, send

CLIENT_ID = "fhirpanel-integration"
SEKMET_TOKEN_LIFETIME = 60


def pem(key: Any) -> str:
    return str(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


@dataclass(frozen=True)
class Keys:
    rs384: rsa.RSAPrivateKey
    es384: ec.EllipticCurvePrivateKey
    impostor: rsa.RSAPrivateKey  # never registered
    impostor_es384: ec.EllipticCurvePrivateKey  # never registered


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP384R1()),
    )


# ---------------------------------------------------------------- the gate


@dataclass
class TokenRequest:
    outcome: str  # "issued" or the OAuth error code
    description: str
    header: dict[str, Any]
    claims: dict[str, Any]
    scope: str


class SmartGate(FaultProxy):
    """A SMART authorization server plus a bearer-checking gate forwarding to `upstream`."""

    def __init__(self, upstream: str, registered: dict[str, tuple[Any, str]]) -> None:
        super().__init__(upstream)
        self.token_url = f"{self.origin}/auth/token"
        self.registered = registered  # kid -> (public key, alg)
        self.expires_in: int | None = 300
        self.discovery: Literal["ok", "404", "no-token-endpoint"] = "ok"
        self.accept_tokens = True
        # How a dead token is refused: 401 with WWW-Authenticate (RFC 6750), or as some servers
        # do, 403 with an OperationOutcome.
        self.dead_token_status = 401
        self.dead_token_message = "invalid or expired access token"
        self.dead_token_headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        self.discoveries = 0
        self.tokens: dict[str, float] = {}  # issued token -> when it expires (epoch seconds)
        self.jtis: set[str] = set()
        self.token_log: list[TokenRequest] = []
        self.fhir_log: list[tuple[str, str]] = []  # (path, "ok" or "401")
        self.auth_lock = threading.Lock()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = urlsplit(handler.path).path
        if handler.command == "GET" and path == "/fhir/.well-known/smart-configuration":
            self._discovery(handler)
        elif handler.command == "POST" and path == "/auth/token":
            self._token(handler)
        elif self._token_is_live(handler.headers.get("Authorization", "")):
            with self.auth_lock:
                self.fhir_log.append((handler.path, "ok"))
            super().handle(handler)  # forward to the sandbox
        else:
            read_body(handler)
            with self.auth_lock:
                self.fhir_log.append((handler.path, str(self.dead_token_status)))
            send(
                handler,
                self.dead_token_status,
                outcome(self.dead_token_message, "login"),
                self.dead_token_headers,
            )

    def revoke_all(self) -> None:
        with self.auth_lock:
            self.tokens.clear()

    def _token_is_live(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        with self.auth_lock:
            expires = self.tokens.get(token)
        return (
            self.accept_tokens
            and scheme.lower() == "bearer"
            and expires is not None
            and expires > time.time()
        )

    def _discovery(self, handler: BaseHTTPRequestHandler) -> None:
        self.discoveries += 1
        if self.discovery == "404":
            send(handler, 404, b"no such thing", content_type="text/plain")
            return
        document: dict[str, Any] = {
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
        }
        if self.discovery == "ok":
            document["token_endpoint"] = self.token_url
        send(handler, 200, orjson.dumps(document), content_type="application/json")

    def _token(self, handler: BaseHTTPRequestHandler) -> None:
        form = {k: v[0] for k, v in parse_qs(read_body(handler).decode()).items()}
        assertion = form.get("client_assertion", "")
        header: dict[str, Any] = {}
        claims: dict[str, Any] = {}
        try:
            if form.get("grant_type") != "client_credentials":
                raise Refusal(400, "unsupported_grant_type", "client_credentials only")
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise Refusal(400, "invalid_request", "client_assertion_type must be jwt-bearer")
            header = jwt.get_unverified_header(assertion)
            kid = header.get("kid")
            if kid not in self.registered:
                raise Refusal(401, "invalid_client", f"unknown kid {kid!r}")
            public_key, alg = self.registered[kid]
            try:
                claims = jwt.decode(
                    assertion,
                    public_key,
                    algorithms=[alg],
                    audience=self.token_url,
                    options={"require": ["iss", "sub", "aud", "exp", "jti"]},
                )
            except jwt.PyJWTError as exc:
                raise Refusal(401, "invalid_client", f"assertion rejected: {exc}") from None
            if not claims["iss"] == claims["sub"] == CLIENT_ID:
                raise Refusal(401, "invalid_client", "iss and sub must be the client id")
            if claims["exp"] > time.time() + 300:
                raise Refusal(401, "invalid_client", "exp more than 5 minutes ahead")
            with self.auth_lock:
                if claims["jti"] in self.jtis:
                    raise Refusal(401, "invalid_client", "jti already used")
                self.jtis.add(claims["jti"])
        except Refusal as refusal:
            self._log(refusal.error, refusal.description, header, claims, form)
            send(
                handler,
                refusal.status,
                orjson.dumps({"error": refusal.error, "error_description": refusal.description}),
                {"Cache-Control": "no-store"},
                content_type="application/json",
            )
            return
        token = secrets.token_urlsafe(24)
        lifetime = self.expires_in if self.expires_in is not None else 300
        with self.auth_lock:
            self.tokens[token] = time.time() + lifetime
        self._log("issued", "", header, claims, form)
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "bearer",
            "scope": form.get("scope", ""),
        }
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        send(
            handler,
            200,
            orjson.dumps(body),
            {"Cache-Control": "no-store"},
            content_type="application/json",
        )

    def _log(
        self,
        result: str,
        description: str,
        header: dict[str, Any],
        claims: dict[str, Any],
        form: dict[str, str],
    ) -> None:
        with self.auth_lock:
            self.token_log.append(
                TokenRequest(result, description, header, claims, form.get("scope", ""))
            )

    @property
    def issued(self) -> list[TokenRequest]:
        return [t for t in self.token_log if t.outcome == "issued"]


class Refusal(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(error)
        self.status, self.error, self.description = status, error, description


@pytest.fixture
def gate(loaded_sandbox: SandboxServer, keys: Keys) -> Iterator[SmartGate]:
    registered = {
        "rsa-1": (keys.rs384.public_key(), "RS384"),
        "ec-1": (keys.es384.public_key(), "ES384"),
    }
    with SmartGate(loaded_sandbox.base_url, registered) as smart_gate:
        yield smart_gate


def settings_for(base_url: str, key: Any, kid: str, **changes: Any) -> FhirSettings:
    values: dict[str, Any] = {
        "base_url": base_url,
        "auth": "smart",
        "smart_client_id": CLIENT_ID,
        "smart_private_key": pem(key),
        "smart_key_id": kid,
        "smart_algorithm": "ES384" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS384",
        "max_retries": 1,
        "backoff_factor": 0.01,
        "connect_timeout": 5.0,
        "read_timeout": 30.0,
    }
    values.update(changes)
    return FhirSettings(**values)


# ---------------------------------------------------------------- acquisition and caching


@pytest.mark.parametrize(("kind", "kid"), [("rsa", "rsa-1"), ("ec", "ec-1")])
def test_token_is_acquired_once_and_reused(
    gate: SmartGate, keys: Keys, kind: str, kid: str
) -> None:
    key = keys.rs384 if kind == "rsa" else keys.es384
    with FhirClient(settings_for(gate.base_url, key, kid)) as client:
        patients = list(client.search("Patient", {"_count": "50"}))  # several pages
        for patient in patients[:5]:
            assert client.read("Patient", patient["id"])["id"] == patient["id"]
        requests_sent = client.stats.requests
    assert len(patients) >= 300 and requests_sent >= 11
    assert gate.discoveries == 1
    assert [t.outcome for t in gate.token_log] == ["issued"]  # N requests, 1 token request
    assert len(gate.fhir_log) == requests_sent
    assert all(result == "ok" for _, result in gate.fhir_log)
    issued = gate.token_log[0]
    assert issued.header["kid"] == kid and issued.header["alg"] in ("RS384", "ES384")
    assert issued.claims["aud"] == gate.token_url
    assert issued.scope == " ".join(default_scopes("v1"))


def test_v2_scopes_are_requested(gate: SmartGate, keys: Keys) -> None:
    settings = settings_for(gate.base_url, keys.es384, "ec-1", smart_scope_version="v2")
    with FhirClient(settings) as client:
        client.read("Patient", next(client.search("Patient", {"_count": "1"}))["id"])
    assert gate.token_log[0].scope.split()[:2] == ["system/Patient.rs", "system/Encounter.rs"]


def test_token_is_renewed_before_it_expires(gate: SmartGate, keys: Keys) -> None:
    gate.expires_in = 120  # renewal due 60 s in; the clock moves for the client and the gate
    with (
        time_machine.travel(time.time(), tick=True) as traveller,
        FhirClient(settings_for(gate.base_url, keys.rs384, "rsa-1")) as client,
    ):
        first = next(client.search("Patient", {"_count": "1"}))["id"]
        client.read("Patient", first)
        assert len(gate.issued) == 1
        traveller.shift(61)
        first_token = next(iter(gate.tokens))
        assert gate.tokens[first_token] > time.time()  # still valid at the gate ...
        client.read("Patient", first)  # ... yet renewed ahead of its expiry
        client.read("Patient", first)
    assert len(gate.issued) == 2
    assert all(result == "ok" for _, result in gate.fhir_log)  # no request was ever refused


def test_a_missing_expires_in_means_300_seconds(gate: SmartGate, keys: Keys) -> None:
    gate.expires_in = None
    auth = SmartBackendAuth(settings_for(gate.base_url, keys.es384, "ec-1"))
    token = auth.access_token()
    assert token.expires_at - token.obtained_at == 300
    assert auth.access_token() is token


# ---------------------------------------------------------------- 401 and refusals


def test_a_revoked_token_is_renewed_once_on_401(gate: SmartGate, keys: Keys) -> None:
    with FhirClient(settings_for(gate.base_url, keys.rs384, "rsa-1")) as client:
        patient = next(client.search("Patient", {"_count": "1"}))["id"]
        gate.revoke_all()  # the server forgets every token it issued
        assert client.read("Patient", patient)["id"] == patient
        assert [r for _, r in gate.fhir_log] == ["ok", "401", "ok"]
        assert len(gate.issued) == 2

        gate.accept_tokens = False  # now no token is good enough: one renewal, then an error
        with pytest.raises(AuthError) as caught:
            client.read("Patient", patient)
    assert caught.value.status == 401 and caught.value.exit_code == ExitCode.AUTH
    assert [r for _, r in gate.fhir_log][3:] == ["401", "401"]
    assert len(gate.issued) == 3
    assert len({t.claims["jti"] for t in gate.issued}) == 3  # never a replayed assertion


@pytest.mark.parametrize(
    ("message", "headers"),
    [
        ("Access token expired", {}),  # an OperationOutcome alone says so
        ("Forbidden", {"WWW-Authenticate": 'Bearer error="invalid_token", error_description="x"'}),
    ],
)
def test_a_403_that_blames_the_token_renews_it_once(
    gate: SmartGate, keys: Keys, message: str, headers: dict[str, str]
) -> None:
    gate.dead_token_status, gate.dead_token_message = 403, message
    gate.dead_token_headers = headers
    with FhirClient(settings_for(gate.base_url, keys.rs384, "rsa-1")) as client:
        patient = next(client.search("Patient", {"_count": "1"}))["id"]
        gate.revoke_all()
        assert client.read("Patient", patient)["id"] == patient
        assert [r for _, r in gate.fhir_log] == ["ok", "403", "ok"]
        assert len(gate.issued) == 2

        gate.accept_tokens = False  # the same one-renewal budget as a 401: then an error
        with pytest.raises(AuthError) as caught:
            client.read("Patient", patient)
    assert caught.value.status == 403 and caught.value.exit_code == ExitCode.AUTH
    assert [r for _, r in gate.fhir_log][3:] == ["403", "403"]
    assert len(gate.issued) == 3


def test_a_403_for_a_permission_fails_at_once(gate: SmartGate, keys: Keys) -> None:
    with FhirClient(settings_for(gate.base_url, keys.rs384, "rsa-1")) as client:
        patient = next(client.search("Patient", {"_count": "1"}))["id"]
        gate.on_path(f"/Patient/{patient}", fault=Status(403))  # "injected 403": no token word
        with pytest.raises(AuthError) as caught:
            client.read("Patient", patient)
    assert caught.value.status == 403
    assert len(gate.issued) == 1  # no renewal
    assert len(gate.arrivals_for(lambda a: a.path == f"/fhir/Patient/{patient}")) == 1


@pytest.mark.parametrize(
    ("signer", "kid", "expected"),
    [
        ("impostor", "rsa-1", "Signature verification failed"),  # the wrong key under a known kid
        ("rsa", "rsa-2", "unknown kid 'rsa-2'"),  # the right key under a kid never registered
    ],
)
def test_a_refused_assertion_is_a_clear_auth_error(
    gate: SmartGate, keys: Keys, signer: str, kid: str, expected: str
) -> None:
    key = keys.impostor if signer == "impostor" else keys.rs384
    with (
        FhirClient(settings_for(gate.base_url, key, kid)) as client,
        pytest.raises(AuthError) as caught,
    ):
        next(client.search("Patient"))
    message = str(caught.value)
    assert caught.value.exit_code == ExitCode.AUTH and caught.value.status == 401
    assert "SMART token request refused: invalid_client" in message and expected in message
    assert gate.token_url in message
    assert "eyJ" not in message and "PRIVATE" not in message
    assert gate.fhir_log == []  # nothing reached the FHIR server
    assert [t.outcome for t in gate.token_log] == ["invalid_client"]  # not retried


def test_discovery_failures_and_the_token_url_override(gate: SmartGate, keys: Keys) -> None:
    gate.discovery = "404"
    with (
        FhirClient(settings_for(gate.base_url, keys.es384, "ec-1")) as client,
        pytest.raises(ConfigError, match=r"answered 404.*smart_token_url"),
    ):
        client.read("Patient", "x")
    gate.discovery = "no-token-endpoint"
    with (
        FhirClient(settings_for(gate.base_url, keys.es384, "ec-1")) as client,
        pytest.raises(ConfigError, match="no token_endpoint"),
    ):
        client.read("Patient", "x")
    discoveries = gate.discoveries
    settings = settings_for(gate.base_url, keys.es384, "ec-1", smart_token_url=gate.token_url)
    with FhirClient(settings) as client:
        assert next(client.search("Patient", {"_count": "1"}))
    assert gate.discoveries == discoveries and len(gate.issued) == 1


def test_one_provider_shared_by_threads_asks_for_one_token(gate: SmartGate, keys: Keys) -> None:
    auth = SmartBackendAuth(settings_for(gate.base_url, keys.es384, "ec-1"))
    with FhirClient(settings_for(gate.base_url, keys.es384, "ec-1"), auth=auth) as client:
        ids = [p["id"] for p in itertools.islice(client.search("Patient", {"_count": "8"}), 8)]
    errors: list[BaseException] = []

    def read(patient: str) -> None:
        try:
            with FhirClient(settings_for(gate.base_url, keys.es384, "ec-1"), auth=auth) as client:
                client.read("Patient", patient)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(p,)) for p in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [] and len(gate.issued) == 1


# ---------------------------------------------------------------- the CLI


def fhirpanel_run(
    source: str,
    env_extra: dict[str, str],
    *args: str,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRPANEL_")}
    env.update(
        {
            "COLUMNS": "160",
            "FHIRPANEL_FHIR_AUTH": "smart",
            "FHIRPANEL_FHIR_SMART_CLIENT_ID": CLIENT_ID,
            **env_extra,
        }
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fhirpanel",
            "run",
            "--source",
            source,
            "--as-of",
            AS_OF,
            "--quiet",
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_run_with_smart_settings_from_the_environment(
    gate: SmartGate, keys: Keys, tmp_path: Path
) -> None:
    key_file = tmp_path / "fhirpanel-es384.pem"
    key_file.write_text(pem(keys.es384))
    key_file.chmod(0o600)
    report = tmp_path / "report.json"
    done = fhirpanel_run(
        gate.base_url,
        {
            "FHIRPANEL_FHIR_SMART_KEY_FILE": str(key_file),
            "FHIRPANEL_FHIR_SMART_KEY_ID": "ec-1",
            "FHIRPANEL_FHIR_SMART_ALGORITHM": "ES384",
        },
        "--report",
        str(report),
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(report.read_text())
    assert len(data["patients"]) >= 300
    assert [t.outcome for t in gate.token_log] == ["issued"]
    assert all(result == "ok" for _, result in gate.fhir_log)


def test_cli_run_with_a_refused_key_exits_auth(gate: SmartGate, keys: Keys) -> None:
    done = fhirpanel_run(
        gate.base_url,
        {
            "FHIRPANEL_FHIR_SMART_PRIVATE_KEY": pem(keys.impostor),
            "FHIRPANEL_FHIR_SMART_KEY_ID": "rsa-1",
        },
    )
    assert done.returncode == ExitCode.AUTH, done.stderr
    assert "invalid_client" in done.stderr and "Traceback" not in done.stderr
    assert "PRIVATE KEY" not in done.stderr + done.stdout
    assert gate.fhir_log == []


# ---------------------------------------------------------------- sekmet's SMART server


@pytest.fixture
def sekmet_smart(sandbox: SandboxServer, keys: Keys) -> SandboxServer:
    """The sandbox with sekmet's own SMART guard on: tokens only from its /auth/token, for a
    client registered with the JWKS fhirpanel prints for its key."""
    from sekmet.config import ServerAuth, SmartClient

    sandbox.load({"resourceType": "Patient", "id": f"smart-{i}", "active": True} for i in range(3))
    jwks = jwks_for_settings(settings_for(sandbox.base_url, keys.es384, ""))  # kid: thumbprint
    sandbox.ctx.settings.server_auth = ServerAuth(
        types=["smart"],
        token_lifetime=SEKMET_TOKEN_LIFETIME,
        smart_clients=[SmartClient(client_id=CLIENT_ID, jwks=jwks, scopes="system/*.*")],
    )
    return sandbox


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_sekmets_smart_server_accepts_fhirpanel(
    sekmet_smart: SandboxServer, keys: Keys, version: str
) -> None:
    settings = settings_for(sekmet_smart.base_url, keys.es384, "", smart_scope_version=version)
    with FhirClient(settings, auth=NoAuth()) as anonymous, pytest.raises(AuthError) as caught:
        anonymous.read("Patient", "smart-0")
    assert caught.value.status == 401
    with FhirClient(settings) as client:
        assert sorted(p["id"] for p in client.search("Patient")) == [
            "smart-0",
            "smart-1",
            "smart-2",
        ]
        auth = client.auth
        assert isinstance(auth, SmartBackendAuth)
        assert auth.token_url == sekmet_smart.base_url.removesuffix("/fhir") + "/auth/token"
        token = auth.access_token()
        assert token.expires_at - token.obtained_at == SEKMET_TOKEN_LIFETIME
        assert set(token.scope.split()) >= {
            "system/Patient.read" if version == "v1" else "system/Patient.rs"
        }


def test_sekmets_smart_server_refuses_an_unregistered_key(
    sekmet_smart: SandboxServer, keys: Keys
) -> None:
    # An EC key like the registered one: sekmet tries each registered key with the assertion's
    # algorithm, and an RS384 assertion against an EC key crashes its token endpoint (a 500).
    settings = settings_for(sekmet_smart.base_url, keys.impostor_es384, "")
    with FhirClient(settings) as client, pytest.raises(AuthError, match="invalid_client"):
        client.read("Patient", "smart-0")
