"""fhirpanel: FHIR-native empanelment and risk-stratified care management."""

__version__ = "0.1.0"
