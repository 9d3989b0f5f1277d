"""Identity settings: validated at start, with messages that name the key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from labhub.settings import Settings


def make(tmp_path, **values):
    return Settings(data_dir=tmp_path, **values)


def test_defaults_are_closed_sign_up_with_approval(tmp_path):
    s = make(tmp_path)
    assert s.signup == "closed" and s.approval_required and s.oidc == {} and s.smtp.host is None


def test_environment_forms(tmp_path, monkeypatch):
    monkeypatch.setenv("LABHUB_APPROVAL_EMAILS", "pi@lab.example, ops@lab.example")
    monkeypatch.setenv("LABHUB_SMTP__HOST", "smtp.lab.example")
    monkeypatch.setenv("LABHUB_OIDC__KC__PRESET", "keycloak")
    monkeypatch.setenv("LABHUB_OIDC__KC__SERVER", "https://sso.lab.example")
    monkeypatch.setenv("LABHUB_OIDC__KC__REALM", "lab")
    monkeypatch.setenv("LABHUB_OIDC__KC__CLIENT_ID", "labhub")
    monkeypatch.setenv("LABHUB_OIDC__KC__REQUIRED_GROUPS", '["lab"]')
    s = make(tmp_path)
    assert s.approval_emails == ["pi@lab.example", "ops@lab.example"]
    assert s.smtp.host == "smtp.lab.example" and s.oidc["kc"].required_groups == ["lab"]


@pytest.mark.parametrize("values, words", [
    ({"approval_emails": ["not-an-address"]}, "not an e-mail address"),
    ({"oidc": {"Bad Name": {"client_id": "x"}}}, "provider name"),
    ({"oidc": {"kc": {"preset": "keycloak", "client_id": "x"}}}, "oidc.kc.server, oidc.kc.realm"),
    ({"oidc": {"x": {"discovery_url": "http://idp.example/.well-known/openid-configuration", "client_id": "x"}}},
     "https://"),
    ({"oidc": {"x": {"preset": "unknown", "client_id": "x"}}}, "preset"),
    ({"signup": "maybe"}, "signup"),
])
def test_bad_identity_settings_name_the_problem(tmp_path, values, words):
    with pytest.raises(ValidationError) as caught:
        make(tmp_path, **values)
    assert words in str(caught.value)
