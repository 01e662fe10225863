"""Settings: defaults, TOML, environment overrides, clear errors, secrets out of repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhirpanel.config import Settings
from fhirpanel.errors import ConfigError


def test_defaults() -> None:
    s = Settings.load(env={})
    assert s.fhir.page_size == 200 and s.fhir.strict_search
    assert s.attribution.pipeline == "pipelines/mgma"
    assert s.risk.hcc_model == "V28"


def test_toml_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "fhirpanel.toml"
    path.write_text(
        '[fhir]\nbase_url = "http://127.0.0.1:1/fhir"\npage_size = 50\n[risk]\nhcc_model = "V24"\n'
    )
    s = Settings.load(
        path, env={"FHIRPANEL_FHIR_PAGE_SIZE": "75", "FHIRPANEL_FHIR_STRICT_SEARCH": "false"}
    )
    assert s.fhir.base_url == "http://127.0.0.1:1/fhir"
    assert s.fhir.page_size == 75  # the environment wins
    assert s.fhir.strict_search is False
    assert s.risk.hcc_model == "V24"


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('log_level = "DEBUG"\n')
    assert Settings.load(env={"FHIRPANEL_CONFIG": str(path)}).log_level == "DEBUG"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[fhir]\npage_sise = 5\n", {}, "unknown setting"),
        ('[risk]\nhcc_model = "V99"\n', {}, "not one of"),
        ("", {"FHIRPANEL_FHIR_PAGE_SIZE": "lots"}, "not a valid int"),
        ("", {"FHIRPANEL_FHIR_VERIFY_TLS": "maybe"}, "not a valid bool"),
        ("[fhir\n", {}, "not valid TOML"),
    ],
)
def test_bad_settings_are_clear_errors(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Settings.load(path, env=env)


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        Settings.load("/nonexistent/fhirpanel.toml", env={})


def test_secrets_are_not_in_repr() -> None:
    s = Settings.load(
        env={"FHIRPANEL_FHIR_TOKEN": "s3cr3t-token", "FHIRPANEL_FHIR_PASSWORD": "hunter2-pass"}
    )
    assert s.fhir.token == "s3cr3t-token"
    assert "s3cr3t-token" not in repr(s) and "hunter2-pass" not in repr(s)


def test_one_log_level_setting_with_a_default_per_process(tmp_path: Path) -> None:
    default = Settings.load(env={})
    assert default.log_level == ""  # empty: the process decides, in one place
    assert default.log_level_for(service=True) == "INFO"  # the worker, the API
    assert default.log_level_for(service=False) == "WARNING"  # a command with a summary
    path = tmp_path / "c.toml"
    path.write_text('log_level = "ERROR"\n')
    from_file = Settings.load(path, env={})
    assert (
        from_file.log_level_for(service=True) == from_file.log_level_for(service=False) == "ERROR"
    )
    from_env = Settings.load(path, env={"FHIRPANEL_LOG_LEVEL": "DEBUG"})  # the environment wins
    assert from_env.log_level_for(service=False) == "DEBUG"
    with pytest.raises(ConfigError, match=r"FHIRPANEL_LOG_LEVEL: .* is not one of"):
        Settings.load(env={"FHIRPANEL_LOG_LEVEL": "verbose"})
