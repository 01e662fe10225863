"""tools/mutation_report.py (`make mutation`): the score per module from mutmut's results, with
the reasoned exclusions left out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.mutation_report import load_exclusions, scores, table


def _meta(folder: Path, module: str, codes: dict[str, int | None]) -> None:
    (folder / f"{module}.py.meta").write_text(
        json.dumps({"exit_code_by_key": codes}), encoding="utf-8"
    )


def test_killed_over_mutants_less_excluded_and_not_yet_run(tmp_path: Path) -> None:
    name = "fhirpanel.domain.tiers.x_f__mutmut_{}".format
    # killed, timeout (killed), survived, no tests (a survivor), excluded survivor, not run
    _meta(
        tmp_path,
        "tiers",
        {name(1): 1, name(2): 36, name(3): 0, name(4): 33, name(5): 0, name(6): None},
    )
    _meta(tmp_path, "dates", {})
    rows, stale = scores({name(5): "equivalent", name(9): "gone"}, tmp_path)
    (row,) = rows
    assert (row.module, row.total, row.excluded, row.killed, row.not_run) == ("tiers", 6, 1, 2, 1)
    assert row.survivors == [name(3), name(4)]
    assert row.unrun == [name(6)]
    assert row.score == pytest.approx(50.0)  # 2 of the 4 checked, scored mutants
    assert stale == [name(9)]
    assert table(rows).splitlines()[2].split() == ["tiers", "6", "1", "2", "2", "1", "50.0%"]


def test_the_committed_exclusions_each_give_a_reason() -> None:
    exclusions = load_exclusions()
    assert exclusions
    assert all(name.startswith("fhirpanel.domain.") for name in exclusions)
    assert all(reason.strip() for reason in exclusions.values())


def test_an_exclusion_without_a_reason_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "exclusions.toml"
    path.write_text('[tiers]\n"fhirpanel.domain.tiers.x_f__mutmut_1" = " "\n', encoding="utf-8")
    with pytest.raises(SystemExit):
        load_exclusions(path)
