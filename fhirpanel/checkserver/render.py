"""The check as a table on the terminal (`--json` prints `ServerCheck.as_dict` instead)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from fhirpanel.checkserver.model import ServerCheck, Status

_MARKS: dict[Status, str] = {"yes": "yes", "no": "NO", "partial": "partly", "unknown": "?"}


def render(check: ServerCheck, console: Console) -> None:
    console.print(
        f"[bold]{check.url}[/bold]: {check.software}, FHIR {check.fhir_version} ({check.release})",
        highlight=False,
    )
    table = Table(show_lines=False, pad_edge=False)
    table.add_column("area")
    table.add_column("capability")
    table.add_column("ok", justify="center")
    table.add_column("server says")
    table.add_column("fhirpanel")
    previous = ""
    for f in check.findings:
        style = (
            "red"
            if f.blocking
            else "yellow"
            if f.status in ("no", "partial")
            else "dim"
            if f.status == "unknown"
            else ""
        )
        mark = _MARKS[f.status] + (" (required)" if f.blocking else "")
        table.add_row(
            f.area if f.area != previous else "",
            f.name,
            mark,
            f.server,
            f.fhirpanel,
            style=style or None,
        )
        previous = f.area
    console.print(table)
    if check.recommendation is not None:
        rec = check.recommendation
        console.print(
            f"Recommended: profile {rec.profile} (fhir.profile), read mode {rec.read_mode}: "
            f"{rec.source}",
            highlight=False,
            soft_wrap=True,
        )
    colour = "green" if check.ok else "red"
    console.print(f"[{colour}]{check.verdict()}[/{colour}]", highlight=False)
