"""The Dockerfile and fhirpanel.example.toml, checked against the project so they cannot drift.

No Docker engine runs here: the Dockerfile is parsed, and what it names (files it copies, commands
it runs, settings it sets, the health check) is checked to exist in the project.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import typing
from typing import Any

import pytest

from fhirpanel.cli import build_parser
from fhirpanel.config import ENV_PREFIX, Settings
from tests.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
EXAMPLE = ROOT / "fhirpanel.example.toml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def args_of(name: str) -> list[str]:
    return [rest for keyword, rest in instructions() if keyword == name]


def subcommands() -> set[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("the fhirpanel parser has no subcommands")


def env_values() -> dict[str, str]:
    values: dict[str, str] = {}
    for rest in args_of("ENV"):
        for item in shlex.split(rest):
            name, _, value = item.partition("=")
            values[name] = value
    return values


def settings_sections() -> list[tuple[str, type[Any]]]:
    hints = typing.get_type_hints(Settings)
    return [
        (f.name, hints[f.name])
        for f in dataclasses.fields(Settings)
        if dataclasses.is_dataclass(hints[f.name])
    ]


def all_env_names() -> set[str]:
    names = {f"{ENV_PREFIX}{f.name.upper()}" for f in dataclasses.fields(Settings)}
    for section, cls in settings_sections():
        names |= {
            f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}" for f in dataclasses.fields(cls)
        }
    return names | {f"{ENV_PREFIX}CONFIG"}


# --------------------------------------------------------------------------- Dockerfile


def test_slim_python_311_base_and_a_non_root_user() -> None:
    bases = [rest.split()[0] for rest in args_of("FROM")]
    assert bases and all(re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", b) for b in bases)
    users = args_of("USER")
    assert users, "the image must not run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert re.search(rf"useradd\b.*--uid {user}\b", " ".join(args_of("RUN")))


def test_copy_sources_exist_and_reach_the_build_context() -> None:
    ignore = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    allowlist = ignore[0] == "*"
    copied: list[str] = []
    for rest in args_of("COPY"):
        if rest.startswith("--from="):
            continue  # from another build stage, not the project
        *sources, _dest = [p for p in rest.split() if not p.startswith("--")]
        copied += sources
    assert {"pyproject.toml", "fhirpanel/", "mappings/"} <= set(copied)
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the project"
        if allowlist:
            assert f"!{source.rstrip('/')}" in {i.rstrip("/") for i in ignore}, (
                f"COPY {source}: excluded by .dockerignore"
            )
    for private in (".venv", ".git", "var", "tests"):
        if not allowlist:
            assert private in ignore


def documented_commands() -> set[str]:
    """`fhirpanel <command>` in the Dockerfile's CMD and in its `docker run` examples."""
    cmd = json.loads(args_of("CMD")[-1])
    text = DOCKERFILE.read_text(encoding="utf-8")
    runs = re.findall(r"docker run .*?\bfhirpanel fhirpanel ([a-z][a-z-]*)", text, flags=re.S)
    return {cmd[1], *runs}


def test_the_two_process_commands() -> None:
    assert json.loads(args_of("CMD")[-1]) == ["fhirpanel", "serve"]  # the default: the API
    assert {"serve", "worker", "check-server"} <= documented_commands()


def test_process_commands_are_cli_subcommands() -> None:
    # `serve` and `worker` come with the API and the scheduler: this fails until both exist.
    missing = documented_commands() - subcommands()
    assert not missing, f"the Dockerfile runs fhirpanel {sorted(missing)}: not in the CLI"


def test_health_check_hits_healthz_on_the_exposed_api_port() -> None:
    (check,) = args_of("HEALTHCHECK")
    command = json.loads(check[check.index("CMD") + 3 :].strip())
    assert command[0] == "python" and "urllib.request" in command[-1]
    assert "/healthz" in command[-1] and "curl" not in check
    env = env_values()
    port = env["FHIRPANEL_API_PORT"]
    assert f"'FHIRPANEL_API_PORT', '{port}'" in command[-1]
    assert args_of("EXPOSE") == [port]
    assert env["FHIRPANEL_API_HOST"] == "0.0.0.0"  # noqa: S104 - inside the container only


def test_the_api_answers_the_health_check_path() -> None:
    api_sources = "\n".join(
        p.read_text(encoding="utf-8") for p in (ROOT / "fhirpanel" / "api").rglob("*.py")
    )
    assert "/healthz" in api_sources, "the Dockerfile's HEALTHCHECK needs /healthz in fhirpanel/api"


def test_environment_names_real_settings_and_the_volume() -> None:
    env = env_values()
    settings = {name for name in env if name.startswith(ENV_PREFIX)}
    assert settings <= all_env_names(), settings - all_env_names()
    volumes = json.loads(args_of("VOLUME")[-1])
    assert volumes == ["/var/lib/fhirpanel"]
    assert env["FHIRPANEL_DATABASE_URL"] == "sqlite:////var/lib/fhirpanel/fhirpanel.db"
    mappings_copy = [rest.split()[-1] for rest in args_of("COPY") if rest.split()[0] == "mappings/"]
    assert [p.rstrip("/") for p in mappings_copy] == [env["FHIRPANEL_MAPPINGS_DIR"]]


# --------------------------------------------------------------------------- example settings


def example_sections() -> dict[str, list[str]]:
    """Lines per TOML table (the top level is ""), comments included."""
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        header = re.fullmatch(r"\[(\w+)\]", line.strip())
        if header:
            current = header.group(1)
            sections[current] = []
        else:
            sections[current].append(line)
    return sections


def test_example_loads_and_holds_the_defaults() -> None:
    assert Settings.load(EXAMPLE, env={}) == Settings()


@pytest.mark.parametrize("section", ["", *[name for name, _ in settings_sections()]])
def test_example_documents_every_setting(section: str) -> None:
    cls: Any = Settings if not section else dict(settings_sections())[section]
    lines = example_sections().get(section)
    assert lines is not None, f"fhirpanel.example.toml has no [{section}] table"
    text = "\n".join(lines)
    tables = {name for name, _ in settings_sections()}
    for f in dataclasses.fields(cls):
        if not section and f.name in tables:
            continue  # a table of its own, checked by its own case
        active = re.search(rf"^{f.name}\s*=", text, flags=re.M)
        commented = re.search(rf"^#\s*{f.name}\s*=", text, flags=re.M)
        where = f"[{section}] {f.name}" if section else f.name
        assert active or commented, f"fhirpanel.example.toml does not mention {where}"
        env_name = (
            f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"
            if section
            else f"{ENV_PREFIX}{f.name.upper()}"
        )
        assert env_name in text, f"{where}: its variable {env_name} is not named"
        if not f.repr:  # a secret: shown only as an environment or file reference
            assert not active, f"{where} is a secret: leave it commented out"
