"""Client commands against a running hub's REST API, through :mod:`labhub.client`.

The hub URL and token come from ``LABHUB_URL`` / ``LABHUB_TOKEN``, else from
the file ``labhub login`` writes (``~/.config/labhub/client.json``, mode 0600).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from labhub.client import Hub, Progress


@contextlib.contextmanager
def _hub() -> Iterator[Hub]:
    """The client, with every error answer printed (its fields too) and turned into exit code 1."""
    from labhub.client import Hub, HubError  # here, not at import: `labhub serve` never needs httpx's client

    try:
        with Hub() as hub:
            yield hub
    except HubError as exc:
        typer.echo(f"error ({exc.status}): {exc.detail}" if exc.status != 401 or exc.fields else f"error: {exc.detail}",
                   err=True)
        for key, msg in exc.fields.items():
            typer.echo(f"  {key}: {msg}", err=True)
        raise typer.Exit(2 if exc.status == 401 and "not logged in" in exc.detail else 1) from None


@contextlib.contextmanager
def _progress(what: str) -> Iterator[Progress]:
    """A progress bar with rate and ETA on a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _params(items: list[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            typer.echo(f"error: --param {item!r}: expected KEY=VALUE", err=True)
            raise typer.Exit(2)
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def login(
    url: Annotated[str, typer.Option(prompt="Hub URL", help="e.g. http://127.0.0.1:8000")],
    token: Annotated[str, typer.Option(prompt="API token", hide_input=True,
                                       help="from the Tokens page or `labhub token issue`")],
) -> None:
    """Save the hub URL and an API token for the other client commands."""
    from labhub.client import Hub, HubError, save_credentials

    try:
        with Hub(url, token) as hub:
            me = hub.me()
    except HubError as exc:
        typer.echo(f"error ({exc.status}): {exc.detail}", err=True)
        raise typer.Exit(1) from None
    save_credentials(url, token)
    typer.echo(f"logged in to {url} as {me['name']}")


def _show_event(event: dict[str, Any]) -> None:
    typer.echo(f"  {event['status']}: {event['message'].splitlines()[0] if event['message'] else ''}")


RESOURCE_KEYS = ("cpus", "memory_mb", "gpus")


def _resources(option: str, text: str) -> dict[str, Any]:
    """``cpus=2,memory_mb=4096,gpus=1`` as a dict (numbers as numbers; the hub checks the rest)."""
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            typer.echo(f"error: {option} {text!r}: expected {','.join(f'{k}=N' for k in RESOURCE_KEYS)}", err=True)
            raise typer.Exit(2)
        key, value = key.strip().replace("-", "_"), value.strip()
        try:
            number = float(value)
            values[key] = int(number) if number.is_integer() and "." not in value else number
        except ValueError:
            values[key] = value  # the hub names the field and why
    if not values:
        typer.echo(f"error: {option}: expected {','.join(f'{k}=N' for k in RESOURCE_KEYS)}", err=True)
        raise typer.Exit(2)
    return values


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _queued_line(inst: dict[str, Any], *, yours: bool = True) -> str:
    """"queued: waiting for 1 GPU: 0 free on the local backend; you are 2nd in the queue"."""
    line = f"queued: {inst['message']}"
    if inst.get("queue_position"):
        line += f"; {'you are' if yours else 'it is'} {_ordinal(inst['queue_position'])} in the queue"
    return line


def launch(
    template: str,
    name: Annotated[str, typer.Option("--name", "-n", help="instance name (a-z, 0-9, '-')")],
    size: Annotated[str | None, typer.Option("--size", "-s", help="a preset, or custom (with --custom)")] = None,
    hours: Annotated[float | None, typer.Option("--hours")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="KEY=VALUE (JSON values allowed)")] = None,
    custom: Annotated[str | None, typer.Option("--custom", metavar="cpus=N,memory_mb=N,gpus=N",
                                               help="a custom size (implies --size custom), where the template or "
                                                    "your group allows one")] = None,
    for_user: Annotated[str | None, typer.Option("--for", metavar="USER",
                                                 help="admins: launch it for USER (theirs, on their quota)")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait until it runs (or fails)")] = False,
) -> None:
    """Launch TEMPLATE as an instance (one that does not fit yet waits in the queue and starts by itself)."""
    resources = _resources("--custom", custom) if custom is not None else None
    with _hub() as hub:
        inst = hub.launch(template, name, size=size, hours=hours, params=_params(param), custom=resources,
                          owner=for_user)
        label = inst["name"] if for_user is None else f"{inst['owner']}/{inst['name']}"
        typer.echo(f"{label}: {inst['status']} ({inst['id']})")
        if inst["status"] == "queued":
            typer.echo(_queued_line(inst, yours=for_user is None))
        if wait:
            inst = hub.wait(inst["id"], until={"running"}, on_event=_show_event)
            at = f" at {inst['url']}" if inst["status"] == "running" else ""
            typer.echo(f"{label}: {inst['status']}{at}")
            if inst["status"] != "running":
                typer.echo(inst["message"], err=True)
                raise typer.Exit(1)


def submit(
    template: str,
    input_folder: Annotated[str | None, typer.Option("--input", "-i", help="the folder the job reads")] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="job name (default: TEMPLATE-N)")] = None,
    size: Annotated[str | None, typer.Option("--size", "-s")] = None,
    hours: Annotated[float | None, typer.Option("--hours", help="time limit")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="KEY=VALUE (JSON values allowed)")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait until it has ended; exit 1 unless it succeeded")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f",
                                         help="print its log while it runs (implies --wait)")] = False,
) -> None:
    """Submit a job from TEMPLATE (a job template, e.g. mlaas4hep)."""
    with _hub() as hub:
        inst = hub.submit(template, input=input_folder, name=name, size=size, hours=hours, params=_params(param))
        typer.echo(f"{inst['name']}: {inst['status']} ({inst['id']})")
        if follow:
            for chunk in hub.log(inst["id"]):
                sys.stdout.write(chunk)
                sys.stdout.flush()
        if wait or follow:
            inst = hub.wait(inst["id"], on_event=None if follow else _show_event)
            typer.echo(f"{inst['name']}: {inst['status']}" + (f" (exit code {inst['exit_code']})"
                                                             if inst.get("exit_code") is not None else ""))
            if inst["status"] != "succeeded":
                typer.echo(inst["message"].split("\n--- last log lines ---")[0], err=True)
                raise typer.Exit(1)


