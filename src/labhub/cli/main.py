"""`labhub`: serve, manage users and tokens on the data dir, and drive a running hub."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from labhub.cli import client

app = typer.Typer(help="LabHub: workspaces, jobs and services for a research group.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
user_app = typer.Typer(help="Manage users (acts on the data dir).", no_args_is_help=True)
token_app = typer.Typer(help="Manage API tokens (acts on the data dir).", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(db_app, name="db")
client.register(app)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="data directory [env LABHUB_DATA_DIR]")]


def _settings(**overrides: object):  # noqa: ANN202
    from pydantic import ValidationError

    from labhub.settings import load_settings

    try:
        return load_settings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            key = "LABHUB_" + "_".join(str(p) for p in err["loc"]).upper()
            typer.echo(f"configuration error: {key}: {err['msg']}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    bind: Annotated[str | None, typer.Option(help="HOST:PORT to listen on [env LABHUB_BIND; default 127.0.0.1:8000]")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the hub (SQLite and the local backend unless configured otherwise)."""
    settings = _settings(bind=bind, data_dir=data_dir)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from labhub import server

    server.run(settings)


async def _with_db(settings, work):  # noqa: ANN001, ANN202
    from labhub.hub import Hub

    hub = Hub(settings)
    try:
        from labhub import db

        await db.upgrade(hub.engine)
        async with hub.tx() as session:
            return await work(session)
    finally:
        await hub.engine.dispose()


@user_app.command("add")
def user_add(
    name: str,
    admin: Annotated[bool, typer.Option("--admin", help="make the user an admin")] = False,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin")] = False,
    email: Annotated[str | None, typer.Option(help="e-mail address")] = None,
    data_dir: DataDir = None,
) -> None:
    """Add a user.  Without --password-stdin a one-time password is generated and printed."""
    import secrets

    from labhub.services import users
    from labhub.services.errors import ServiceError

    password = sys.stdin.readline().rstrip("\n") if password_stdin else secrets.token_urlsafe(12)
    settings = _settings(data_dir=data_dir)
    try:
        asyncio.run(_with_db(settings, lambda s: users.create_user(s, name=name, password=password, admin=admin,
                                                                     email=email)))
    except ServiceError as exc:
        detail = "; ".join(f"{k}: {v}" for k, v in exc.fields.items()) or exc.message
        typer.echo(f"error: {detail}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"added {'admin' if admin else 'user'} {name}")
    if not password_stdin:
        typer.echo(f"password: {password}")


@user_app.command("ls")
def user_ls(data_dir: DataDir = None, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List users."""
    import json

    from labhub.services import users

    settings = _settings(data_dir=data_dir)
    rows = asyncio.run(_with_db(settings, lambda s: users.list_users(s, limit=1_000_000)))
    if json_out:
        typer.echo(json.dumps([{"name": u.name, "role": u.role, "status": u.status} for u in rows], indent=2))
        return
    for u in rows:
        typer.echo(f"{u.name:<24} {u.role:<6} {u.status}")


@token_app.command("issue")
def token_issue(
    name: str,
    note: Annotated[str, typer.Option(help="what the token is for")] = "issued by labhub token issue",
    expires_in_days: Annotated[float | None, typer.Option(help="expiry in days (default: never)")] = None,
    scope: Annotated[list[str] | None, typer.Option(help="scope (repeatable): read, instances, jobs, admin")] = None,
    data_dir: DataDir = None,
) -> None:
    """Print a new API token for user NAME."""
    from labhub.services import credentials, users

    settings = _settings(data_dir=data_dir)

    async def work(session):  # noqa: ANN001, ANN202
        user = await users.get_user(session, name=name)
        if user is None:
            return None
        return (await credentials.issue_token(session, user=user, note=note, scopes=scope or ["*"],
                                              expires_in_days=expires_in_days))[1]

    secret = asyncio.run(_with_db(settings, work))
    if secret is None:
        typer.echo(f"error: no user named {name!r}", err=True)
        raise typer.Exit(1)
    typer.echo(secret)


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Apply database migrations."""
    settings = _settings(data_dir=data_dir)
    asyncio.run(_with_db(settings, lambda s: asyncio.sleep(0)))
    typer.echo(f"database at the newest revision: {settings.effective_database_url.split('@')[-1]}")


if __name__ == "__main__":  # pragma: no cover
    app()
