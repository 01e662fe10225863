"""When and with whom a synthetic patient is seen: the calendar of look-back windows, the decks of
visit patterns and statuses dealt per block of patients, and the visits each pattern makes, with
the background visits (emergency, inpatient, specialist, excluded types, cancelled, planned) that
never qualify under the default rules."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Final

from fhirpanel.domain.dates import months_before
from fhirpanel.sandbox.catalogue import CATALOGUE
from fhirpanel.sandbox.common import seeded
from fhirpanel.sandbox.directory import HOSPITAL, Clinician, Directory

# Look-back windows (docs/methods.md s.1): designed visits stay clear of the window edges so a
# day's difference in how a window is cut does not change which pattern a patient shows.
WINDOW_MONTHS: Final = 18
LAPSED_FROM_MONTHS: Final = 24
HISTORY_MONTHS: Final = 36
EDGE_MARGIN_DAYS: Final = 10

BLOCK_SIZE: Final = 200  # patterns and statuses are dealt per block of this many patients

PATTERN_DECK: Final = CATALOGUE.pattern_deck
PATTERN_DECK_FILL: Final = "loyal"  # mostly one PCP, occasionally covered by a colleague
STATUS_DECK: Final = CATALOGUE.status_deck
SPECIALIST_FOR: Final = CATALOGUE.specialist_for

# Office visits per year by age band (0-17, 18-39, 40-64, 65-79, 80+), before morbidity.
OFFICE_RATE: Final = (1.6, 1.1, 1.5, 2.4, 3.0)
OFFICE_RATE_PER_CONDITION: Final = 0.35
WELLNESS_SHARE: Final = (0.7, 0.35, 0.45, 0.6, 0.5)  # chance a period has a wellness exam
TELEHEALTH_SHARE: Final = 0.10
CANCELLED_SHARE: Final = 0.06
COVERING_SHARE: Final = 0.18

# How emergency visits and inpatient stays follow a patient's risk (`--utilisation`), so that
# `fhirpanel validate` can be checked on a population where the answer is known:
# - mild: the rates rise a little with age and each chronic condition (the default, as before);
# - risk: they rise steeply with each chronic condition, heart failure and COPD most;
# - independent: one rate for everyone, whatever their age or conditions.
UTILISATION_MODES: Final = ("mild", "risk", "independent")


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method; means here are small (<= ~30), and the loop is bounded."""
    if mean <= 0:
        return 0
    limit, product, count = math.exp(-mean), rng.random(), 0
    while product > limit and count < 200:
        product *= rng.random()
        count += 1
    return count


def _weekday(ordinal: int) -> int:
    return (ordinal + 6) % 7  # date.fromordinal(1) is a Monday


def _office_days(rng: random.Random, lo: int, hi: int, count: int) -> list[int]:
    """`count` weekday ordinals in [lo, hi], distinct when the range allows, sorted."""
    if count <= 0 or hi < lo:
        return []
    chosen: list[int] = []
    for _ in range(count * 40):
        if len(chosen) == count:
            break
        day = rng.randint(lo, hi)
        if _weekday(day) >= 5 and hi - lo > 7:
            continue
        if day in chosen and hi - lo + 1 > 2 * count:
            continue
        chosen.append(day)
    while len(chosen) < count:  # a range of a few days (a newborn): repeat days
        chosen.append(rng.randint(lo, hi))
    chosen.sort()
    return chosen


def _office_minute(rng: random.Random) -> int:
    return 8 * 60 + 15 * rng.randrange(37)  # 08:00-17:00 local, on the quarter hour


@dataclass(slots=True)
class Visit:
    day: int  # local date ordinal
    minute: int  # local minutes after midnight
    clinician: Clinician
    kind: str  # office | wellness | excluded | specialist | ed | inpatient | home
    klass: str = "AMB"
    status: str = "finished"
    subtype: str = ""  # the excluded visit type (NURSE, LAB, VACCINE, ANTICOAG)
    length: int = 20  # minutes
    organization: str = ""


@dataclass(slots=True)
class Person:
    index: int
    id: str
    gender: str
    birth: int  # ordinal
    given: list[str]
    family: str
    main_pcp: Clinician


