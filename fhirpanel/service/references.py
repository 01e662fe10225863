"""The one check of a FHIR reference, for paths, bodies, forms and query parameters alike: the
review service, the JSON API and the dashboard all use it."""

from __future__ import annotations

from fhirpanel.service.errors import InvalidReference
from fhirpanel.vocabulary import FHIR_ID


def reference(rtype: str, raw: str) -> str | None:
    """`pat-1` or `Patient/pat-1` → `Patient/pat-1`; None when it is not a FHIR id (the one
    check of a reference, for paths, bodies, forms and query parameters alike)."""
    value = raw[len(rtype) + 1 :] if raw.startswith(rtype + "/") else raw
    return f"{rtype}/{value}" if FHIR_ID.fullmatch(value) else None


def require_reference(rtype: str, raw: str, field: str) -> str:
    ref = reference(rtype, raw)
    if ref is None:
        raise InvalidReference(field, rtype, raw)
    return ref


__all__ = ["reference", "require_reference"]
