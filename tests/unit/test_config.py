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


# --------------------------------------------------------------------------- server profiles


def test_generic_profile_changes_nothing() -> None:
    from fhirpanel.config import PROFILES

    assert PROFILES["generic"] == {}
    s = Settings.load(env={})
    assert s.fhir.profile == "generic" and s.fhir.read_mode == "population"
    assert s.fhir.patient_batch == 50 and s.writeback.use_transactions


@pytest.mark.parametrize("profile", ["epic", "oracle"])
def test_ehr_profiles_read_by_roster_and_write_one_resource_at_a_time(profile: str) -> None:
    s = Settings.load(env={"FHIRPANEL_FHIR_PROFILE": profile})
    assert s.fhir.read_mode == "roster" and s.fhir.patient_batch == 1
    assert s.fhir.page_size == 100 and s.fhir.encounter_floor == "window"
    assert not s.writeback.use_transactions and not s.writeback.use_conditional_update
    assert s.fhir.roster_poll == ("date" if profile == "epic" else "_lastUpdated")


def test_an_explicit_setting_beats_the_profile(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[fhir]\nprofile = "epic"\npatient_batch = 10\n[writeback]\nbatch_size = 7\n')
    s = Settings.load(path, env={"FHIRPANEL_WRITEBACK_USE_TRANSACTIONS": "true"})
    assert s.fhir.patient_batch == 10  # the file
    assert s.writeback.use_transactions is True  # the environment
    assert s.writeback.batch_size == 7
    assert s.fhir.read_mode == "roster" and s.fhir.page_size == 100  # the profile's


def test_hapi_and_medplum_profiles() -> None:
    hapi = Settings.load(env={"FHIRPANEL_FHIR_PROFILE": "hapi"})
    assert hapi.bulk.max_retry_after == 5.0 and hapi.fhir.read_mode == "population"
    medplum = Settings.load(env={"FHIRPANEL_FHIR_PROFILE": "medplum"})
    assert medplum.writeback.batch_size == 50


def test_an_unknown_profile_is_refused() -> None:
    with pytest.raises(ConfigError, match="not one of"):
        Settings.load(env={"FHIRPANEL_FHIR_PROFILE": "cerner"})


def test_every_profile_names_real_settings() -> None:
    import dataclasses

    from fhirpanel.config import PROFILES

    for choices in PROFILES.values():
        for name in choices:
            section, key = name.split(".")
            fields = {f.name for f in dataclasses.fields(getattr(Settings(), section))}
            assert key in fields, name
