"""`check_server`: fetch the statement and the SMART document without credentials, try the
configured credentials with one count-only search, run the probes and judge it all."""

from __future__ import annotations

import json
from typing import Any

from fhirpanel.checkserver.judge import judge
from fhirpanel.checkserver.model import Credentials, Finding, PopulationProbe, ServerCheck
from fhirpanel.checkserver.probes import (
    TransactionProbe,
    is_medplum,
    population_findings,
    probe_population_searches,
    probe_transaction_size,
    probing,
    recommend,
    wants_transactions,
    write_caveat,
)
from fhirpanel.config import Settings
from fhirpanel.errors import (
    AuthError,
    ConfigError,
    FhirHttpError,
    NotFoundError,
    SourceError,
    TransportError,
)
from fhirpanel.fhir.capability import ServerCapabilities
from fhirpanel.fhir.client import (
    FhirClient,
    NoAuth,
    auth_from_settings,
    redact_url,
)
from fhirpanel.writeback.plan import MEDPLUM_LIMITS


def check_server(url: str, settings: Settings, *, read_only: bool = False) -> ServerCheck:
    """Fetch what the server declares and judge it against what fhirpanel uses; when writing
    back in transactions, probe the largest transaction it accepts (`probe_transaction_size`)."""
    fhir = settings.with_fhir(base_url=url).fhir
    probe: TransactionProbe | None = None
    population: dict[str, PopulationProbe] = {}
    with FhirClient(fhir, auth=NoAuth()) as public:
        try:
            caps = _capabilities(public, url)
        except AuthError:
            caps = None  # some servers protect /metadata too: try with the credentials below
        smart_config, smart_note = _smart_configuration(public)
        if fhir.auth == "none" and caps is not None and probing(caps, settings, read_only):
            probe = probe_transaction_size(public, settings.writeback)
        if fhir.auth == "none" and caps is not None:
            population = probe_population_searches(public)
    credentials: tuple[Finding, Credentials] | None = None
    if fhir.auth != "none":
        try:
            auth = auth_from_settings(fhir)
        except ConfigError as exc:
            if caps is None:
                raise
            credentials = _credentials_unusable(fhir.auth, exc)
        else:
            with FhirClient(fhir, auth=auth) as private:
                if caps is None:
                    caps = _capabilities(private, url)
                credentials = _probe_credentials(private, fhir.auth)
                usable = credentials[1] in ("accepted", "unconfirmed")
                if usable and probing(caps, settings, read_only):
                    probe = probe_transaction_size(private, settings.writeback)
                if usable:
                    population = probe_population_searches(private)
    if caps is None:
        raise AuthError(
            401,
            "the server asks for credentials even for /metadata; configure "
            "fhir.auth (see fhirpanel.example.toml) and check again",
            url=redact_url(url.rstrip("/") + "/metadata"),
        )
    check = ServerCheck(
        url=redact_url(url),
        fhir_version=caps.fhir_version or "not stated",
        release=caps.release,
        software=" ".join(p for p in (caps.software_name, caps.software_version) if p)
        or "not stated",
        read_only=read_only,
        smart_configuration=smart_config,
        credentials=credentials[1] if credentials else None,
        transaction_size=probe.accepted if probe is not None else None,
        write_limits=dict(MEDPLUM_LIMITS) if is_medplum(caps) else None,
    )
    check.findings.extend(
        judge(caps, settings, read_only=read_only, smart_config=smart_config, smart_note=smart_note)
    )
    if probe is not None:
        check.findings.append(probe.finding(settings.writeback, caps))
    elif (
        wants_transactions(caps, settings, read_only) and not settings.writeback.probe_transactions
    ):
        check.findings.append(
            Finding(
                "write",
                "transaction size",
                "unknown",
                "not probed",
                f"off (writeback.probe_transactions = false): starts at "
                f"{settings.writeback.batch_size} entries.{write_caveat(caps)}",
            )
        )
    if credentials is not None:
        check.findings.append(credentials[0])
    if population:
        check.population = {t: p.state for t, p in population.items()}
        check.recommendation = recommend(caps, population, url)
        check.findings.extend(population_findings(population, check.recommendation))
    return check


def _capabilities(client: FhirClient, url: str) -> ServerCapabilities:
    where = redact_url(url)
    try:
        return client.capabilities()
    except AuthError:
        raise
    except TransportError as exc:
        raise SourceError(f"cannot reach a FHIR server at {where}: {exc}") from exc
    except NotFoundError as exc:
        raise SourceError(
            f"no FHIR /metadata at {where} (HTTP 404): is it the FHIR base URL?"
        ) from exc
    except FhirHttpError as exc:
        raise SourceError(
            f"{where}/metadata did not answer with a CapabilityStatement: {exc}"
        ) from exc
    except SourceError as exc:  # not JSON, or JSON that is not a CapabilityStatement
        raise SourceError(f"{where} does not look like a FHIR server: {exc}") from exc


def _smart_configuration(client: FhirClient) -> tuple[dict[str, Any] | None, str]:
    """The SMART discovery document (SMART App Launch 2.x, "Conformance"), or why there is none."""
    try:
        response = client.request(
            "GET", ".well-known/smart-configuration", headers={"Accept": "application/json"}
        )
    except FhirHttpError as exc:
        return None, f"none (HTTP {exc.status})"
    except SourceError as exc:
        return None, f"could not be read ({str(exc)[:120]})"
    try:
        data = json.loads(response.content)
    except ValueError:
        return None, "not JSON"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    return data, "found"


def _credentials_name(auth: str) -> str:
    return f"credentials (fhir.auth = {auth})"


def _credentials_unusable(auth: str, exc: ConfigError) -> tuple[Finding, Credentials]:
    return Finding(
        "auth",
        _credentials_name(auth),
        "no",
        f"not tried: {exc}",
        "fix the fhir.* settings before a run",
        required=True,
    ), "not tried"


def _probe_credentials(client: FhirClient, auth: str) -> tuple[Finding, Credentials]:
    """One authenticated search that returns a count only (no resource content)."""
    name = _credentials_name(auth)
    try:
        try:
            client.request("GET", "Patient", params=[("_summary", "count")])
        except AuthError as exc:
            if exc.status != 403:
                raise
            # A server that refuses population searches answers 403 to this one whatever the
            # credentials: a count for one (made-up) patient tells them apart.
            client.request(
                "GET",
                "Encounter",
                params=[("patient", "fhirpanel-credentials-probe"), ("_summary", "count")],
            )
            return Finding(
                "auth",
                name,
                "yes",
                "accepted (Encounter?patient=…&_summary=count; Patient?_summary=count refused)",
                "reads and writes with these credentials",
            ), "accepted"
    except AuthError as exc:
        return Finding(
            "auth",
            name,
            "no",
            f"refused: {exc}",
            "cannot read: fix the credentials before a run",
            required=True,
        ), "refused"
    except ConfigError as exc:  # SMART: no token endpoint found, a key that does not fit
        return _credentials_unusable(auth, exc)
    except (FhirHttpError, SourceError) as exc:
        return Finding(
            "auth",
            name,
            "unknown",
            f"not confirmed: {str(exc)[:160]}",
            "a count-only Patient search failed for another reason",
        ), "unconfirmed"
    return Finding(
        "auth",
        name,
        "yes",
        "accepted (Patient?_summary=count)",
        "reads and writes with these credentials",
    ), "accepted"
