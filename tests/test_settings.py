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


def test_the_hub_is_never_above_its_instances_origins(tmp_path):
    """Instance pages could set cookies for a parent domain: the hub must not live there."""
    from labhub.hub import CookieNames
    from labhub.settings import Settings

    base = {"data_dir": tmp_path}
    assert Settings(**base).apps_domain == "localhost" and Settings(**base).hub_host == "127.0.0.1"
    for public, apps in (("http://localhost:8000", "localhost"), ("https://example.org", "apps.example.org"),
                         ("https://apps.example.org", "apps.example.org"), ("https://x.apps.example.org",
                                                                             "apps.example.org")):
        with pytest.raises(ValidationError, match="apps_domain"):
            Settings(**base, public_url=public, apps_domain=apps)
    ok = Settings(**base, public_url="https://hub.example.org", apps_domain="apps.example.org")
    assert ok.secure_cookies and CookieNames.for_settings(ok).all == (
        "__Host-labhub_session", "__Host-labhub_csrf", "__Host-labhub_origin")
    assert Settings(**base, public_url="http://localhost:8000", origins="path").origins == "path"
    assert CookieNames.for_settings(Settings(**base)).session == "labhub_session"  # plain HTTP: no prefix


def test_trusted_proxies_are_addresses_or_networks(tmp_path, monkeypatch):
    monkeypatch.setenv("LABHUB_TRUSTED_PROXIES", "10.0.0.0/8, ::1")
    assert load_settings(data_dir=tmp_path).trusted_proxies == ["10.0.0.0/8", "::1"]
    monkeypatch.setenv("LABHUB_TRUSTED_PROXIES", "nginx")
    with pytest.raises(ValidationError, match="not an IP address"):
        load_settings(data_dir=tmp_path)
    monkeypatch.delenv("LABHUB_TRUSTED_PROXIES")
    assert load_settings(data_dir=tmp_path).trusted_proxies == []  # nobody by default: instances share loopback
