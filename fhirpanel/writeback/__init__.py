"""Write-back of attribution and risk results as FHIR resources (CareTeam, CarePlan, and
optionally RiskAssessment, attribution Group, Provenance)."""

from fhirpanel.writeback.writer import (
    SimulatedCrash,
    WriteBackInterrupted,
    WritebackTables,
    WriteSummary,
    write_back,
)

__all__ = ["SimulatedCrash", "WriteBackInterrupted", "WriteSummary", "WritebackTables",
           "write_back"]