@dataclass(frozen=True, slots=True)
class Calendar:
    """Ordinal day ranges derived from the as-of date."""

    as_of: int
    window_lo: int  # inside the 18-month window, clear of its edge
    window_hi: int
    history_lo: int  # 36 months back, clear of the edge
    pre_window_hi: int  # before the 18-month window
    lapsed_hi: int  # before 24 months

    @classmethod
    def for_as_of(cls, as_of: date) -> Calendar:
        window_start = months_before(as_of, WINDOW_MONTHS).toordinal()
        return cls(
            as_of=as_of.toordinal(),
            window_lo=window_start + EDGE_MARGIN_DAYS,
            window_hi=as_of.toordinal() - 1,
            history_lo=months_before(as_of, HISTORY_MONTHS).toordinal() + EDGE_MARGIN_DAYS,
            pre_window_hi=window_start - EDGE_MARGIN_DAYS,
            lapsed_hi=months_before(as_of, LAPSED_FROM_MONTHS).toordinal() - EDGE_MARGIN_DAYS,
        )


def deal_block(seed: int, block: int, patients: int) -> tuple[list[str], list[str]]:
    """The visit pattern and the status of each patient in one block, from shuffled decks."""
    rng = seeded(f"fhirpanel-sandbox/{seed}/deck/{block}")
    units: list[str] = []
    for pattern, cards in PATTERN_DECK:
        units.extend([pattern] * cards)
    used = sum(2 if u == "merge" else 1 for u in units)
    units.extend([PATTERN_DECK_FILL] * (BLOCK_SIZE - used))
    rng.shuffle(units)
    patterns: list[str] = []
    for unit in units:
        patterns.extend(("merge_survivor", "merged_duplicate") if unit == "merge" else (unit,))
    statuses: list[str] = []
    for status, cards in STATUS_DECK:
        if status == "deceased_or_flag":
            status = "deceased_flag" if block % 2 == 0 else "deceased"
        statuses.extend([status] * cards)
    statuses.extend(["active"] * (BLOCK_SIZE - len(statuses)))
    rng.shuffle(statuses)
    size = min(BLOCK_SIZE, patients - block * BLOCK_SIZE)
    patterns, statuses = patterns[:size], statuses[:size]
    if patterns and patterns[-1] == "merge_survivor":  # its duplicate fell past the end
        patterns[-1] = PATTERN_DECK_FILL
    for i, pattern in enumerate(patterns):
        if pattern in ("merge_survivor", "merged_duplicate"):
            statuses[i] = "active"
    return patterns, statuses


