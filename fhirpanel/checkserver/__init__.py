"""What a FHIR server declares that fhirpanel uses, and what fhirpanel does where something is
missing: the checks behind `fhirpanel check-server URL` (fhirpanel.commands.check_server).

Reads `/metadata` (the CapabilityStatement) and `.well-known/smart-configuration` without
credentials: the FHIR RESTful API (capabilities interaction) and SMART App Launch (discovery) both
make them public. When credentials are configured (`fhir.auth`), one count-only Patient search
shows whether the server accepts them. Exits 15 (`ExitCode.CAPABILITY`) when something fhirpanel
cannot work without is missing, 11 when the credentials are refused, 2 when the credential
settings cannot even be tried; a URL where no FHIR server answers is a SourceError (10).

One module per job: `runner` (`check_server`: fetch, credentials, probes, judge), `probes`
(population searches, transaction size), `judge` (pure: findings from the statement and the
settings), `model` (the result types and what fhirpanel reads and writes) and `render` (the
terminal table). Callers import from here.
"""

from fhirpanel.checkserver.judge import judge
from fhirpanel.checkserver.model import (
    READ_PARAMS,
    READ_TYPES,
    WRITE_TYPES,
    Finding,
    ParamUse,
    PopulationProbe,
    Recommendation,
    ServerCheck,
)
from fhirpanel.checkserver.probes import (
    TransactionProbe,
    probe_bundle,
    probe_population_searches,
    probe_transaction_size,
    recommend,
)
from fhirpanel.checkserver.render import render
from fhirpanel.checkserver.runner import check_server

__all__ = [
    "READ_PARAMS",
    "READ_TYPES",
    "WRITE_TYPES",
    "Finding",
    "ParamUse",
    "PopulationProbe",
    "Recommendation",
    "ServerCheck",
    "TransactionProbe",
    "check_server",
    "judge",
    "probe_bundle",
    "probe_population_searches",
    "probe_transaction_size",
    "recommend",
    "render",
]