def ls(all_users: Annotated[bool, typer.Option("--all", help="admins: every user's instances")] = False,
       json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List your instances."""
    with _hub() as hub:
        rows = hub.instances(all_users=all_users)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'NAME':<20} {'OWNER':<12} {'TEMPLATE':<14} {'SIZE':<8} {'STATUS':<10} {'SERVICE':<24} URL")
    for r in rows:
        typer.echo(f"{r['name']:<20} {r['owner']:<12} {r['template']:<14} {r['size']:<8} {r['status']:<10} "
                   f"{_service_notes(r) or '-':<24} {r['url']}")


def _service_notes(row: dict[str, Any]) -> str:
    """What `ls` says of a service besides its status: public, sleeps when idle."""
    if row["kind"] != "service":
        return ""
    notes = ["public" if row.get("public") else "private"]
    if row.get("min_replicas") == 0:
        notes.append("sleeps when idle")
    if (row.get("replicas") or 1) > 1:
        notes.append(f"{row['replicas']} replicas")
    return ", ".join(notes)


def stop(name: str) -> None:
    """Stop your instance NAME."""
    with _hub() as hub:
        inst = hub.stop(hub.find(name)["id"])
    typer.echo(f"{inst['name']}: {inst['status']}")


def extend(name: str, hours: Annotated[float, typer.Option("--hours", help="hours more (within the template's "
                                                                          "maximum)")]) -> None:
    """Give your instance NAME more time before it expires."""
    with _hub() as hub:
        inst = hub.extend(name, hours)
    typer.echo(f"{inst['name']}: {inst['hours']:g} h in all, expires at {inst['expires_at']}")


def restart(
    name: str,
    size: Annotated[str | None, typer.Option("--size", "-s", help="the new size: a preset, or custom")] = None,
    custom: Annotated[str | None, typer.Option("--custom", metavar="cpus=N,memory_mb=N,gpus=N",
                                               help="a custom size (implies --size custom)")] = None,
) -> None:
    """Restart your instance NAME with a new size (it stops and starts again under its name)."""
    if size is None and custom is None:
        raise typer.BadParameter("give --size or --custom", param_hint="--size")
    resources = _resources("--custom", custom) if custom is not None else None
    with _hub() as hub:
        inst = hub.restart(name, size or "custom", custom=resources)
    typer.echo(f"{inst['name']}: {inst['status']} with size {inst['size']} ({inst['id']})")
    if inst["status"] == "queued":
        typer.echo(_queued_line(inst, yours=True))


OPEN_TO_WORDS = {"": "", "users": "open to every user, logged in", "anyone": "open to anyone, without logging in"}


def _instance(hub: Hub, name: str) -> dict[str, Any]:
    """NAME (yours), or OWNER/NAME (admins: someone else's)."""
    from labhub.client import TERMINAL, HubError

    owner, _, rest = name.rpartition("/")
    if not owner:
        return hub.find(name)
    rows = hub.instances(name=rest, owner=owner)
    if not rows:
        raise HubError(404, f"{owner} has no instance named {rest!r}")
    return ([r for r in rows if r["status"] not in TERMINAL] or rows)[0]


def share(
    name: Annotated[str, typer.Argument(help="your instance (admins: OWNER/NAME)")],
    user: Annotated[list[str] | None, typer.Option("--user", "-u", help="share with this user")] = None,
    group: Annotated[list[str] | None, typer.Option("--group", "-g", help="share with this group's members")] = None,
    revoke: Annotated[bool, typer.Option("--revoke", help="revoke these shares instead")] = False,
    open_to: Annotated[str | None, typer.Option("--open-to", metavar="users|anyone|none",
                                                help="admins: open the workspace to every user, to anyone "
                                                     "(no login), or to neither")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Share NAME with users or groups (or --revoke), then list who besides its owner may open it."""
    with _hub() as hub:
        inst = _instance(hub, name)
        if open_to is not None:
            if open_to not in ("users", "anyone", "none"):
                typer.echo(f"error: --open-to: expected users, anyone or none, not {open_to!r}", err=True)
                raise typer.Exit(2)
            hub.set_access(inst["id"], "" if open_to == "none" else open_to)
        for kind, names in (("user", user or []), ("group", group or [])):
            for who in names:
                if revoke:
                    hub.unshare(inst["id"], **{kind: who})
                    typer.echo(f"{inst['name']}: no longer shared with {who if kind == 'user' else 'group ' + who}")
                else:
                    hub.share(inst["id"], **{kind: who})
        access = hub.access(inst["id"])
    if json_out:
        typer.echo(json.dumps(access, indent=2))
        return
    label = f"{inst['owner']}/{inst['name']}"
    if access["open_to"]:
        typer.echo(f"{label}: {OPEN_TO_WORDS[access['open_to']]}")
    if not access["shares"]:
        if not access["open_to"]:
            typer.echo(f"{label} is not shared: only {inst['owner']} and admins may open it")
        return
    typer.echo(f"{'ID':<6} {'WITH':<28} {'SHARED BY':<14} SINCE")
    for s in access["shares"]:
        whom = s["user"] or f"group {s['group']}"
        typer.echo(f"{s['id']:<6} {whom:<28} {s['created_by']:<14} {s['created_at']}")
    typer.echo(f"open it at {inst['url']}")


def unshare(
    name: Annotated[str, typer.Argument(help="your instance (admins: OWNER/NAME)")],
    user: Annotated[list[str] | None, typer.Option("--user", "-u")] = None,
    group: Annotated[list[str] | None, typer.Option("--group", "-g")] = None,
) -> None:
    """Revoke NAME's shares with these users or groups (at once); the same as `share --revoke`."""
    if not (user or group):
        typer.echo("error: name a --user or a --group", err=True)
        raise typer.Exit(2)
    share(name, user=user, group=group, revoke=True, open_to=None, json_out=False)


def logs(name: str, follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing while it runs")] = False,
         tail: Annotated[int, typer.Option(help="without --follow: number of lines")] = 200) -> None:
    """Print NAME's output (with --follow, as it is written, until it has ended)."""
    with _hub() as hub:
        inst = hub.find(name)
        if follow:
            for chunk in hub.log(inst["id"]):
                sys.stdout.write(chunk)
                sys.stdout.flush()
            return
        sys.stdout.write(_text(hub.http.get(f"/instances/{inst['id']}/logs", params={"tail": tail})))


def _text(resp: Any) -> str:
    from labhub.client import _check

    return _check(resp)


def events(name: str,
           follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events")] = False) -> None:
    """Print NAME's events."""
    with _hub() as hub:
        for e in hub.events(hub.find(name)["id"], follow=follow):
            typer.echo(f"{e['at']}  {e['status']:<10} {e['message']}")


def upload(
    source: Annotated[Path, typer.Argument(help="a directory, an archive (tar.gz, tar, zip) or a file",
                                           exists=True, readable=True)],
    name: Annotated[str, typer.Option("--name", "-n", help="the folder to upload into (created if needed)")],
    strip_top: Annotated[bool, typer.Option("--strip-top",
                                            help="an archive of one top directory: its contents")] = False,
) -> None:
    """Upload inputs into a folder (a directory is sent as one tar.gz, made while it is sent)."""
    with _hub() as hub, _progress(f"uploading {source.name}") as progress:
        result = hub.upload(source, folder=name, progress=progress, strip_top=strip_top)
    folder = result["folder"]
    typer.echo(f"{folder['name']}: {folder['files']} files, {_size(folder['bytes'])} "
               f"(added {result['added_files']} files, {_size(result['added_bytes'])})")
    for line in result["skipped"]:
        typer.echo(f"  skipped {line}", err=True)


def folders(name: Annotated[str | None, typer.Argument(help="show this folder's files")] = None,
            delete: Annotated[bool, typer.Option("--delete", help="delete the folder")] = False,
            json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List your folders, or one folder's files."""
    with _hub() as hub:
        if name is not None and delete:
            hub.delete_folder(name)
            typer.echo(f"deleted folder {name}")
            return
        data: Any = hub.folder(name) if name is not None else hub.folders()
    if json_out:
        typer.echo(json.dumps(data, indent=2))
    elif name is None:
        typer.echo(f"{'NAME':<24} {'FILES':>7} {'SIZE':>10}  UPDATED")
        for f in data:
            typer.echo(f"{f['name']:<24} {f['files']:>7} {_size(f['bytes']):>10}  {f['updated_at']}")
    else:
        for item in data["items"]:
            typer.echo(f"{_size(item['size']):>10}  {item['path']}")
        if data["truncated"]:
            typer.echo("  (more files not listed)", err=True)


def download(
    name: Annotated[str, typer.Argument(help="the job (name or id)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="directory to put the artifacts in")] = Path("."),
    path: Annotated[str | None, typer.Option("--path", help="only this artifact")] = None,
) -> None:
    """Download a job's artifacts (all of them, or one) into a directory."""
    with _hub() as hub:
        inst = hub.find(name)
        target = output / inst["name"] if path is None else output
        with _progress(f"downloading {inst['name']}") as progress:
            where = hub.download(inst["id"], target, path=path, progress=progress)
    typer.echo(f"saved to {where}")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


# -- services ---------------------------------------------------------------------------------
service_app = typer.Typer(help="Your services: who may call them, whether they sleep, how they are doing.",
                          no_args_is_help=True)


def deploy(
    source: Annotated[str, typer.Argument(help="JOB (its only model), JOB/PATH (one of its artifacts), "
                                               "folder:FOLDER/PATH, or a local file (uploaded first)")],
    name: Annotated[str | None, typer.Option("--name", "-n", help="the service's name (default: the model's)")] = None,
    size: Annotated[str | None, typer.Option("--size", "-s")] = None,
    hours: Annotated[float | None, typer.Option("--hours", help="how long it runs")] = None,
    public: Annotated[bool, typer.Option("--public", help="anyone may call it without a token (rate-limited)")] = False,
    sleep: Annotated[bool, typer.Option("--sleep-when-idle", help="no process while idle; the next request "
                                                                  "wakes it")] = False,
    replicas: Annotated[int | None, typer.Option("--replicas", help="processes serving it, each of the size")] = None,
    folder: Annotated[str, typer.Option("--folder", help="the folder a local file is uploaded into")] = "models",
    wait: Annotated[bool, typer.Option("--wait", help="wait until it serves (or fails)")] = False,
) -> None:
    """Serve a model (a job's artifact or a file) as an HTTP endpoint; print how to call it.

    A SOURCE that is a file here is uploaded into --folder first; a job's name alone means its only .keras, .onnx or
    .skops artifact."""
    from labhub.client import MODEL_SUFFIXES

    local = Path(source) if Path(source).is_file() else None
    if local is not None and not local.name.endswith(MODEL_SUFFIXES):
        typer.echo(f"warning: {local.name} is not {', '.join(MODEL_SUFFIXES)}: the service may not load it", err=True)
    with _hub() as hub:
        if local is not None:
            with _progress(f"uploading {local.name}") as progress:
                model = hub.model_reference(local, folder=folder, progress=progress)
            typer.echo(f"uploaded {local} as {model}")
        else:
            model = hub.model_reference(source)
        inst = hub.deploy(model, name or _name_of(model), size=size, hours=hours, public=public,
                          sleep_when_idle=sleep, replicas=replicas)
        typer.echo(f"{inst['name']}: {inst['status']} ({inst['id']}), serving {model}")
        served = None
        if wait:
            inst = hub.wait(inst["id"], until={"running"}, on_event=_show_event)
            typer.echo(f"{inst['name']}: {inst['status']}")
            if inst["status"] != "running":
                typer.echo(inst["message"].split("\n--- last log lines ---")[0], err=True)
                raise typer.Exit(1)
            served = _first_model(hub, inst["id"])
    _how_to_call(inst, served or (_stem(model), None))


def _stem(model: str) -> str:
    """The model's name in the service: its file's name without the suffix."""
    return PurePosixPath(model.removeprefix("folder:")).stem


def _name_of(model: str) -> str:
    """A service name from the model's file name (``higgs.keras`` -> ``higgs``)."""
    name = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]+", "-", _stem(model).lower()))[:63].strip("-")
    return name or "model"


def _first_model(hub: Hub, instance_id: str) -> tuple[str, list[str] | None] | None:
    """The first model a running service reports, and the keys its /json takes."""
    from labhub.client import HubError

    try:
        models = hub.service(instance_id)["models"]
    except HubError:
        return None
    return _first_of(models)


def _first_of(models: list[dict[str, Any]] | None) -> tuple[str, list[str] | None] | None:
    if not models or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,127}", str(models[0]["name"])):
        return None  # the calls name it unquoted in a URL: only a plain name (its owner names a model)
    keys = models[0].get("keys")
    return str(models[0]["name"]), [str(k) for k in keys] if isinstance(keys, list) and keys else None


def _how_to_call(inst: dict[str, Any], model: tuple[str, list[str] | None]) -> None:
    from labhub.client import call_examples

    typer.echo(f"\nURL: {inst['url']}")
    public = bool(inst.get("public"))
    typer.echo("Public: anyone may call it, rate-limited." if public else
               "Callers send a token: TOKEN=<an API token with the infer scope, from the Tokens page>")
    titles = {"v2": "KServe v2 (Open Inference Protocol)", "v1": "TensorFlow Serving", "tfaas": "TFaaS"}
    for key, text in call_examples(inst["url"], model[0], public=public, keys=model[1]).items():
        typer.echo(f"\n{titles[key]}:\n{text}")


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        typer.echo(f"error: expected on or off, not {value!r}", err=True)
        raise typer.Exit(2)
    return value == "on"


def _service(hub: Hub, name: str) -> dict[str, Any]:
    from labhub.client import HubError

    inst = hub.find(name)
    if inst["kind"] != "service":
        raise HubError(422, f"{name!r} is a {inst['kind']}, not a service")
    return inst


@service_app.command("public")
def service_public(name: str, state: Annotated[str, typer.Argument(metavar="on|off")]) -> None:
    """Make your service NAME public (on: anyone may call its inference routes, rate-limited) or private."""
    with _hub() as hub:
        inst = hub.change_service(_service(hub, name)["id"], public=_on_off(state))
    typer.echo(f"{inst['name']} is " + ("public: anyone may call its inference routes (rate-limited)"
                                        if inst["public"] else "private: callers need a token"))


@service_app.command("sleep")
def service_sleep(name: str, state: Annotated[str, typer.Argument(metavar="on|off")]) -> None:
    """Let your service NAME sleep when idle (on: the next request wakes it) or keep it running (off)."""
    with _hub() as hub:
        inst = hub.change_service(_service(hub, name)["id"], sleep_when_idle=_on_off(state))
    typer.echo(f"{inst['name']} " + ("sleeps when idle; the next request wakes it" if inst["min_replicas"] == 0
                                     else "keeps running when idle"))


@service_app.command("show")
def service_show(name: str, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Your service NAME: status, URL, models, counters since it started, and how to call it."""
    with _hub() as hub:
        inst = _service(hub, name)
        info = hub.service(inst["id"])
    if json_out:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"{inst['name']}: {info['status']}" + (", public" if info["public"] else "")
               + (", sleeps when idle" if info["min_replicas"] == 0 else ""))
    for m in info["models"] or []:
        typer.echo(f"  model {m['name']}: versions {', '.join(map(str, m['versions']))} "
                   f"(default {m['default_version']}), {m['format']}")
    for key, counts in sorted(((info["metrics"] or {}).get("models") or {}).items()):
        mean = counts["seconds_sum"] / counts["seconds_count"] * 1000 if counts["seconds_count"] else 0.0
        typer.echo(f"  {key}: {counts['requests']} requests, {counts['errors']} errors, mean {mean:.1f} ms")
    models = info["models"] or []
    first = _first_of(models) or (_stem(str(inst["params"].get("model", "model"))), None)
    _how_to_call(inst | {"public": info["public"]}, first)


# -- quotas and group policy ----------------------------------------------------------------------
quota_app = typer.Typer(help="Quotas: what a user may hold at once and use per period (docs/policies.md).",
                        no_args_is_help=True)
QUOTA_KEYS = ("instances", "cpus", "memory_mb", "gpus", "gpu_hours", "cpu_hours")
PER_PERIOD = ("gpu_hours", "cpu_hours")


def _num(value: float | int) -> str:
    """A limit or a usage as people read it: 2, 1.5, 0.25."""
    value = round(float(value), 2)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def _key_of(option: str, given: str, keys: tuple[str, ...]) -> str:
    key = given.strip().lower().replace("-", "_")
    if key not in keys:
        typer.echo(f"error: {option} {given!r}: expected one of {', '.join(k.replace('_', '-') for k in keys)}",
                   err=True)
        raise typer.Exit(2)
    return key


def _stored(quota: dict[str, Any]) -> str:
    return ", ".join(f"{k} {_num(quota[k])}" for k in QUOTA_KEYS if quota.get(k) is not None)


def _show_user_quota(report: dict[str, Any]) -> None:
    typer.echo(f"{report['user']}: limits in force, usage, and where each limit comes from")
    cells = {}
    for key in QUOTA_KEYS:
        used, limit = _num(report["usage"].get(key, 0)), report["limits"].get(key)
        cells[key] = (f"{used} of {_num(limit)}", f"({report['source'].get(key, 'site')})") if limit is not None \
            else (used, "no limit")
    width = max(len(c[0]) for c in cells.values())
    for key, (amount, note) in cells.items():
        typer.echo(f"{key:<10} {amount:<{width}}  {note}")
    typer.echo(f"period: {report['period']}, {str(report['period_start'])[:10]} to {str(report['period_end'])[:10]} "
               f"(UTC); gpu_hours and cpu_hours count within it")


def _show_group(group: dict[str, Any], *, limits: bool = True) -> None:
    if limits:
        typer.echo(f"group {group['group']}: limits for its members (a member's own quota comes first; unset ones "
                   f"come from their other groups or the site)")
        for key in QUOTA_KEYS:
            value = group["quota"].get(key)
            typer.echo(f"{key:<10} " + ("not set" if value is None
                                          else _num(value) + (" per period" if key in PER_PERIOD else "")))
    policy = group.get("policy") or {}
    typer.echo(f"priority {group['priority']}, self-service {'on' if group['self_service'] else 'off'}")
    parts = []
    for key in ("max_hours", "default_hours"):
        if policy.get(key) is not None:
            parts.append(f"{key} {_num(policy[key])}")
    if policy.get("single_instance"):
        parts.append("single_instance on")
    if policy.get("custom_size"):
        parts.append("custom_size up to " + ",".join(f"{k}={_num(policy['custom_size'].get(k, 0))}"
                                                     for k in RESOURCE_KEYS))
    typer.echo("policy: " + (", ".join(parts) or "the templates' durations and sizes"))


@quota_app.command("show")
def quota_show(
    name: Annotated[str, typer.Argument(help="a user (yourself unless you are an admin), or with --group a group")],
    group: Annotated[bool, typer.Option("--group", help="NAME is a group: its limits and launch policy")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A user's limits in force, with usage and where each comes from; or (--group) a group's limits and policy."""
    with _hub() as hub:
        data = hub.group_quota(name) if group else hub.quota(name)
    if json_out:
        typer.echo(json.dumps(data, indent=2))
    elif group:
        _show_group(data)
    else:
        _show_user_quota(data)


@quota_app.command("set")
def quota_set(
    user: Annotated[str | None, typer.Option("--user", "-u", help="set this user's own quota")] = None,
    group: Annotated[str | None, typer.Option("--group", "-g", help="set this group's quota (for its members)")] = None,
    instances: Annotated[int | None, typer.Option(help="active instances at once")] = None,
    cpus: Annotated[float | None, typer.Option(help="CPUs held at once")] = None,
    memory_mb: Annotated[int | None, typer.Option("--memory-mb", help="memory held at once (MB)")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs held at once")] = None,
    gpu_hours: Annotated[float | None, typer.Option("--gpu-hours", help="GPU-hours per period")] = None,
    cpu_hours: Annotated[float | None, typer.Option("--cpu-hours", help="CPU-hours per period")] = None,
    clear: Annotated[list[str] | None, typer.Option("--clear", metavar="KEY",
                                                    help="unset this limit (repeatable): inherited again")] = None,
) -> None:
    """Admins: change a user's or a group's limits (the others are kept); they apply to the next launch."""
    if (user is None) == (group is None):
        typer.echo("error: name exactly one of --user and --group", err=True)
        raise typer.Exit(2)
    given = {k: v for k, v in {"instances": instances, "cpus": cpus, "memory_mb": memory_mb, "gpus": gpus,
                               "gpu_hours": gpu_hours, "cpu_hours": cpu_hours}.items() if v is not None}
    cleared = {_key_of("--clear", k, QUOTA_KEYS) for k in clear or []}
    if both := sorted(cleared & set(given)):
        typer.echo(f"error: --clear {both[0].replace('_', '-')} and a value for it: choose one", err=True)
        raise typer.Exit(2)
    if not given and not cleared:
        typer.echo("error: nothing to change: give a limit (--instances N, --gpus N, ...) or --clear KEY", err=True)
        raise typer.Exit(2)
    with _hub() as hub:
        if user is not None:
            stored = dict(hub.quota(user)["quota"])
        else:
            stored = dict(hub.group_quota(group)["quota"])  # type: ignore[arg-type]
        quota = {k: v for k, v in {**stored, **given}.items() if k not in cleared and v is not None}
        result = hub.set_quota(user, quota) if user is not None else hub.set_group_quota(group, quota)  # type: ignore[arg-type]
    whose = f"{user}'s own quota" if user is not None else f"group {group}'s quota"
    if result["quota"]:
        typer.echo(f"{whose}: {_stored(result['quota'])}")
    else:
        typer.echo(f"{whose}: no limits set (they come from "
                   + ("their groups and the site)" if user is not None else "other groups and the site)"))
    if result["over"]:
        typer.echo("warning: running instances are over the new limits; they keep running (the limits apply to "
                   "the next launch):", err=True)
        for line in result["over"]:
            typer.echo(f"  {line}", err=True)


def group_policy(
    name: Annotated[str, typer.Argument(help="the group")],
    priority: Annotated[int | None, typer.Option(help="its members' queued launches go first (higher first)")] = None,
    self_service: Annotated[bool | None, typer.Option("--self-service/--no-self-service",
                                                      help="members may launch for themselves (else admins launch "
                                                           "for them)")] = None,
    max_hours: Annotated[float | None, typer.Option("--max-hours", help="longest duration of a launch")] = None,
    default_hours: Annotated[float | None, typer.Option("--default-hours", help="duration when none is asked")] = None,
    single_instance: Annotated[bool | None, typer.Option("--single-instance/--no-single-instance",
                                                         help="one active instance of a template per member")] = None,
    custom_size: Annotated[str | None, typer.Option("--custom-size", metavar="cpus=N,memory_mb=N,gpus=N",
                                                    help="members may ask for any size up to this")] = None,
    clear: Annotated[list[str] | None, typer.Option("--clear", metavar="KEY",
                                                    help="unset max-hours, default-hours or custom-size "
                                                         "(repeatable)")] = None,
) -> None:
    """Admins: change GROUP's launch policy through the hub's API (the rest is kept); without options, show it."""
    keys = ("max_hours", "default_hours", "custom_size")
    cleared = {_key_of("--clear", k, keys) for k in clear or []}
    given: dict[str, Any] = {"max_hours": max_hours, "default_hours": default_hours,
                             "single_instance": single_instance,
                             "custom_size": _resources("--custom-size", custom_size) if custom_size else None}
    given = {k: v for k, v in given.items() if v is not None}
    if both := sorted(cleared & set(given)):
        typer.echo(f"error: --clear {both[0].replace('_', '-')} and a value for it: choose one", err=True)
        raise typer.Exit(2)
    with _hub() as hub:
        group = hub.group_quota(name)
        if given or cleared or priority is not None or self_service is not None:
            policy = {k: v for k, v in {**(group.get("policy") or {}), **given}.items() if k not in cleared}
            group = hub.set_group_policy(name, priority=priority, self_service=self_service, **policy)
    typer.echo(f"group {group['group']}:")
    _show_group(group, limits=False)


def register(app: typer.Typer) -> None:
    for command in (login, launch, submit, deploy, ls, stop, extend, restart, share, unshare, logs, events, upload,
                    folders, download):
        app.command()(command)
    app.add_typer(service_app, name="service")
    app.add_typer(quota_app, name="quota")
