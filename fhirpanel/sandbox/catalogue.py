"""The synthetic population's tables, read from `catalogue.toml` beside this module: the condition
catalogue and its prevalence, the age mix, the clinicians hired, the places, the names, and the
decks of visit patterns and statuses. Figures are data, reviewed as data; the rules that use them
are the generator's code.

The file ships inside the package. It is read and checked once, at import (`CATALOGUE`): a broken
file is a bug in fhirpanel, reported as CatalogueError naming the entry. Order is kept as written
(the generator draws in that order).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

CATALOGUE_FILE = "catalogue.toml"
AGE_BAND_COUNT = 5  # prevalence is given for 0-17, 18-39, 40-64, 65-79 and 80+


class CatalogueError(ValueError):
    """catalogue.toml is not what the generator needs."""


@dataclass(frozen=True, slots=True)
class ConditionDef:
    key: str
    icd10cm: str
    snomed: str
    display: str
    chronic: bool


class Place(NamedTuple):
    id: str
    name: str
    city: str
    postal_code: str


class AgeBand(NamedTuple):
    lo: int  # years, from
    hi: int  # years, to
    weight: float  # percent of the population


@dataclass(frozen=True)
class Catalogue:
    conditions: tuple[ConditionDef, ...]
    prevalence: dict[str, tuple[float, ...]]  # per age band (AGE_BAND_COUNT)
    sex_factor: dict[str, tuple[float, ...]]  # (female, male)
    dependent_conditions: tuple[tuple[str, str, float], ...]  # (parent, condition, share)
    age_bands: tuple[AgeBand, ...]
    given_female: tuple[str, ...]
    given_male: tuple[str, ...]
    family_names: tuple[str, ...]
    pcp_hiring_order: tuple[str, ...]  # taxonomy keys; "*": the specialty sent as text only
    taxonomy: dict[str, tuple[str, ...]]  # kind -> (NUCC code, display)
    text_labels: dict[str, str]
    pcp_preference: dict[str, dict[str, float]]  # age group -> kind -> weight
    qualifications: dict[str, str]
    specialist_for: dict[str, tuple[str, ...]]  # specialist kind -> condition keys
    state: str
    clinics: tuple[Place, ...]
    hospital: Place
    pattern_deck: tuple[tuple[str, int], ...]
    status_deck: tuple[tuple[str, int], ...]


def load_catalogue(text: str | None = None) -> Catalogue:
    """The shipped catalogue (or one given as TOML text), checked."""
    if text is None:
        text = resources.files(__package__).joinpath(CATALOGUE_FILE).read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{CATALOGUE_FILE}: not valid TOML: {exc}") from exc
    conditions = tuple(
        ConditionDef(
            key,
            _str(row, "icd10cm", f"conditions.{key}"),
            _str(row, "snomed", f"conditions.{key}"),
            _str(row, "display", f"conditions.{key}"),
            _bool(row, "chronic", f"conditions.{key}"),
        )
        for key, row in _table(data, "conditions").items()
    )
    known = {c.key for c in conditions}
    people = _table(data, "people")
    clinicians = _table(data, "clinicians")
    places = _table(data, "places")
    taxonomy = {
        k: _strings(v, f"clinicians.taxonomy.{k}", 2)
        for k, v in _table(clinicians, "taxonomy", "clinicians.").items()
    }
    catalogue = Catalogue(
        conditions=conditions,
        prevalence={
            k: _floats(v, f"prevalence.{k}", AGE_BAND_COUNT)
            for k, v in _table(data, "prevalence").items()
        },
        sex_factor={
            k: _floats(v, f"sex_factor.{k}", 2) for k, v in _table(data, "sex_factor").items()
        },
        dependent_conditions=tuple(
            _dependent(d, f"dependent_conditions.draws[{i}]")
            for i, d in enumerate(_list(_table(data, "dependent_conditions"), "draws"))
        ),
        age_bands=tuple(
            _age_band(v, f"people.age_bands[{i}]") for i, v in enumerate(_list(people, "age_bands"))
        ),
        given_female=_strings(people.get("given_female"), "people.given_female"),
        given_male=_strings(people.get("given_male"), "people.given_male"),
        family_names=_strings(people.get("family"), "people.family"),
        pcp_hiring_order=_strings(
            clinicians.get("pcp_hiring_order"), "clinicians.pcp_hiring_order"
        ),
        taxonomy=taxonomy,
        text_labels={
            k: _str(clinicians["text_labels"], k, "clinicians.text_labels")
            for k in _table(clinicians, "text_labels", "clinicians.")
        },
        pcp_preference={
            group: {k: _float(w, f"clinicians.preference.{group}.{k}") for k, w in table.items()}
            for group, table in _table(clinicians, "preference", "clinicians.").items()
        },
        qualifications={
            k: _str(clinicians["qualifications"], k, "clinicians.qualifications")
            for k in _table(clinicians, "qualifications", "clinicians.")
        },
        specialist_for={
            k: _strings(v, f"clinicians.specialist_for.{k}")
            for k, v in _table(clinicians, "specialist_for", "clinicians.").items()
        },
        state=_str(places, "state", "places"),
        clinics=tuple(
            _place(v, f"places.clinics[{i}]") for i, v in enumerate(_list(places, "clinics"))
        ),
        hospital=_place(places.get("hospital"), "places.hospital"),
        pattern_deck=_deck(_table(data, "visit_patterns"), "visit_patterns"),
        status_deck=_deck(_table(data, "patient_statuses"), "patient_statuses"),
    )
    _check_references(catalogue, known)
    return catalogue


def _check_references(cat: Catalogue, known: set[str]) -> None:
    """Every name one table uses is defined in the table it points at."""

    def need(names: Any, where: str, defined: Mapping[str, Any] | set[str]) -> None:
        missing = sorted(set(names) - set(defined))
        if missing:
            raise CatalogueError(f"{CATALOGUE_FILE}: {where} names unknown {', '.join(missing)}")

    need(cat.prevalence, "prevalence", known)
    need(cat.sex_factor, "sex_factor", known)
    need(
        {n for parent, child, _ in cat.dependent_conditions for n in (parent, child)},
        "dependent_conditions",
        known,
    )
    need({k for keys in cat.specialist_for.values() for k in keys}, "specialist_for", known)
    need(cat.specialist_for, "specialist_for", cat.taxonomy)
    need({k.rstrip("*") for k in cat.pcp_hiring_order}, "pcp_hiring_order", cat.taxonomy)
    need(
        {k.rstrip("*") for k in cat.pcp_hiring_order if k.endswith("*")},
        "pcp_hiring_order (text only)",
        cat.text_labels,
    )
    need({k for table in cat.pcp_preference.values() for k in table}, "preference", cat.taxonomy)
    if not (cat.clinics and cat.age_bands and cat.pcp_hiring_order):
        raise CatalogueError(
            f"{CATALOGUE_FILE}: clinics, age_bands and pcp_hiring_order must not be empty"
        )


# ---------------------------------------------------------------- typed reads


def _fail(where: str, expected: str, value: Any) -> CatalogueError:
    return CatalogueError(f"{CATALOGUE_FILE}: {where}: expected {expected}, not {value!r}")


def _table(data: Mapping[str, Any], key: str, prefix: str = "") -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise _fail(prefix + key, "a table", value)
    return value


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise _fail(key, "an array", value)
    return value


def _str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise _fail(f"{where}.{key}", "a string", value)
    return value


def _bool(data: Mapping[str, Any], key: str, where: str) -> bool:
    value = data.get(key)
    if not isinstance(value, bool):
        raise _fail(f"{where}.{key}", "true or false", value)
    return value


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _fail(where, "a number of 0 or more", value)
    return float(value)


def _floats(value: Any, where: str, length: int) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != length:
        raise _fail(where, f"{length} numbers", value)
    return tuple(_float(v, where) for v in value)


def _strings(value: Any, where: str, length: int | None = None) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not all(isinstance(v, str) and v for v in value)
        or (length is not None and len(value) != length)
    ):
        raise _fail(where, f"{length or 'an array of'} strings", value)
    return tuple(value)


def _age_band(value: Any, where: str) -> AgeBand:
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value[:2])
        or not 0 <= value[0] < value[1]
    ):
        raise _fail(where, "[years from, years to, weight]", value)
    return AgeBand(value[0], value[1], _float(value[2], where))


def _dependent(value: Any, where: str) -> tuple[str, str, float]:
    if not isinstance(value, dict):
        raise _fail(where, "a table", value)
    return (
        _str(value, "parent", where),
        _str(value, "condition", where),
        _float(value.get("share"), f"{where}.share"),
    )


def _place(value: Any, where: str) -> Place:
    if not isinstance(value, dict):
        raise _fail(where, "a table", value)
    return Place(*(_str(value, key, where) for key in Place._fields))


def _deck(table: Mapping[str, Any], where: str) -> tuple[tuple[str, int], ...]:
    for key, cards in table.items():
        if isinstance(cards, bool) or not isinstance(cards, int) or cards < 1:
            raise _fail(f"{where}.{key}", "a number of cards (1 or more)", cards)
    return tuple(table.items())


CATALOGUE = load_catalogue()
