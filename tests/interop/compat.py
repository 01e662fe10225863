"""The compatibility table: what the scenario suite (tests/interop/test_scenarios.py) found on
each server.

As a pytest plugin (test_scenarios.py names it in `pytest_plugins`) it records every scenario
test's outcome per server (pass, not supported with the CapabilityStatement's reason, known limit
with its workaround, fail with the first line of the error), the servers' software, startup time,
load time and memory, `check-server`'s verdict and the suite's time, and writes them to
tests/output/interop/compat.json at the end of the session (merged into what an earlier,
narrower run left there). A test adds a note with `record_property("compat", "known limit: ...")`.

    python -m tests.interop.compat [--json PATH]     # the Markdown table on stdout
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "tests" / "output" / "interop" / "compat.json"

# row -> its label, in the table's order
SCENARIOS: dict[str, str] = {
    "load": "load the committed population",
    "check_server": "`check-server` accepts it",
    "dry_run": "dry run = NDJSON report (minus left-out input issues)",
    "expired_page": "expired search page (410) mid-read: restarts once",
    "export": "`$export` (`run --source bulk:`)",
    "write": "`run --write`",
    "rerun": "rerun writes nothing",
    "later_as_of": "later as-of updates with If-Match",
    "stale_if_match": "stale If-Match: the clinician's edit survives",
    "pcp_change": "PCP change: old participant ended, new one added",
    "optional": "RiskAssessment / Group / Provenance",
    "two_matches": "conditional update meets two matches: reported, no third",
    "refresh": "`refresh --full` + incremental after new encounters",
    "subscription": "worker's rest-hook Subscription",
}
# test function -> the rows it decides, in the order it reaches them; a test with several rows
# calls record_property("compat_step", row) as it passes each
TESTS: dict[str, tuple[str, ...]] = {
    "test_load_population": ("load",),
    "test_check_server": ("check_server",),
    "test_dry_run_report_equals_ndjson": ("dry_run",),
    "test_expired_search_page": ("expired_page",),
    "test_bulk_export": ("export",),
    "test_write_lifecycle": (
        "write",
        "rerun",
        "later_as_of",
        "stale_if_match",
        "pcp_change",
        "optional",
    ),
    "test_conditional_update_two_matches": ("two_matches",),
    "test_refresh_full_and_incremental": ("refresh",),
    "test_worker_subscription": ("subscription",),
}

_results: dict[str, dict[str, Any]] = {}  # "server|test" -> row
_servers: dict[str, dict[str, Any]] = {}
_began: float | None = None


def note_server(name: str, **info: Any) -> None:
    """Facts about a server (software, startup seconds, memory, check-server's verdict)."""
    _servers.setdefault(name, {}).update({k: v for k, v in info.items() if v is not None})


def _server_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    value = callspec.params.get("server_name")
    return str(value) if value is not None else None


def _first_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else "")[:limit]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    global _began
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    name = getattr(item, "originalname", item.name)
    server = _server_of(item)
    if name not in TESTS or server is None:
        return
    if _began is None:
        _began = time.monotonic() - report.duration
    rows = TESTS[name]
    for row in rows:
        _results.setdefault(
            f"{server}|{row}", {"server": server, "scenario": row, "test": name, "seconds": 0.0}
        )
    first = _results[f"{server}|{rows[0]}"]
    first["seconds"] = round(first["seconds"] + report.duration, 2)
    notes = [str(v) for k, v in item.user_properties if k == "compat"]
    steps = [str(v) for k, v in item.user_properties if k == "compat_step"]
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        for row in rows:
            _results[f"{server}|{row}"].update(
                status="not supported", note=str(reason).removeprefix("Skipped: ")
            )
    elif report.failed:
        why = _failure(report) if report.when == "call" else f"{report.when}: {_failure(report)}"
        failed_at = next((r for r in rows if r not in steps), rows[-1])
        for row in rows:
            if row in steps:
                _pass(_results[f"{server}|{row}"], notes)
            elif row == failed_at:
                _results[f"{server}|{row}"].update(status="fail", note=why)
            else:
                _results[f"{server}|{row}"].update(
                    status="not reached", note=f"after the failure of {failed_at}"
                )
    elif report.when == "call":
        for row in rows:
            _pass(_results[f"{server}|{row}"], notes if row == rows[0] else [])


