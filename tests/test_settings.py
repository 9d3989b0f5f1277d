"""Settings: defaults, env over file, and errors that name the key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from labhub.settings import load_secret_key, load_settings


def test_defaults_are_the_embedded_hub(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for key in list(__import__("os").environ):
        if key.startswith("LABHUB_"):
            monkeypatch.delenv(key)
    s = load_settings()
    assert s.bind == "127.0.0.1:8000" and s.backends == ["local"]
    assert s.data_dir == tmp_path / "labhub-data"
    assert s.effective_database_url == f"sqlite+aiosqlite:///{tmp_path / 'labhub-data' / 'labhub.sqlite'}"
    assert set(s.sizes) == {"small", "medium", "large", "gpu"} and s.sizes["gpu"].gpus == 1


def test_env_beats_file_and_cli_beats_env(monkeypatch, tmp_path):
    (tmp_path / "labhub.toml").write_text('bind = "127.0.0.1:9000"\nsession_hours = 2\n[sizes.tiny]\ncpus = 0.5\nmemory_mb = 256\n')
    monkeypatch.setenv("LABHUB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LABHUB_SESSION_HOURS", "3")
    s = load_settings()
    assert s.bind == "127.0.0.1:9000" and s.session_hours == 3 and set(s.sizes) == {"tiny"}
    assert load_settings(bind="0.0.0.0:80").bind == "0.0.0.0:80"


@pytest.mark.parametrize("key, value", [("LABHUB_BIND", "nonsense"), ("LABHUB_RECONCILE_INTERVAL", "-1"),
                                        ("LABHUB_ISOLATION", "maybe")])
def test_bad_values_name_the_setting(monkeypatch, tmp_path, key, value):
    monkeypatch.setenv("LABHUB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError) as info:
        load_settings()
    assert key.removeprefix("LABHUB_").lower() in str(info.value)


def test_secret_key_is_generated_once_and_private(tmp_path):
    key = load_secret_key(tmp_path)
    assert len(key) >= 32 and load_secret_key(tmp_path) == key
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600


def test_backends_accept_a_comma_list_or_json(monkeypatch, tmp_path):
    monkeypatch.setenv("LABHUB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LABHUB_BACKENDS", "local, slurm")
    assert load_settings().backends == ["local", "slurm"]
    monkeypatch.setenv("LABHUB_BACKENDS", '["slurm"]')
    assert load_settings().backends == ["slurm"]
