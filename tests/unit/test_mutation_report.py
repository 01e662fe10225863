"""tools/mutation_report.py (`make mutation`): the score per module from mutmut's results, with
the reasoned exclusions left out while they still name the change they were made for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.mutation_report import Exclusion, _module_path, load_exclusions, scores, table

NAME = "fhirpanel.domain.tiers.x_f__mutmut_{}".format


def _meta(folder: Path, module: str, codes: dict[str, int | None]) -> None:
    (folder / f"{module}.py.meta").write_text(
        json.dumps({"exit_code_by_key": codes}), encoding="utf-8"
    )


def _changes(name: str) -> str:
    return f"change {name[-1]}"


def test_killed_over_mutants_less_excluded_and_not_yet_run(tmp_path: Path) -> None:
    # killed, timeout (killed), survived, no tests (a survivor), excluded survivor, not run
    codes: dict[str, int | None] = {NAME(1): 1, NAME(2): 36, NAME(3): 0, NAME(4): 33, NAME(5): 0}
    _meta(tmp_path, "tiers", {**codes, NAME(6): None})
    _meta(tmp_path, "dates", {})
    exclusions = {NAME(5): Exclusion("equivalent", "change 5"), NAME(9): Exclusion("gone", "x")}
    report = scores(exclusions, tmp_path, _changes)
    (row,) = report.rows
    assert (row.module, row.total, row.excluded, row.killed, row.not_run) == ("tiers", 6, 1, 2, 1)
    assert row.survivors == [NAME(3), NAME(4)]
    assert row.unrun == [NAME(6)]
    assert row.score == pytest.approx(50.0)  # 2 of the 4 checked, scored mutants
    assert (report.stale, report.moved) == ([NAME(9)], [])
    assert table(report.rows).splitlines()[2].split() == ["tiers", "6", "1", "2", "2", "1", "50.0%"]


def test_an_exclusion_whose_mutant_now_makes_another_change_is_not_excluded(
    tmp_path: Path,
) -> None:
    _meta(tmp_path, "tiers", {NAME(1): 0, NAME(2): 1})
    exclusions = {NAME(1): Exclusion("equivalent", "what _1 used to change")}
    report = scores(exclusions, tmp_path, _changes)
    (row,) = report.rows
    assert (row.excluded, row.survivors, report.moved) == (0, [NAME(1)], [NAME(1)])


def test_each_module_of_a_package_has_its_own_row(tmp_path: Path) -> None:
    (tmp_path / "attribution").mkdir()
    four_cut = "fhirpanel.domain.attribution.four_cut.x_four_cut__mutmut_{}".format
    _meta(tmp_path / "attribution", "four_cut", {four_cut(1): 1, four_cut(2): 0})
    _meta(
        tmp_path / "attribution", "rules", {"fhirpanel.domain.attribution.rules.x_f__mutmut_1": 1}
    )
    _meta(tmp_path, "tiers", {NAME(1): 1})
    report = scores({four_cut(2): Exclusion("equivalent", "change 2")}, tmp_path, _changes)
    assert [(r.module, r.total, r.excluded, r.killed) for r in report.rows] == [
        ("attribution.four_cut", 2, 1, 1),
        ("attribution.rules", 1, 0, 1),
        ("tiers", 1, 0, 1),
    ]
    assert table(report.rows).splitlines()[2].split()[0] == "attribution.four_cut"


def test_a_mutant_name_gives_its_source_file() -> None:
    assert _module_path(NAME(3)) == Path("fhirpanel/domain/tiers.py")
    name = "fhirpanel.domain.attribution.four_cut.x_four_cut__mutmut_3"
    assert _module_path(name) == Path("fhirpanel/domain/attribution/four_cut.py")
    method = "fhirpanel.domain.attribution.rules.xǁPipelineǁ__post_init____mutmut_33"
    assert _module_path(method) == Path("fhirpanel/domain/attribution/rules.py")


def test_the_committed_exclusions_each_give_a_reason_and_a_change() -> None:
    exclusions = load_exclusions()
    assert exclusions
    assert all(name.startswith("fhirpanel.domain.") for name in exclusions)
    assert all(e.reason.strip() and e.change.strip() for e in exclusions.values())


@pytest.mark.parametrize(
    "entry",
    ['" "', '{ reason = " ", change = "x" }', '{ reason = "equivalent" }'],
)
def test_an_exclusion_without_a_reason_or_a_change_is_refused(tmp_path: Path, entry: str) -> None:
    path = tmp_path / "exclusions.toml"
    path.write_text(f'[tiers]\n"fhirpanel.domain.tiers.x_f__mutmut_1" = {entry}\n', "utf-8")
    with pytest.raises(SystemExit):
        load_exclusions(path)
