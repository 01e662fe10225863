"""Write-back of attribution and risk results as FHIR resources (CareTeam, CarePlan, and
optionally RiskAssessment, attribution Group, Provenance): `builders` make them, `identity`
recognises fhirpanel's own, `plan` decides and `writer` sends (with `sending`, `transactions`
and `provenance`); `summary` is what it reports."""

from fhirpanel.tables import WritebackTables
from fhirpanel.writeback.summary import WriteBackInterrupted, WriteSummary
from fhirpanel.writeback.writer import write_back

# WritebackTables is built by fhirpanel.tables; re-exported here for existing callers.
__all__ = ["WriteBackInterrupted", "WriteSummary", "WritebackTables", "write_back"]
