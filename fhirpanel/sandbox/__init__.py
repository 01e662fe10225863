"""Local sandbox FHIR server and synthetic population."""
