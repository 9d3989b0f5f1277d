"""Templates: built-ins load; bad site files are reported with file and field; parameters are checked."""

from __future__ import annotations

import pytest

from labhub.catalog import Template, load_catalog


def test_builtin_jupyterlab_loads_without_errors():
    catalog = load_catalog()
    assert catalog.errors == []
    tpl = catalog.get("jupyterlab")
    assert tpl is not None and tpl.kind == "workspace" and tpl.ready_path == "api"
    assert tpl.listen is not None
    # on this machine a private Unix socket; on cluster nodes the port the launcher picks
    assert tpl.render({}, unix_socket=True)[0][-1] == "--ServerApp.sock={socket}"
    port_args = tpl.render({}, unix_socket=False)[0]
    assert "--ServerApp.port={port}" in port_args and not any("{socket}" in a for a in port_args)


def test_invalid_site_templates_are_reported_and_skipped(tmp_path):
    (tmp_path / "good.yaml").write_text("title: Good\ncommand: [echo, hi]\n")
    (tmp_path / "bad-kind.yaml").write_text("title: Bad\nkind: spaceship\ncommand: [echo]\n")
    (tmp_path / "no-command.yaml").write_text("title: Empty\n")
    (tmp_path / "broken.yaml").write_text("title: [unclosed\n")
    (tmp_path / "hours.yaml").write_text("title: H\ncommand: [x]\nhours: {default: 10, max: 2}\n")
    (tmp_path / "ref.yaml").write_text("title: R\ncommand: ['{param:missing}']\n")
    catalog = load_catalog(tmp_path)
    assert set(catalog.templates) == {"jupyterlab", "mlaas4hep", "model-service", "good"}
    errors = "\n".join(catalog.errors)
    assert "bad-kind.yaml: kind:" in errors
    assert "no-command.yaml: command:" in errors
    assert "broken.yaml: cannot read" in errors
    assert "hours.yaml: hours:" in errors and "must not exceed max" in errors
    assert "ref.yaml" in errors and "undefined parameter 'missing'" in errors


def test_missing_site_directory_is_an_error_not_a_crash(tmp_path):
    catalog = load_catalog(tmp_path / "nope")
    assert "jupyterlab" in catalog.templates
    assert catalog.errors and "does not exist" in catalog.errors[0]


@pytest.fixture
def tpl() -> Template:
    return Template.model_validate({
        "name": "train", "title": "Train", "kind": "job",
        "command": ["python", "train.py", "--epochs={param:epochs}", "{param:model}"],
        "params": [
            {"name": "epochs", "type": "integer", "min": 1, "max": 100, "default": 10},
            {"name": "model", "type": "choice", "choices": ["cnn", "mlp"], "required": True},
            {"name": "note", "type": "string", "pattern": "[a-z ]*", "max_length": 20},
        ],
    })


def test_params_are_validated_field_by_field(tpl):
    values, errors = tpl.check_params({"epochs": 0, "model": "rnn", "note": "x" * 21, "bogus": 1})
    assert errors == {"epochs": "must be at least 1", "model": "must be one of: cnn, mlp",
                      "note": "must be at most 20 characters", "bogus": "unknown parameter"}
    values, errors = tpl.check_params({"model": "cnn"})
    assert errors == {} and values == {"epochs": 10, "model": "cnn"}
    assert tpl.check_params({})[1] == {"model": "required"}
    assert tpl.check_params({"epochs": True, "model": "cnn"})[1] == {"epochs": "must be an integer"}


def test_render_fills_argv_elements_without_a_shell(tpl):
    command, _ = tpl.render({"epochs": 5, "model": "cnn; rm -rf /"})
    assert command == ["python", "train.py", "--epochs=5", "cnn; rm -rf /"]  # one argv element, never parsed


def test_builtin_mlaas4hep_is_a_job_reading_a_folder_in_the_train_runtime():
    tpl = load_catalog().get("mlaas4hep")
    assert tpl is not None and tpl.kind == "job" and tpl.input == "required" and tpl.runtime == "train"
    assert tpl.ready_path is None and tpl.listen is None  # a job is ready once it runs
    values, errors = tpl.check_params({"fout": "higgs"})
    assert errors == {} and values["files"] == "files.txt" and values["fout"] == "higgs"
    _, bad = tpl.check_params({"fout": "../x", "model": "/etc/passwd"})
    assert set(bad) == {"fout", "model"}


def test_only_jobs_read_folders():
    from pydantic import ValidationError

    from labhub.catalog.schema import Template

    with pytest.raises(ValidationError, match="only job templates read an input folder"):
        Template(name="x", title="X", command=["true"], input="required")
    job = Template(name="j", title="J", kind="job", command=["true"], input="optional")
    assert job.ready_path is None
