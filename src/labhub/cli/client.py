"""Client commands against a running hub's REST API.

The hub URL and token come from ``LABHUB_URL`` / ``LABHUB_TOKEN``, else from
the file ``labhub login`` writes (``~/.config/labhub/client.json``, mode 0600).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import httpx

TERMINAL = {"stopped", "succeeded", "failed", "expired"}


def _config_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "labhub" / "client.json"


def _credentials() -> tuple[str, str]:
    url, token = os.environ.get("LABHUB_URL"), os.environ.get("LABHUB_TOKEN")
    if not (url and token):
        try:
            saved = json.loads(_config_path().read_text())
        except (OSError, ValueError):
            saved = {}
        url, token = url or saved.get("url"), token or saved.get("token")
    if not (url and token):
        typer.echo("error: not logged in: run `labhub login` or set LABHUB_URL and LABHUB_TOKEN", err=True)
        raise typer.Exit(2)
    return url.rstrip("/"), token


def _client() -> httpx.Client:
    import httpx  # here, not at import: `labhub serve` never needs it

    url, token = _credentials()
    return httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _check(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        try:
            body = resp.json()
        except ValueError:
            body = {"detail": resp.text}
        detail = body.get("detail", resp.reason_phrase)
        fields = body.get("fields") or {}
        typer.echo(f"error ({resp.status_code}): {detail}", err=True)
        for key, msg in fields.items():
            typer.echo(f"  {key}: {msg}", err=True)
        raise typer.Exit(1)
    if resp.headers.get("content-type", "").startswith("application/json"):
        return resp.json()
    return resp.text


def _find(client: httpx.Client, name: str) -> dict[str, Any]:
    rows = _check(client.get("/instances", params={"name": name}))
    if not rows:
        typer.echo(f"error: you have no instance named {name!r}", err=True)
        raise typer.Exit(1)
    active = [r for r in rows if r["status"] not in TERMINAL]
    return (active or rows)[0]


def login(
    url: Annotated[str, typer.Option(prompt="Hub URL", help="e.g. http://127.0.0.1:8000")],
    token: Annotated[str, typer.Option(prompt="API token", hide_input=True, help="from the Tokens page or `labhub token issue`")],
) -> None:
    """Save the hub URL and an API token for the other client commands."""
    import httpx

    resp = httpx.get(f"{url.rstrip('/')}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    me = _check(resp)
    path = _config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url.rstrip("/"), "token": token}, fh)
    typer.echo(f"logged in to {url} as {me['name']}")


def launch(
    template: str,
    name: Annotated[str, typer.Option("--name", "-n", help="instance name (a-z, 0-9, '-')")],
    size: Annotated[str | None, typer.Option("--size", "-s")] = None,
    hours: Annotated[float | None, typer.Option("--hours")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="KEY=VALUE (JSON values allowed)")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait until it runs (or fails)")] = False,
) -> None:
    """Launch TEMPLATE as an instance."""
    params: dict[str, Any] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            typer.echo(f"error: --param {item!r}: expected KEY=VALUE", err=True)
            raise typer.Exit(2)
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    body = {"template": template, "name": name, "size": size, "hours": hours, "params": params}
    with _client() as client:
        inst = _check(client.post("/instances", json={k: v for k, v in body.items() if v is not None}))
        typer.echo(f"{inst['name']}: {inst['status']} ({inst['id']})")
        if wait:
            inst = _wait(client, inst)
            at = f" at {inst['url']}" if inst["status"] == "running" else ""
            typer.echo(f"{inst['name']}: {inst['status']}{at}")
            if inst["status"] != "running":
                typer.echo(inst["message"], err=True)
                raise typer.Exit(1)


def _wait(client: httpx.Client, inst: dict[str, Any]) -> dict[str, Any]:
    import httpx

    with client.stream("GET", f"/instances/{inst['id']}/events", headers={"Accept": "text/event-stream"},
                       timeout=httpx.Timeout(30, read=None)) as resp:
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if not event:
                break
            typer.echo(f"  {event['status']}: {event['message'].splitlines()[0] if event['message'] else ''}")
            if event["status"] in ("running", *TERMINAL):
                break
    return _check(client.get(f"/instances/{inst['id']}"))


def ls(all_users: Annotated[bool, typer.Option("--all", help="admins: every user's instances")] = False,
       json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List your instances."""
    with _client() as client:
        rows = _check(client.get("/instances", params={"all": "true"} if all_users else {}))
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'NAME':<20} {'OWNER':<12} {'TEMPLATE':<14} {'SIZE':<8} {'STATUS':<10} URL")
    for r in rows:
        typer.echo(f"{r['name']:<20} {r['owner']:<12} {r['template']:<14} {r['size']:<8} {r['status']:<10} {r['url']}")


def stop(name: str) -> None:
    """Stop your instance NAME."""
    with _client() as client:
        inst = _find(client, name)
        inst = _check(client.delete(f"/instances/{inst['id']}"))
    typer.echo(f"{inst['name']}: {inst['status']}")


def logs(name: str, tail: Annotated[int, typer.Option(help="number of lines")] = 200) -> None:
    """Print the last lines of NAME's output."""
    with _client() as client:
        inst = _find(client, name)
        sys.stdout.write(_check(client.get(f"/instances/{inst['id']}/logs", params={"tail": tail})))


def events(name: str, follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events")] = False) -> None:
    """Print NAME's events."""
    import httpx

    with _client() as client:
        inst = _find(client, name)
        if not follow:
            for e in _check(client.get(f"/instances/{inst['id']}/events")):
                typer.echo(f"{e['at']}  {e['status']:<10} {e['message']}")
            return
        with client.stream("GET", f"/instances/{inst['id']}/events", headers={"Accept": "text/event-stream"},
                           timeout=httpx.Timeout(30, read=None)) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: ") and line != "data: {}":
                    e = json.loads(line[6:])
                    typer.echo(f"{e['at']}  {e['status']:<10} {e['message']}")


def register(app: typer.Typer) -> None:
    for command in (login, launch, ls, stop, logs, events):
        app.command()(command)