def _pass(row: dict[str, Any], notes: list[str]) -> None:
    limited = [n for n in notes if n.startswith("known limit")]
    row.update(status="known limit" if limited else "pass", note="; ".join(notes))


def _failure(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    return _first_line(crash.message if crash is not None else str(report.longreprtext))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _results:
        return
    previous: dict[str, Any] = {}
    if OUTPUT.is_file():
        try:
            previous = json.loads(OUTPUT.read_text())
        except ValueError:
            previous = {}
    results = {f"{r['server']}|{r['scenario']}": r for r in previous.get("results", [])}
    results.update(_results)
    servers = dict(previous.get("servers") or {})
    for name, info in _servers.items():
        servers[name] = {**servers.get(name, {}), **info}
    data = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "suite_seconds": round(time.monotonic() - _began, 1) if _began else None,
        "tests_this_run": len(_results),
        "servers": servers,
        "results": sorted(
            results.values(),
            key=lambda r: (
                r["server"],
                list(SCENARIOS).index(r["scenario"]) if r["scenario"] in SCENARIOS else 99,
            ),
        ),
    }
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- Markdown

SERVER_ORDER = ("sandbox", "medplum", "medplum_atomic", "hapi")
SYMBOL = {
    "pass": "pass",
    "not supported": "not supported",
    "known limit": "known limit",
    "fail": "**FAIL**",
    "not reached": "not reached",
}


def render(data: dict[str, Any]) -> str:
    rows = {(r["server"], r["scenario"]): r for r in data.get("results", [])}
    servers = [s for s in SERVER_ORDER if any(k[0] == s for k in rows)]
    servers += sorted({k[0] for k in rows} - set(servers))
    info = data.get("servers") or {}
    out = [
        "| scenario | " + " | ".join(f"`{s}`" for s in servers) + " |",
        "|---|" + "---|" * len(servers),
    ]
    notes: list[str] = []
    for scenario, label in SCENARIOS.items():
        cells = []
        for server in servers:
            row = rows.get((server, scenario))
            if row is None:
                cells.append("not run")
                continue
            cell = SYMBOL.get(row["status"], row["status"])
            if row.get("note") and row["status"] != "pass":
                notes.append(f"{server} / {label}: {row['note']}")
                cell += f" [{len(notes)}]"
            cells.append(cell)
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append(
        "| `check-server` verdict | "
        + " | ".join(str(info.get(s, {}).get("verdict", "")).replace("|", "/") for s in servers)
        + " |"
    )
    out.append("")
    out.append("| server | software (CapabilityStatement) | startup s | load s | RSS MiB |")
    out.append("|---|---|---|---|---|")
    for server in servers:
        i = info.get(server, {})
        out.append(
            f"| `{server}` | {i.get('software', '')} | {i.get('startup_seconds', '')} | "
            f"{i.get('load_seconds', '')} | {i.get('rss_mib', 'in-process')} |"
        )
    if notes:
        out.append("")
        out.extend(f"{n}. {text}" for n, text in enumerate(notes, 1))
    if data.get("suite_seconds") is not None:
        out.append("")
        out.append(f"Suite time: {data['suite_seconds']} s ({data.get('generated', '')}).")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.interop.compat",
        description="the interop compatibility table (Markdown)",
    )
    parser.add_argument("--json", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if not args.json.is_file():
        print(
            f"{args.json} not found: run `pytest tests/interop/test_scenarios.py` first",
            file=sys.stderr,
        )
        return 1
    sys.stdout.write(render(json.loads(args.json.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
