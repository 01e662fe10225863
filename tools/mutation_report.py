"""The mutation score of each `fhirpanel/domain` module, from mutmut's results (`make mutation`).

Score = killed / (mutants - excluded). Excluded mutants are listed in
tests/mutation-exclusions.toml with a reason and the change they make: a mutant that only changes
an error message's wording, or one that is equivalent (no input can tell it from the original).
mutmut numbers mutants within their function, so editing a function renumbers them: an exclusion
counts only while the mutant of that name still makes the recorded change, and the report lists
those that no longer do. A timeout counts as killed (the mutant changed behaviour: the tests could
not finish); "no tests" counts as a survivor.

    python tools/mutation_report.py                  # the table
    python tools/mutation_report.py --survivors tiers  # plus each survivor's diff
    python tools/mutation_report.py --fail-under 95  # exit 1 when a module scores less
    python tools/mutation_report.py --names          # survivors and unrun mutants, to rerun

mutmut keeps a result until the function changes, so a test added to kill a survivor only counts
once that mutant is run again by name: `make mutation MUTANTS="$(python tools/mutation_report.py
--names)"`.

Run from the project root after `mutmut run` (mutmut writes mutants/).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "mutants" / "fhirpanel" / "domain"
EXCLUSIONS = ROOT / "tests" / "mutation-exclusions.toml"

# mutmut's exit codes (mutmut/stats.py, status_by_exit_code), grouped as the score reads them.
KILLED = {1, 3, 24, -24, 36, 37, 152, 255}  # killed, pytest error, timeout, type check
SURVIVED = {0, 5, 33}  # survived, no tests
NOT_RUN = {None, 2, 34}  # not checked, interrupted, skipped


@dataclass(frozen=True)
class Exclusion:
    reason: str
    change: str  # the mutant's changed lines (`change_of`), to notice a renumbering


@dataclass
class ModuleScore:
    module: str
    total: int = 0
    excluded: int = 0
    killed: int = 0
    not_run: int = 0
    other: int = 0  # segfault, suspicious: counted as not killed
    survivors: list[str] = field(default_factory=list)
    unrun: list[str] = field(default_factory=list)

    @property
    def scored(self) -> int:
        return self.total - self.excluded

    @property
    def score(self) -> float | None:
        checked = self.scored - self.not_run
        return 100.0 * self.killed / checked if checked > 0 else None


@dataclass
class Report:
    rows: list[ModuleScore]
    stale: list[str]  # excluded names mutmut no longer makes
    moved: list[str]  # excluded names that now make another change (not excluded)


def load_exclusions(path: Path = EXCLUSIONS) -> dict[str, Exclusion]:
    """Mutant name -> why it is left out of the score and the change it makes; both required."""
    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    out: dict[str, Exclusion] = {}
    for section in data.values():
        for name, entry in section.items():
            reason = entry.get("reason") if isinstance(entry, dict) else None
            change = entry.get("change") if isinstance(entry, dict) else None
            if not isinstance(reason, str) or not reason.strip():
                raise SystemExit(f"{path.name}: {name} needs a reason")
            if not isinstance(change, str) or not change.strip():
                raise SystemExit(f"{path.name}: {name} needs the change it makes")
            out[name] = Exclusion(reason, change)
    return out


def _module_path(name: str) -> Path:
    """fhirpanel.domain.tiers.x_clauses__mutmut_3 -> fhirpanel/domain/tiers.py;
    fhirpanel.domain.attribution.four_cut.x_four_cut__mutmut_3 ->
    fhirpanel/domain/attribution/four_cut.py"""
    return Path(*name.split(".x")[0].split(".")).with_suffix(".py")


def _module_of(meta: Path, results: Path) -> str:
    """The row's name: the module's path under the domain, dotted (a package's modules each get
    their own row, e.g. `attribution.pipeline`)."""
    return ".".join(meta.relative_to(results).with_suffix("").with_suffix("").parts)


def diff_of(name: str) -> str:
    """The mutant's diff, through mutmut's own reader (needs the project root as cwd)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    return str(get_diff_for_mutant(name, path=_module_path(name)))


def change_of(name: str) -> str:
    """The lines a mutant adds (else the ones it removes), stripped, joined by ' / '."""
    lines = diff_of(name).splitlines()
    added = [line[1:].strip() for line in lines if line[:1] == "+" and line[:3] != "+++"]
    removed = [line[1:].strip() for line in lines if line[:1] == "-" and line[:3] != "---"]
    return " / ".join(added) if added else "removed: " + " / ".join(removed)


def scores(
    exclusions: dict[str, Exclusion],
    results: Path = RESULTS,
    change: Callable[[str], str] = change_of,
) -> Report:
    """One row per domain module with results; exclusions that are stale or moved."""
    report = Report([], [], [])
    seen: set[str] = set()
    for meta in sorted(results.rglob("*.py.meta")):
        row = ModuleScore(_module_of(meta, results))
        codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        for name, code in sorted(codes.items()):
            row.total += 1
            seen.add(name)
            excluded = exclusions.get(name)
            if excluded is not None and change(name) != excluded.change:
                report.moved.append(name)
                excluded = None
            if excluded is not None:
                row.excluded += 1
            elif code in KILLED:
                row.killed += 1
            elif code in NOT_RUN:
                row.not_run += 1
                row.unrun.append(name)
            elif code in SURVIVED:
                row.survivors.append(name)
            else:
                row.other += 1
                row.survivors.append(name)
        if row.total:
            report.rows.append(row)
    report.stale = sorted(set(exclusions) - seen)
    return report


WIDTH = 24  # the longest row name, attribution.eligibility, and a space


def table(rows: list[ModuleScore]) -> str:
    head = f"{'module':<{WIDTH}}{'mutants':>8}{'excluded':>9}{'killed':>8}{'survived':>9}"
    head += f"{'not run':>8}{'score':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        score = "-" if r.score is None else f"{r.score:.1f}%"
        lines.append(
            f"{r.module:<{WIDTH}}{r.total:>8}{r.excluded:>9}{r.killed:>8}{len(r.survivors):>9}"
            f"{r.not_run:>8}{score:>8}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--survivors", nargs="*", metavar="MODULE", help="show survivors' diffs")
    parser.add_argument("--fail-under", type=float, metavar="PERCENT")
    parser.add_argument("--names", action="store_true", help="only list survivors and unrun")
    args = parser.parse_args(argv)
    if not RESULTS.exists():
        print("no mutmut results: run `mutmut run` first (make mutation)")
        return 2
    report = scores(load_exclusions())
    if args.names:
        print("\n".join(name for r in report.rows for name in [*r.survivors, *r.unrun]))
        return 0
    print(table(report.rows))
    for names, what in (
        (report.stale, "excluded mutant(s) mutmut no longer makes"),
        (report.moved, "excluded mutant(s) that now make another change (counted, not excluded)"),
    ):
        if names:
            print(f"\n{len(names)} {what}; update {EXCLUSIONS.name}:")
            print("\n".join(f"  {name}" for name in names))
    if args.survivors is not None:
        wanted = set(args.survivors)
        # `attribution` names every module of the package, `attribution.pipeline` one of them.
        rows = [r for r in report.rows if not wanted or {r.module, r.module.split(".")[0]} & wanted]
        names = [n for r in rows for n in r.survivors]
        print()
        print("\n".join(f"# {name}\n{diff_of(name)}\n" for name in names))
    if args.fail_under is not None:
        low = [r.module for r in report.rows if r.score is not None and r.score < args.fail_under]
        if low:
            print(f"\nbelow {args.fail_under:g}%: {', '.join(low)}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
