"""FHIR I/O: client, parsing, building, bulk export, capability checks."""
