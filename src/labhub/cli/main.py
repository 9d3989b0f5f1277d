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
group_app = typer.Typer(help="Manage groups (acts on the data dir; `policy` through the hub's API).",
                        no_args_is_help=True)
runtime_app = typer.Typer(help="Runtimes: the environments instances run in (built under LABHUB_RUNTIMES_DIR).",
                          no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(group_app, name="group")
app.add_typer(db_app, name="db")
app.add_typer(runtime_app, name="runtime")
client.register(app)
group_app.command("policy")(client.group_policy)

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
    bind: Annotated[str | None, typer.Option(
        help="HOST:PORT to listen on [env LABHUB_BIND; default 127.0.0.1:8000]")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the hub (SQLite and the local backend unless configured otherwise)."""
    settings = _settings(bind=bind, data_dir=data_dir)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # FastAPI imports pydantic's version-1 compatibility package for every route it builds, only to refuse
    # version-1 models (it supports none); the hub has none, and the package costs ~1.5 MiB and 20 ms of
    # every start.  In this process it is "not installed", which FastAPI handles as such.
    sys.modules.setdefault("pydantic.v1", None)  # type: ignore[arg-type]
    from labhub import server
    from labhub.storage import StorageError

    try:
        server.run(settings)
    except StorageError as exc:
        typer.echo(f"error: the data directory is not safe to use: {exc}", err=True)
        raise typer.Exit(2) from None


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
def user_ls(
    data_dir: DataDir = None,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    status: Annotated[str | None, typer.Option(help="only users with this status: pending, active, disabled")] = None,
    search: Annotated[str, typer.Option(help="part of the name")] = "",
) -> None:
    """List users."""
    import json

    from labhub.services import users

    settings = _settings(data_dir=data_dir)
    rows = _run(settings, lambda s: users.list_users(s, search=search, status=status, limit=1_000_000))
    if json_out:
        typer.echo(json.dumps([{"name": u.name, "role": u.role, "status": u.status, "email": u.email,
                                "status_reason": u.status_reason,
                                "created_at": u.created_at.isoformat()} for u in rows], indent=2))
        return
    for u in rows:
        typer.echo(f"{u.name:<24} {u.role:<6} {u.status:<9} {u.status_reason}".rstrip())


def _cli_actor():  # noqa: ANN202
    """The person at the hub's console: an admin for the services, named in the audit log; never stored."""
    import getpass

    from labhub.models import Role, User

    return User(id=-1, name=f"cli:{getpass.getuser()}"[:63], role=Role.ADMIN)


def _run(settings, work):  # noqa: ANN001, ANN202
    """``work(session)`` in one transaction; service errors become a message and exit status 1."""
    from labhub.services.errors import ServiceError

    try:
        return asyncio.run(_with_db(settings, work))
    except ServiceError as exc:
        detail = "; ".join(f"{k}: {v}" for k, v in exc.fields.items()) or exc.message
        typer.echo(f"error: {detail}", err=True)
        raise typer.Exit(1) from None


def _send(settings, mails) -> bool:  # noqa: ANN001
    """Send mails after the decision committed (a failure is reported, not fatal)."""
    from labhub.auth.mail import Mailer

    async def send() -> bool:
        mailer = Mailer(settings.smtp)
        return all([await mailer.send(m) for m in mails]) if mails else False

    return asyncio.run(send())


@user_app.command("approve")
def user_approve(name: str, data_dir: DataDir = None) -> None:
    """Approve a pending account (the user is mailed; it takes effect on their next request)."""
    from labhub.services import approval

    settings = _settings(data_dir=data_dir)
    decision = _run(settings, lambda s: approval.approve(s, settings=settings, actor=_cli_actor(), name=name))
    mailed = _send(settings, decision.mails)
    typer.echo(f"approved {name}" + ("; mailed them" if mailed else "; not mailed"))


@user_app.command("reject")
def user_reject(name: str, reason: Annotated[str, typer.Option(help="told to the user")] = "",
                data_dir: DataDir = None) -> None:
    """Reject a pending account (it becomes disabled; the user is mailed)."""
    from labhub.services import approval

    settings = _settings(data_dir=data_dir)
    decision = _run(settings, lambda s: approval.reject(s, settings=settings, actor=_cli_actor(), name=name,
                                                         reason=reason))
    mailed = _send(settings, decision.mails)
    typer.echo(f"rejected {name}" + ("; mailed them" if mailed else "; not mailed"))


@user_app.command("disable")
def user_disable(name: str, reason: Annotated[str, typer.Option(help="recorded with the change")] = "",
                 data_dir: DataDir = None) -> None:
    """Disable an account: sessions end, tokens stop working, running instances are stopped."""
    from labhub.models import UserStatus
    from labhub.services import admin, users

    settings = _settings(data_dir=data_dir)

    async def work(session):  # noqa: ANN001, ANN202
        actor = _cli_actor()
        stopping = await admin.disable_user(session, actor=actor, name=name)
        user = await users.require_user(session, name)
        users.set_status(user, UserStatus.DISABLED, f"disabled by {actor.name}" + (f": {reason}" if reason else ""))
        return stopping

    stopping = _run(settings, work)
    typer.echo(f"disabled {name}; stopping {len(stopping)} instance(s)")


@user_app.command("enable")
def user_enable(name: str, data_dir: DataDir = None) -> None:
    """Make a disabled account active again."""
    from labhub.models import UserStatus
    from labhub.services import admin, users
    from labhub.services.errors import Conflict

    settings = _settings(data_dir=data_dir)

    async def work(session):  # noqa: ANN001, ANN202
        user = await users.require_user(session, name)
        if user.status == UserStatus.PENDING:
            raise Conflict(f"{name} waits for approval: use `labhub user approve {name}`")
        actor = _cli_actor()
        await admin.enable_user(session, actor=actor, name=name)
        users.set_status(user, UserStatus.ACTIVE, f"enabled by {actor.name}")

    _run(settings, work)
    typer.echo(f"enabled {name}")


@user_app.command("admin")
def user_admin(name: str, remove: Annotated[bool, typer.Option("--remove", help="take the role away")] = False,
               data_dir: DataDir = None) -> None:
    """Make NAME an admin (or, with --remove, an ordinary user)."""
    from labhub.services import admin

    settings = _settings(data_dir=data_dir)
    _run(settings, lambda s: admin.set_admin(s, actor=_cli_actor(), name=name, admin=not remove))
    typer.echo(f"{name} is {'no longer' if remove else 'now'} an admin")


@user_app.command("delete")
def user_delete(name: str, data_dir: DataDir = None) -> None:
    """Delete an account and its data; with running instances, stop them first (run again afterwards)."""
    import shutil

    from labhub.services import users

    settings = _settings(data_dir=data_dir)
    result = _run(settings, lambda s: users.delete_user(s, actor=_cli_actor(), name=name))
    if not result.deleted:
        typer.echo(f"{name} is disabled and {len(result.stopping)} instance(s) are stopping; "
                   f"run this again once they have stopped")
        raise typer.Exit(3)
    shutil.rmtree(settings.data_dir / "homes" / name, ignore_errors=True)
    typer.echo(f"deleted {name}")


@user_app.command("link")
def user_link(name: str, provider: Annotated[str, typer.Option(help="the OIDC provider's name in the settings")],
              subject: Annotated[str, typer.Option(help="the user's `sub` at that provider")],
              data_dir: DataDir = None) -> None:
    """Let an OIDC identity log in as NAME (for providers with create_users = false)."""
    from labhub.auth import identities

    settings = _settings(data_dir=data_dir)
    if provider not in settings.oidc:
        typer.echo(f"error: no OIDC provider named {provider!r} in the settings", err=True)
        raise typer.Exit(1)
    _run(settings, lambda s: identities.link(s, actor=_cli_actor().name, user=name, provider=provider,
                                             subject=subject))
    typer.echo(f"{provider}:{subject} logs in as {name}")


@group_app.command("ls")
def group_ls(data_dir: DataDir = None, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List groups with their member counts."""
    import json

    from labhub.services import groups

    settings = _settings(data_dir=data_dir)
    rows = _run(settings, lambda s: groups.list_groups(s))
    if json_out:
        typer.echo(json.dumps([{"name": i.group.name, "description": i.group.description, "members": i.members}
                               for i in rows], indent=2))
        return
    for i in rows:
        typer.echo(f"{i.group.name:<24} {i.members:>5}  {i.group.description}".rstrip())


@group_app.command("add")
def group_add(name: str, description: Annotated[str, typer.Option(help="what the group is")] = "",
              data_dir: DataDir = None) -> None:
    """Create a group."""
    from labhub.services import groups

    settings = _settings(data_dir=data_dir)
    _run(settings, lambda s: groups.create_group(s, actor=_cli_actor(), name=name, description=description))
    typer.echo(f"created group {name}")


@group_app.command("rm")
def group_rm(name: str, data_dir: DataDir = None) -> None:
    """Delete a group (its members stay)."""
    from labhub.services import groups

    settings = _settings(data_dir=data_dir)
    _run(settings, lambda s: groups.delete_group(s, actor=_cli_actor(), name=name))
    typer.echo(f"deleted group {name}")


@group_app.command("members")
def group_members(name: str, data_dir: DataDir = None) -> None:
    """List a group's members (and where each membership came from)."""
    from labhub.services import groups

    settings = _settings(data_dir=data_dir)

    async def work(session):  # noqa: ANN001, ANN202
        return await groups.members(session, group=await groups.get_group(session, name=name))

    for user, source in _run(settings, work):
        typer.echo(f"{user.name:<24} {source or 'admin'}")


@group_app.command("add-member")
def group_add_member(group: str, user: str, data_dir: DataDir = None) -> None:
    """Add USER to GROUP."""
    from labhub.services import groups

    settings = _settings(data_dir=data_dir)
    added = _run(settings, lambda s: groups.add_member(s, actor=_cli_actor(), group=group, user=user))
    typer.echo(f"{user} {'added to' if added else 'was already in'} {group}")


@group_app.command("remove-member")
def group_remove_member(group: str, user: str, data_dir: DataDir = None) -> None:
    """Remove USER from GROUP."""
    from labhub.services import groups

    settings = _settings(data_dir=data_dir)
    _run(settings, lambda s: groups.remove_member(s, actor=_cli_actor(), group=group, user=user))
    typer.echo(f"removed {user} from {group}")


@token_app.command("issue")
def token_issue(
    name: str,
    note: Annotated[str, typer.Option(help="what the token is for")] = "issued by labhub token issue",
    expires_in_days: Annotated[float | None, typer.Option(help="expiry in days (default: never)")] = None,
    scope: Annotated[list[str] | None, typer.Option(help="scope (repeatable): read, instances, jobs, infer (call services only), admin")] = None,
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


@runtime_app.command("ls")
def runtime_ls(data_dir: DataDir = None) -> None:
    """The built-in runtimes, where each lives and whether it is built."""
    from labhub import runtimes

    root = _settings(data_dir=data_dir).runtimes_dir
    for runtime in runtimes.BUILTIN.values():
        state = "built" if runtimes.is_built(root, runtime) else "not built"
        typer.echo(f"{runtime.name:<12} {state:<10} {runtimes.location(root, runtime)}")


@runtime_app.command("build")
def runtime_build(name: str, data_dir: DataDir = None) -> None:
    """Build runtime NAME now (jobs otherwise build it at their first start); a no-op once built."""
    from labhub import runtimes

    known = runtimes.BUILTIN.get(name)
    if known is None:
        typer.echo(f"error: no runtime named {name!r} (known: {', '.join(sorted(runtimes.BUILTIN))})", err=True)
        raise typer.Exit(1)
    root = _settings(data_dir=data_dir).runtimes_dir
    try:
        path = runtimes.build_sync(root, known, progress=lambda line: typer.echo(line, err=True))
    except runtimes.RuntimeBuildError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"runtime {name} built: {path}")


if __name__ == "__main__":  # pragma: no cover
    app()