class VisitPlanner:
    """A patient's visits for their designed pattern, plus the visits that never qualify around
    them (docs/methods.md s.1-2). Holds only the calendar, the directory and how acute visits
    follow risk (UTILISATION_MODES)."""

    def __init__(self, calendar: Calendar, directory: Directory, utilisation: str = "mild") -> None:
        if utilisation not in UTILISATION_MODES:
            raise ValueError(f"utilisation must be one of {UTILISATION_MODES}")
        self.calendar = calendar
        self.directory = directory
        self.utilisation = utilisation

    def plan(
        self,
        rng: random.Random,
        person: Person,
        pattern: str,
        band: int,
        group: str,
        chronic: list[str],
    ) -> list[Visit]:
        """The visits of `person`, whose visit pattern is `pattern`, in no particular order."""
        cal = self.calendar
        lo_window = max(cal.window_lo, person.birth + 3)
        lo_history = max(cal.history_lo, person.birth + 3)
        yearly = min(
            10.0,
            OFFICE_RATE[band] * (3.0 if band == 0 and cal.as_of - person.birth < 730 else 1.0)
            + OFFICE_RATE_PER_CONDITION * len(chronic),
        )
        per_period = yearly * WINDOW_MONTHS / 12
        main = person.main_pcp
        visits: list[Visit] = []

        def office(day: int, who: Clinician, kind: str = "office") -> Visit:
            return Visit(day, _office_minute(rng), who, kind, length=rng.choice((15, 20, 30)))

        def others(*exclude: Clinician) -> list[Clinician]:
            members = self.directory.pools[group][0]
            return [c for c in members if c not in exclude]

        def colleague(*exclude: Clinician) -> Clinician:
            """Another PCP for this age group, usually from the same clinic."""
            candidates = others(*exclude)
            same_clinic = [c for c in candidates if c.organization == main.organization]
            return rng.choice(same_clinic if same_clinic and rng.random() < 0.7 else candidates)

        designed_pcp = True  # the pattern has PCP visits: add PCP noise around them
        background_hi = cal.window_hi
        if pattern in ("single", "loyal", "split", "merge_survivor"):
            least = {"single": 1, "split": 3}.get(pattern, 2)
            count = max(least, _poisson(rng, per_period))
            days = _office_days(rng, lo_window, cal.window_hi, count)
            if pattern == "split":  # the second PCP has fewer visits: a strict plurality
                second = colleague(main)
                seconds = set(rng.sample(range(count), rng.randint(1, (count - 1) // 2)))
                visits += [office(d, second if i in seconds else main) for i, d in enumerate(days)]
            elif pattern == "single":
                visits += [office(d, main) for d in days]
            else:  # loyal: covering visits stay below the main PCP's count
                covering = min(sum(rng.random() < COVERING_SHARE for _ in days), (count - 1) // 2)
                covered = set(rng.sample(range(count), covering))
                visits += [
                    office(d, colleague(main) if i in covered else main) for i, d in enumerate(days)
                ]
            self._wellness(rng, visits, band, lambda v: v.clinician is main)
            before = _office_days(rng, lo_history, cal.pre_window_hi, _poisson(rng, per_period))
            history = [
                office(
                    d,
                    main
                    if pattern == "single" or rng.random() > COVERING_SHARE
                    else colleague(main),
                )
                for d in before
            ]
            self._wellness(rng, history, band, lambda v: v.clinician is main)
            visits += history
        elif pattern.startswith("tie_"):
            visits += self._tie(rng, pattern, main, colleague, lo_window, office)
            before = _office_days(rng, lo_history, cal.pre_window_hi, _poisson(rng, 1.0))
            visits += [office(d, main) for d in before]
        elif pattern == "noise_matters":
            # Qualifying visits: the main PCP 2, the runner-up 1; the runner-up's two later
            # visits do not qualify (visit type, status or class), so counting them flips it.
            second = colleague(main)
            d1, d2, d3, d4, d5 = _office_days(rng, lo_window, cal.window_hi, 5)
            visits += [office(d1, main), office(d2, second), office(d3, main)]
            for day in (d4, d5):
                noise = office(day, second)
                flavour = rng.random()
                if flavour < 0.5:
                    noise.kind = "excluded"
                    noise.subtype = rng.choice(("NURSE", "LAB", "VACCINE", "ANTICOAG"))
                elif flavour < 0.75:
                    noise.status = "cancelled"
                else:
                    noise.kind, noise.klass, noise.length = "home", "HH", 45
                visits.append(noise)
        elif pattern == "lapsed":
            days = _office_days(rng, lo_history, cal.lapsed_hi, rng.randint(1, 4))
            visits += [office(d, main if rng.random() < 0.75 else colleague(main)) for d in days]
            self._wellness(rng, visits, band, lambda v: v.clinician is main)
            background_hi = cal.lapsed_hi  # nothing at all in the last 24 months
        elif pattern == "specialist_only":
            designed_pcp = False
            kinds = [k for k, keys in SPECIALIST_FOR.items() if any(c in chronic for c in keys)]
            kind = rng.choice(kinds or list(SPECIALIST_FOR))
            who = rng.choice(self.directory.specialists[kind])
            for day in _office_days(rng, lo_window, cal.window_hi, rng.randint(1, 4)):
                visits.append(self._specialist_visit(rng, day, who))
        elif pattern == "ed_only":
            designed_pcp = False
            for day in sorted(
                rng.randint(lo_window, cal.window_hi) for _ in range(rng.randint(1, 3))
            ):
                visits += self._emergency(rng, day, admit=rng.random() < 0.25)
        elif pattern == "excluded_only":
            designed_pcp = False
            days = _office_days(rng, lo_window, cal.window_hi, rng.randint(1, 3))
            for i, day in enumerate(days):
                who = main if i == 0 or rng.random() < 0.3 else self.directory.nurse(rng, main)
                visits.append(
                    self._excluded(
                        rng, day, who, rng.choice(("NURSE", "LAB", "VACCINE", "ANTICOAG"))
                    )
                )
        elif pattern == "merged_duplicate":
            days = _office_days(rng, lo_window, cal.window_hi, rng.randint(1, 2))
            return [office(d, main) for d in days]
        elif pattern == "none":
            return []

        visits += self._background(
            rng, person, band, group, chronic, lo_history, background_hi, designed_pcp
        )
        for visit in visits:  # telehealth: ordinary office visits held by video
            if (
                visit.kind == "office"
                and visit.klass == "AMB"
                and visit.status == "finished"
                and rng.random() < (TELEHEALTH_SHARE if band else TELEHEALTH_SHARE / 2)
            ):
                visit.klass = "VR"
        return visits

    def _tie(
        self,
        rng: random.Random,
        pattern: str,
        main: Clinician,
        colleague: Callable[..., Clinician],
        lo: int,
        office: Callable[..., Visit],
    ) -> list[Visit]:
        """Equal qualifying-visit counts in the window between two or three PCPs."""
        cal = self.calendar
        tied = [main, colleague(main)]
        if pattern == "tie_three":
            tied.append(colleague(*tied))
        each = rng.choice((1, 2, 2, 3)) if pattern != "tie_sentinel_other" else rng.choice((2, 3))
        slots = [who for who in tied for _ in range(each)]
        rng.shuffle(slots)
        same_day = pattern in ("tie_same_day", "tie_same_time")
        n_days = len(slots) - 1 if same_day else len(slots)
        outsider = colleague(*tied) if pattern == "tie_sentinel_other" else None
        days = _office_days(rng, lo, cal.window_hi, n_days + (1 if outsider else 0))
        visits: list[Visit] = []
        if outsider is not None:
            # The outsider's wellness exam comes before the last visit; it does not count
            # among the tied clinicians (Four Cut, step 3).
            outsider_day = days.pop(rng.randrange(len(days) - 1))
            visits.append(office(outsider_day, outsider, "wellness"))
        if same_day:
            # The last day is shared by the two tied clinicians; the other visits come earlier.
            first, second = tied[0], tied[1]
            earlier = list(slots)
            earlier.remove(first)
            earlier.remove(second)
            for day, who in zip(days[:-1], earlier, strict=True):
                visits.append(office(day, who))
            last_day = days[-1]
            a, b = office(last_day, first), office(last_day, second)
            if pattern == "tie_same_time":
                b.minute = a.minute
            else:  # a different hour of the same clinic day
                step = 15 * rng.randint(1, 8)
                b.minute = a.minute + step if a.minute < 12 * 60 else a.minute - step
            visits += [a, b]
            return visits
        # The last visit goes to one tied clinician; the sentinel exam to another.
        last_by = rng.choice(tied)
        slots.remove(last_by)
        rng.shuffle(slots)
        for day, who in zip(days[:-1], slots, strict=True):
            visits.append(office(day, who))
        visits.append(office(days[-1], last_by))
        if pattern == "tie_sentinel_tied":
            candidates = [v for v in visits if v.clinician is not last_by]
            rng.choice(candidates).kind = "wellness"
        return visits

    def _wellness(
        self, rng: random.Random, visits: list[Visit], band: int, eligible: Callable[[Visit], bool]
    ) -> None:
        candidates = [v for v in visits if v.kind == "office" and eligible(v)]
        if candidates and rng.random() < WELLNESS_SHARE[band]:
            rng.choice(candidates).kind = "wellness"

    def _excluded(self, rng: random.Random, day: int, who: Clinician, subtype: str) -> Visit:
        return Visit(
            day, _office_minute(rng), who, "excluded", subtype=subtype, length=rng.choice((10, 15))
        )

    def _specialist_visit(self, rng: random.Random, day: int, who: Clinician) -> Visit:
        return Visit(
            day,
            _office_minute(rng),
            who,
            "specialist",
            length=rng.choice((20, 30, 40)),
            organization=HOSPITAL.id,
        )

    def _emergency(self, rng: random.Random, day: int, admit: bool) -> list[Visit]:
        minute = rng.randrange(24 * 60)
        stay = rng.randint(120, 480)
        doctor = rng.choice(self.directory.specialists["emergency"])
        out = [
            Visit(day, minute, doctor, "ed", klass="EMER", length=stay, organization=HOSPITAL.id)
        ]
        if admit:
            start = minute + stay
            out.append(self._inpatient(rng, day + start // 1440, start % 1440))
        return out

    def _inpatient(self, rng: random.Random, day: int, minute: int) -> Visit:
        length = rng.randint(1, 6) * 1440 + rng.randrange(-300, 300)
        hospitalist = rng.choice(self.directory.specialists["hospitalist"])
        visit = Visit(
            day,
            minute,
            hospitalist,
            "inpatient",
            klass="IMP",
            length=length,
            organization=HOSPITAL.id,
        )
        if day * 1440 + minute + length >= (self.calendar.as_of + 1) * 1440:
            visit.status = "in-progress"  # still in hospital on the as-of date
        return visit

    def _acute_rates(self, band: int, chronic: list[str]) -> tuple[float, float, float]:
        """(emergency visits a year, inpatient stays a year, the share of emergency visits
        admitted) for the planner's utilisation mode (UTILISATION_MODES)."""
        n_chronic = len(chronic)
        severe = "heart_failure" in chronic or "copd" in chronic
        if self.utilisation == "independent":
            return 0.25, 0.04, 0.1
        if self.utilisation == "risk":
            ed = 0.04 + 0.3 * n_chronic + (0.8 if severe else 0.0)
            return ed, 0.005 + 0.08 * n_chronic + (0.3 if severe else 0.0), 0.2
        ed = (0.25 if band == 0 else 0.15) + 0.05 * n_chronic + (0.2 if severe else 0.0)
        return ed, 0.01 + (0.04 if band >= 3 else 0.0) + 0.015 * n_chronic, 0.2

    def _background(
        self,
        rng: random.Random,
        person: Person,
        band: int,
        group: str,
        chronic: list[str],
        lo: int,
        hi: int,
        designed_pcp: bool,
    ) -> list[Visit]:
        """Visits that never qualify under the default rules: emergency, inpatient, specialist,
        and, around PCP care, excluded visit types, home health, cancelled and future
        appointments."""
        cal = self.calendar
        main = person.main_pcp
        out: list[Visit] = []
        if hi < lo:
            return out
        years = (hi - lo) / 365.25
        ed_rate, imp_rate, admit_share = self._acute_rates(band, chronic)
        for _ in range(min(_poisson(rng, ed_rate * years), 12)):
            day = rng.randint(lo, hi)  # drawn before the admission, as it always was
            admit = (band >= 2 or self.utilisation != "mild") and rng.random() < admit_share
            out += self._emergency(rng, day, admit=admit)
        for _ in range(min(_poisson(rng, imp_rate * years), 6)):
            out.append(self._inpatient(rng, rng.randint(lo, hi), rng.randrange(24 * 60)))
        for kind, keys in SPECIALIST_FOR.items():
            if any(k in chronic for k in keys) or (
                kind == "endocrinology" and "t2dm" in chronic and rng.random() < 0.3
            ):
                who = self.directory.specialists[kind][
                    person.index % len(self.directory.specialists[kind])
                ]
                for day in _office_days(rng, lo, hi, min(_poisson(rng, 1.2 * years), 8)):
                    out.append(self._specialist_visit(rng, day, who))
        if not designed_pcp:
            return out
        # Excluded visit types: mostly with a nurse, some with the PCP (so that excluding them
        # changes a PCP's count).
        excluded: list[str] = []
        if chronic:
            excluded += ["LAB"] * min(_poisson(rng, 0.5 * years), 6)
        if "hypertension" in chronic:
            excluded += ["NURSE"] * _poisson(rng, 0.4 * years)
        if "afib" in chronic:
            excluded += ["ANTICOAG"] * min(_poisson(rng, 3.0 * years), 12)
        excluded += ["VACCINE"] * sum(
            rng.random() < (0.45 if band in (0, 4) else 0.3) for _ in range(3)
        )
        for subtype in excluded:
            who = main if rng.random() < 0.3 else self.directory.nurse(rng, main)
            day = _office_days(rng, lo, hi, 1)[0]
            out.append(self._excluded(rng, day, who, subtype))
        if band >= 4 or "alzheimers" in chronic or "heart_failure" in chronic:
            for day in _office_days(rng, lo, hi, min(_poisson(rng, 0.6 * years), 6)):
                who = main if rng.random() < 0.3 else self.directory.nurse(rng, main)
                out.append(
                    Visit(day, 9 * 60 + 30 * rng.randrange(16), who, "home", klass="HH", length=45)
                )
        for _ in range(_poisson(rng, CANCELLED_SHARE * 3 * years)):
            day = _office_days(rng, lo, hi, 1)[0]
            who = main if rng.random() < 0.6 else rng.choice(self.directory.pools[group][0])
            out.append(Visit(day, _office_minute(rng), who, "office", status="cancelled"))
        if hi < cal.window_hi:  # lapsed: no recent activity of any kind
            return out
        if rng.random() < 0.04:  # a booked appointment in the weeks after the as-of date
            day = _office_days(rng, cal.as_of + 1, cal.as_of + 30, 1)[0]
            out.append(Visit(day, _office_minute(rng), main, "office", status="planned"))
        if rng.random() < 0.003:  # in the building on the as-of date
            out.append(Visit(cal.as_of, _office_minute(rng), main, "office", status="in-progress"))
        if rng.random() < 0.003:  # admitted in the last few days, not yet discharged
            out.append(self._inpatient(rng, cal.as_of - rng.randint(0, 3), rng.randrange(1440)))
        return out
