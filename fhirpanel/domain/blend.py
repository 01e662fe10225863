"""The blended adjustment factor (docs/methods.md s.3.4): one number per patient from several
risk metrics, each normalised to a practice mean of 1.0, weighted by `mappings/blend.toml`.

The empanelment white paper: "often a blend of normalized risk metrics is compiled into one
adjustment factor". The metrics are the ones fhirpanel already computes per patient:

- `age_sex`: the age/sex weight (s.3.3);
- `hcc`: the CMS-HCC score (s.4.4); an adult without one counts as the mean (1.0 once
  normalised), as in the HCC-adjusted size. A child (the pediatric framework, s.4.7) has no
  HCC part at all: it is dropped and the other weights are scaled up to add to 1 again, so a
  Medicare model neither raises nor lowers a child's factor;
- `charlson`: the Charlson index (s.4.3);
- `utilisation`: emergency visits plus inpatient stays in the utilisation window (s.4.5).

Pure and deterministic: sums in patient order with `math.fsum`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from fhirpanel.errors import MappingError

METRICS: tuple[str, ...] = ("age_sex", "hcc", "charlson", "utilisation")
# The weights must add to 1 so that the practice's mean factor stays 1.0; allow float noise.
_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class BlendWeights:
    """How much each normalised metric counts; non-negative, adding to 1."""

    age_sex: float
    hcc: float
    charlson: float
    utilisation: float

    def __post_init__(self) -> None:
        for metric in METRICS:
            if getattr(self, metric) < 0:
                raise MappingError(f"weights.{metric}: must not be negative")
        total = math.fsum(getattr(self, m) for m in METRICS)
        if abs(total - 1.0) > _SUM_TOLERANCE:
            raise MappingError(f"weights: must add up to 1 (they add up to {total:g})")

    def as_dict(self) -> dict[str, float]:
        return {m: getattr(self, m) for m in METRICS}


@dataclass(frozen=True)
class PatientBlend:
    """One patient's metrics, each over the practice mean, and the weighted factor."""

    patient: str
    normalised: tuple[float, ...]  # in METRICS order
    factor: float
    dropped: tuple[str, ...] = ()  # metrics left out of this patient's factor (a child's hcc)

    def as_dict(self) -> dict[str, float]:
        return {
            m: v for m, v in zip(METRICS, self.normalised, strict=True) if m not in self.dropped
        }


@dataclass(frozen=True)
class Blend:
    weights: BlendWeights
    means: Mapping[str, float]  # metric -> the practice mean of its raw value
    patients: Mapping[str, PatientBlend]  # by patient id

    def factor(self, patient: str) -> float:
        """The patient's factor; 1.0 (the practice mean) for one not blended."""
        found = self.patients.get(patient)
        return found.factor if found is not None else 1.0


def practice_means(
    patients: Sequence[str], metrics: Mapping[str, Mapping[str, float | None]]
) -> dict[str, float]:
    """Each metric's mean over `patients`; a patient without a value is left out of that
    metric's mean (and later counts as the mean)."""
    means: dict[str, float] = {}
    for metric in METRICS:
        values = metrics.get(metric, {})
        known = [v for p in sorted(patients) if (v := values.get(p)) is not None]
        means[metric] = math.fsum(known) / len(known) if known else 0.0
    return means


def blend_factors(
    patients: Sequence[str],
    metrics: Mapping[str, Mapping[str, float | None]],
    weights: BlendWeights,
    means: Mapping[str, float] | None = None,
    without_hcc: Collection[str] = frozenset(),
) -> Blend:
    """The factor of each of `patients` (the practice's active patients): the weighted sum of
    its metrics (`metrics[metric][patient]`), each divided by the metric's practice mean.

    `means`: the practice means to divide by, when the patients given are not the whole
    practice (an incremental pass); else computed over `patients`. A metric whose mean is 0
    (nobody went to the emergency department, say) tells panels nothing apart: it counts 1.0
    for everyone. A patient without a value (no HCC score) counts 1.0.

    `without_hcc`: the children (pediatric framework): their factor blends the other metrics
    only, with the weights renormalised to add to 1 (all 1.0 when HCC had all the weight).
    """
    means = dict(means) if means is not None else practice_means(patients, metrics)
    w = [getattr(weights, m) for m in METRICS]
    out: dict[str, PatientBlend] = {}
    for patient in sorted(patients):
        normalised = []
        for metric in METRICS:
            value, mean = metrics.get(metric, {}).get(patient), means.get(metric, 0.0)
            normalised.append(value / mean if value is not None and mean > 0 else 1.0)
        if patient in without_hcc:
            kept = [
                (wi, ni) for m, wi, ni in zip(METRICS, w, normalised, strict=True) if m != "hcc"
            ]
            total = math.fsum(wi for wi, _ in kept)
            factor = math.fsum(wi * ni for wi, ni in kept) / total if total > 0 else 1.0
            out[patient] = PatientBlend(patient, tuple(normalised), factor, ("hcc",))
            continue
        factor = math.fsum(wi * ni for wi, ni in zip(w, normalised, strict=True))
        out[patient] = PatientBlend(patient, tuple(normalised), factor)
    return Blend(weights=weights, means=means, patients=out)


__all__ = ["METRICS", "Blend", "BlendWeights", "PatientBlend", "blend_factors", "practice_means"]
