"""Configuration precedence and the messages a bad setting produces."""

from __future__ import annotations

from pathlib import Path

import pytest

from shortdrama_worker.settings import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("SHORTDRAMA_"):
            monkeypatch.delenv(name)


def test_toml_overrides_defaults_and_env_overrides_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('[gpu]\nslots = 2\n[queues]\ngpu_queue = "from_toml"\n')
    monkeypatch.setenv("SHORTDRAMA_GPU__SLOTS", "3")
    settings = load_settings(config)
    assert settings.gpu.slots == 3  # env wins
    assert settings.queues.gpu_queue == "from_toml"  # TOML beats the default
    assert settings.queues.cpu_queue == "cpu_tasks_queue"  # default


def test_config_path_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "w.toml"
    config.write_text("[api]\nport = 9001\n")
    monkeypatch.setenv("SHORTDRAMA_CONFIG", str(config))
    assert load_settings().api.port == 9001


def test_a_bad_setting_is_named(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[gpu]\nslots = 0\n")
    with pytest.raises(
        ConfigError, match=r"gpu\.slots: Input should be greater than or equal to 1"
    ):
        load_settings(config)


def test_an_unknown_setting_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "typo.toml"
    config.write_text("[queues]\nvisiblity_timeout_s = 30\n")
    with pytest.raises(ConfigError, match=r"queues\.visiblity_timeout_s: Extra inputs"):
        load_settings(config)


def test_heartbeat_must_be_shorter_than_visibility(tmp_path: Path) -> None:
    config = tmp_path / "hb.toml"
    config.write_text(
        "[queues]\nvisibility_timeout_s = 30\n[consumer]\nheartbeat_interval_s = 40\n"
    )
    with pytest.raises(ConfigError, match="heartbeat_interval_s must be shorter"):
        load_settings(config)


def test_missing_file_is_named() -> None:
    with pytest.raises(ConfigError, match=r"config file not found: /nope\.toml"):
        load_settings("/nope.toml")


def test_secrets_never_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHORTDRAMA_AWS__SECRET_ACCESS_KEY", "hunter2")
    settings = load_settings()
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in settings.model_dump_json()
    assert settings.aws.secret_access_key is not None
    assert settings.aws.secret_access_key.get_secret_value() == "hunter2"


@pytest.mark.parametrize("name", ["local.toml", "worker.example.toml"])
def test_shipped_config_files_load(name: str) -> None:
    load_settings(REPO / "config" / name)


def test_every_handler_section_of_the_example_is_valid_for_its_handler() -> None:
    from shortdrama_worker.plugins import HandlerRegistry

    settings = load_settings(REPO / "config" / "worker.example.toml")
    registry = HandlerRegistry.discover()
    assert set(settings.handlers.options) >= {"face_mask", "face_swap", "comfy_camera_angle"}
    for kind, section in settings.handlers.options.items():
        model = registry.by_kind[kind].cls.settings_model
        assert model is not None, kind
        model.model_validate(section)  # raises, naming the key, if the example drifts
