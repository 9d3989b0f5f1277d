"""The access-control matrix: every route of the application x every kind of caller.

The routes come from the application's own route table (plus the proxied
instance URLs, which the proxy serves), so a new route is covered the day it
is added -- and fails here until someone classifies it in ``EXPECTATIONS``.
Each classification is a *rule* (who may call it); the expected status for
each caller follows from the rule, whether the path is a page or the API,
and what an allowed caller should get when that is not simply a success.

Callers: anonymous; a *pending* user (signed up, not approved); the *user*
who owns the resource; *another* ordinary user; an *admin*.  Everyone but
the anonymous caller has a fresh browser session (cookie + CSRF token) for
each cell, and resources a call could destroy are fresh for each cell too.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.routing import APIRoute

from labhub.auth.csrf import for_nonce, for_session
from labhub.backends.fake import FakeBackend
from labhub.models import Status, UserStatus
from tests.auth.conftest import free_port, oidc_provider  # noqa: F401 - a fixture used below

ROLES = ("anonymous", "pending", "user", "other", "admin")
PROXY = "PROXY"  # marks the proxied instance URLs, served by the proxy rather than the app


@dataclass(frozen=True)
class Rule:
    """Who may call a route.  ``ok``: what an allowed caller gets (default: any 2xx/3xx)."""

    allowed: frozenset[str]
    other: frozenset[int] = frozenset({403})  # what "another user" gets when not allowed
    ok: frozenset[int] | None = None
    pending_gated: bool = True  # a pending user is sent to the waiting page (or 403 in the API)
    anonymous: frozenset[int] | None = None  # override for anonymous callers
    admin: frozenset[int] | None = None  # override for an admin who is not allowed


def rule(*allowed: str, other=(403,), ok=None, pending_gated=True, anonymous=None, admin=None) -> Rule:
    return Rule(frozenset(allowed), frozenset(other), frozenset(ok) if ok else None, pending_gated,
                frozenset(anonymous) if anonymous else None, frozenset(admin) if admin else None)


# The rules.  A route's rule answers "who may do this?"; nothing else.
PUBLIC = rule("anonymous", "pending", "user", "other", "admin", pending_gated=False)  # log in, health, static
OPEN = rule("anonymous", "user", "other", "admin")  # anyone but a pending account (which sees the waiting page)
USER = rule("user", "other", "admin")  # any active account, about itself
OWNER = rule("user", "admin", other=(403, 404))  # the resource's owner and admins; others 403 or 404
OWNER_ONLY = rule("user", other=(403, 404))  # the owner alone (an admin gets 403 too)
ADMIN = rule("admin")
INSTANCE_TOKEN = rule(anonymous=(403,), other=(403,))  # only the instance's own secret
MINE = rule("user", other=(404,), admin=(404,))  # per-user data (folders): anyone else finds no such thing
JOB = rule("user", "admin", other=(403,), ok=(404,))  # a job's results, asked of a workspace: "only jobs have"
SERVICE = rule("user", "admin", other=(403, 404), ok=(422,))  # a service's options, asked of a workspace: 422
BEARER_ONLY = rule(*ROLES, ok=(401,))  # MLaaS4HEP's routes: never the session cookie

# Every (method, path) of the app, and the proxied instance URLs.  Paths are the route table's templates.
EXPECTATIONS: dict[tuple[str, str], Rule] = {
    # documentation and health
    ("GET", "/api/openapi.json"): OPEN,
    ("GET", "/api/docs"): OPEN,
    ("GET", "/docs/oauth2-redirect"): OPEN,
    ("GET", "/api/v1/health"): PUBLIC,
    ("GET", "/favicon.ico"): PUBLIC,
    ("GET", "/static"): PUBLIC,
    # the account itself, tokens
    ("GET", "/api/v1/me"): USER,
    ("GET", "/api/v1/templates"): USER,
    ("POST", "/api/v1/tokens"): USER,
    ("GET", "/api/v1/tokens"): USER,
    ("DELETE", "/api/v1/tokens/{token_id}"): rule("user", "admin", other=(404,)),  # not yours: no such token
    # instances
    ("POST", "/api/v1/instances"): USER,
    ("GET", "/api/v1/instances"): USER,
    ("GET", "/api/v1/instances/{instance_id}"): OWNER,
    ("DELETE", "/api/v1/instances/{instance_id}"): OWNER,
    ("PATCH", "/api/v1/instances/{instance_id}"): SERVICE,
    ("POST", "/api/v1/instances/{instance_id}/extend"): rule("user", "admin", ok=(409,)),  # (a fresh ended one)
    ("POST", "/api/v1/admin/cleanup"): ADMIN,
    ("GET", "/api/v1/instances/{instance_id}/service"): JOB,  # 404 for a workspace: "only services have"
    ("POST", "/instances/{instance_id}/deploy"): JOB,
    ("POST", "/instances/{instance_id}/service"): SERVICE,
    ("GET", "/api/v1/instances/{instance_id}/events"): OWNER,
    ("GET", "/api/v1/instances/{instance_id}/logs"): OWNER,
    ("POST", "/api/v1/instances/{instance_id}/callhome"): INSTANCE_TOKEN,
    # sharing: reads of alice's running workspace; writes to a fresh ended one (409: it has ended; 404: no such
    # share), the owner's or an admin's; opening one to everyone is an admin's alone
    ("GET", "/api/v1/instances/{instance_id}/shares"): OWNER,
    ("POST", "/api/v1/instances/{instance_id}/shares"): rule("user", "admin", other=(403,), ok=(409,)),
    ("DELETE", "/api/v1/instances/{instance_id}/shares/{share_id}"): rule("user", "admin", other=(403,), ok=(404,)),
    ("GET", "/api/v1/instances/{instance_id}/access"): OWNER,
    ("PUT", "/api/v1/instances/{instance_id}/access"): rule("admin", ok=(409,)),
    ("POST", "/instances/{instance_id}/shares"): rule("user", "admin", other=(403,), ok=(409,)),
    ("POST", "/instances/{instance_id}/shares/{share_id}/revoke"): rule("user", "admin", other=(403,), ok=(404,)),
    ("POST", "/instances/{instance_id}/access"): rule("admin", ok=(409,)),
    # jobs' results (the world's instance is a workspace: its owner and admins learn it has none)
    ("GET", "/api/v1/instances/{instance_id}/artifacts"): JOB,
    ("GET", "/api/v1/instances/{instance_id}/artifacts.tar.gz"): JOB,
    ("GET", "/api/v1/instances/{instance_id}/artifacts/{path:path}"): JOB,
    ("GET", "/api/v1/instances/{instance_id}/metrics"): JOB,
    ("GET", "/api/v1/instances/{instance_id}/log"): OWNER,
    ("DELETE", "/api/v1/instances/{instance_id}/record"): OWNER,
    # folders
    ("GET", "/api/v1/folders"): USER,
    ("GET", "/api/v1/folders/{name}"): MINE,
    ("POST", "/api/v1/folders/{name}/upload"): rule("user", "other", "admin"),  # into one's own folder of the name
    ("GET", "/api/v1/folders/{name}/files/{path:path}"): MINE,
    ("DELETE", "/api/v1/folders/{name}/files/{path:path}"): MINE,
    ("DELETE", "/api/v1/folders/{name}"): MINE,
    # MLaaS4HEP's routes take a bearer token only: every cookie caller is turned away
    ("POST", "/upload"): BEARER_ONLY,
    ("POST", "/submit"): BEARER_ONLY,
    ("GET", "/status_docker"): BEARER_ONLY,
    ("GET", "/logs"): BEARER_ONLY,
    ("POST", "/logs"): BEARER_ONLY,
    ("GET", "/model"): BEARER_ONLY,
    ("GET", "/delete_specs"): BEARER_ONLY,
    ("GET", "/delete_folder"): BEARER_ONLY,
    # users (admin API; one's own account readable)
    ("GET", "/api/v1/users"): ADMIN,
    ("POST", "/api/v1/users"): ADMIN,
    ("POST", "/api/v1/users:bulk"): ADMIN,
    ("GET", "/api/v1/users/{name}"): OWNER,
    ("PATCH", "/api/v1/users/{name}"): ADMIN,
    ("DELETE", "/api/v1/users/{name}"): ADMIN,
    ("POST", "/api/v1/users/{name}/approve"): ADMIN,
    ("POST", "/api/v1/users/{name}/reject"): ADMIN,
    ("GET", "/api/v1/users/{name}/tokens"): OWNER,
    ("POST", "/api/v1/users/{name}/tokens"): ADMIN,
    ("DELETE", "/api/v1/users/{name}/tokens/{token_id}"): OWNER,
    ("GET", "/api/v1/audit"): ADMIN,
    # groups
    ("GET", "/api/v1/groups"): USER,
    ("POST", "/api/v1/groups"): ADMIN,
    ("GET", "/api/v1/groups/{group}"): rule("user", "admin", other=(404,)),  # members and admins
    ("PATCH", "/api/v1/groups/{group}"): ADMIN,
    ("DELETE", "/api/v1/groups/{group}"): ADMIN,
    ("PUT", "/api/v1/groups/{group}/members/{name}"): ADMIN,
    ("DELETE", "/api/v1/groups/{group}/members/{name}"): ADMIN,
    # quotas and launch policy
    ("GET", "/api/v1/users/{name}/quota"): OWNER,
    ("PUT", "/api/v1/users/{name}/quota"): ADMIN,
    ("GET", "/api/v1/groups/{group}/quota"): rule("user", "admin", other=(404,)),  # members and admins
    ("PUT", "/api/v1/groups/{group}/quota"): ADMIN,
    ("PUT", "/api/v1/groups/{group}/policy"): ADMIN,
    ("GET", "/api/v1/shared"): USER,
    ("GET", "/admin/users/{name}/quota"): ADMIN,
    ("POST", "/admin/users/{name}/quota"): ADMIN,
    ("GET", "/admin/groups"): ADMIN,
    ("GET", "/admin/groups/{group}"): ADMIN,
    ("POST", "/admin/groups/{group}/quota"): ADMIN,
    ("POST", "/admin/groups/{group}/policy"): ADMIN,
    ("POST", "/api/v1/instances/{instance_id}/restart"): rule("user", "admin", other=(403, 404), ok=(409, 422)),
    # log in and out, first admin, sign-up, OIDC, approvals
    ("GET", "/login"): PUBLIC,
    ("POST", "/login"): rule(*ROLES, ok=(401,), pending_gated=False),  # wrong credentials for everyone
    ("POST", "/logout"): PUBLIC,
    ("GET", "/pending"): PUBLIC,
    ("GET", "/setup"): rule("anonymous", "user", "other", "admin", ok=(404,)),  # no valid setup token
    ("POST", "/setup"): rule("anonymous", "user", "other", "admin", ok=(404,)),
    ("GET", "/signup"): OPEN,
    ("POST", "/signup"): OPEN,
    ("GET", "/oauth/{provider}/login"): PUBLIC,
    ("GET", "/oauth/{provider}/callback"): rule(*ROLES, ok=(400,), pending_gated=False),  # no flow started
    ("GET", "/approvals"): ADMIN,
    ("GET", "/approvals/{name}"): ADMIN,
    ("POST", "/approvals/{name}/approve"): ADMIN,
    ("POST", "/approvals/{name}/reject"): ADMIN,
    # pages
    ("GET", "/"): USER,
    ("GET", "/instances/{instance_id}/progress"): OWNER,
    ("GET", "/instances/{instance_id}"): OWNER,
    ("POST", "/instances/{instance_id}/stop"): OWNER,
    ("POST", "/instances/{instance_id}/delete"): OWNER,
    ("POST", "/instances/{instance_id}/retry"): OWNER_ONLY,
    ("POST", "/instances/{instance_id}/extend"): rule("user", "admin", ok=(409,)),  # (a fresh ended one)
    ("POST", "/instances/{instance_id}/restart"): rule("user", "admin", other=(403,), ok=(409, 422)),
    ("GET", "/live/instances"): USER,
    ("GET", "/launch"): USER,
    ("GET", "/launch/{template}"): USER,
    ("POST", "/launch/{template}"): USER,
    ("GET", "/folders"): USER,
    ("GET", "/folders/{name}"): MINE,
    ("POST", "/folders/{name}/upload"): rule("user", "other", "admin", ok=(303, 422)),  # no file sent: said so
    ("POST", "/folders/{name}/delete"): MINE,
    ("POST", "/folders/{name}/remove"): MINE,
    ("GET", "/tokens"): USER,
    ("POST", "/tokens"): USER,
    ("POST", "/tokens/{token_id}/revoke"): rule("user", "admin", other=(404,)),
    ("GET", "/admin"): ADMIN,
    ("GET", "/admin/users"): ADMIN,
    ("POST", "/admin/users"): ADMIN,
    ("POST", "/admin/users/{name}/disable"): ADMIN,
    ("POST", "/admin/system/cleanup"): ADMIN,
    ("POST", "/admin/users/{name}/enable"): ADMIN,
    ("POST", "/admin/users/{name}/role"): ADMIN,
    ("GET", "/admin/instances"): ADMIN,
    ("GET", "/admin/system"): ADMIN,
    # /user/...: the app answers only for instances that are not running (here: an ended one)
    ("GET", "/user/{owner}/{name}"): rule("anonymous", "user", "other", "admin", ok=(301,)),  # adds the slash
    **{(m, "/user/{owner}/{name}/{path:path}"): rule("user", "admin", ok=(503,))
       for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")},
    # a running instance on its own origin, with the cookie the hub's grant flow gave the role's browser
    # (the proxy decides; without a grant nobody is logged in there)
    **{(m, PROXY): rule("user", "admin", ok=(200,), other=(401,), pending_gated=False) for m in ("GET", "POST")},
}

# Request bodies for routes that need one to get past validation (``{n}`` becomes a unique number).
JSON_BODIES = {
    ("POST", "/api/v1/tokens"): {"note": "matrix"},
    ("POST", "/api/v1/instances"): {"template": "jupyterlab", "name": "m{n}", "hours": 1},
    ("POST", "/api/v1/instances/{instance_id}/callhome"): {"host": "127.0.0.1", "port": 9},
    ("PATCH", "/api/v1/instances/{instance_id}"): {"public": True},
    ("POST", "/api/v1/instances/{instance_id}/shares"): {"user": "bob"},
    ("PUT", "/api/v1/instances/{instance_id}/access"): {"open_to": "users"},
    ("POST", "/api/v1/instances/{instance_id}/extend"): {"hours": 1},
    ("POST", "/api/v1/admin/cleanup"): {"dry_run": True},
    ("POST", "/api/v1/users"): {"name": "new{n}"},
    ("POST", "/api/v1/users:bulk"): {"users": [{"name": "bulk{n}-a"}, {"name": "bulk{n}-b"}]},
    ("PATCH", "/api/v1/users/{name}"): {"email": "m{n}@lab.example"},
    ("POST", "/api/v1/users/{name}/reject"): {"reason": "matrix"},
    ("POST", "/api/v1/users/{name}/tokens"): {"note": "matrix"},
    ("POST", "/api/v1/groups"): {"name": "g{n}"},
    ("PATCH", "/api/v1/groups/{group}"): {"description": "matrix"},
    ("PUT", "/api/v1/users/{name}/quota"): {"instances": 100},
    ("PUT", "/api/v1/groups/{group}/quota"): {"instances": 100},
    ("PUT", "/api/v1/groups/{group}/policy"): {"priority": 1},
    ("POST", "/api/v1/instances/{instance_id}/restart"): {"size": "no-such-size"},
}
RAW_BODIES = {("POST", "/api/v1/folders/{name}/upload"): ("filename=b.txt", b"matrix")}
FORM_BODIES = {
    ("POST", "/login"): {"username": "nobody", "password": "wrong password"},
    ("POST", "/setup"): {"token": "wrong", "username": "x", "password": "long enough"},
    ("POST", "/signup"): {"username": "s{n}", "email": "s{n}@lab.example", "password": "password {n}"},
    ("POST", "/launch/{template}"): {"name": "p{n}", "hours": "1"},
    ("POST", "/instances/{instance_id}/extend"): {"hours": "1"},
    ("POST", "/instances/{instance_id}/restart"): {"size": "no-such-size"},
    ("POST", "/tokens"): {"note": "matrix"},
    ("POST", "/folders/{name}/remove"): {"path": "a.txt"},
    ("POST", "/admin/users"): {"username": "a{n}", "password": "password {n}"},
    ("POST", "/approvals/{name}/reject"): {"reason": "matrix"},
}
PENDING_SUBJECT = {"/api/v1/users/{name}/approve", "/api/v1/users/{name}/reject", "/approvals/{name}",
                   "/approvals/{name}/approve", "/approvals/{name}/reject"}


def route_table(app) -> list[tuple[str, str]]:  # noqa: ANN001
    """``(method, path)`` for every route the application serves, from its own routing table."""
    import fastapi.routing

    iterate = getattr(fastapi.routing, "iter_route_contexts", None)  # FastAPI >= 0.13x flattens included routers
    entries = list(iterate(app.routes)) if iterate else list(app.routes)
    out = []
    for entry in entries:
        methods = set(entry.methods or {"GET"})  # a Mount (static files) serves GET
        if not isinstance(getattr(entry, "original_route", entry), APIRoute):
            methods.discard("HEAD")  # Starlette adds HEAD to every GET route by itself
        out += [(m, entry.path) for m in sorted(methods)]
    return out + [(m, PROXY) for m in ("GET", "POST")]


def is_page(path: str) -> bool:
    return not path.startswith("/api/")


def expected(rule_: Rule, role: str, method: str, path: str) -> frozenset[int] | str:
    """The statuses acceptable for ``role``, or "ok" (any 2xx/3xx)."""
    if path == PROXY:
        if role in rule_.allowed:
            return rule_.ok or "ok"
        return frozenset({401}) if role in ("anonymous", "pending") else rule_.other
    if role == "pending" and rule_.pending_gated:
        return frozenset({303}) if is_page(path) else frozenset({403})
    if role in rule_.allowed:
        return rule_.ok or "ok"
    if role == "anonymous":
        if rule_.anonymous:
            return rule_.anonymous
        return frozenset({303}) if is_page(path) else frozenset({401})
    if role == "other":
        return rule_.other
    if role == "admin" and rule_.admin:
        return rule_.admin
    return frozenset({403})


@dataclass
class World:
    hub: object
    alice_instance: str
    alice_url: str
    ended_name: str
    http: httpx.AsyncClient
    counter: itertools.count = field(default_factory=lambda: itertools.count(1))


@pytest.fixture
async def world(start_hub, sqlite_url, echo_upstream, oidc_provider):  # noqa: F811
    harness = await start_hub(
        sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)}, bind=f"127.0.0.1:{free_port()}",
        signup="open", login_throttle={"account_free": 1000, "address_free": 1000, "signups_per_hour": 1000},
        oidc={"mock": {"discovery_url": oidc_provider.discovery, "client_id": "matrix"}})
    alice = await harness.user("alice")
    await harness.user("bob")
    await harness.user("root", admin=True)
    await add_user(harness, "carol", UserStatus.PENDING)
    running = (await alice.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": "ws"})).json()
    await harness.wait_status(alice, running["id"], {"running"})
    ended = (await alice.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": "old"})).json()
    await harness.wait_status(alice, ended["id"], {"running"})
    await alice.http.delete(f"/api/v1/instances/{ended['id']}")
    await harness.wait_status(alice, ended["id"], {"stopped"})
    return World(hub=harness, alice_instance=running["id"], alice_url=running["url"], ended_name="old",
                 http=harness.client())


async def add_user(harness, name: str, status: UserStatus = UserStatus.ACTIVE):  # noqa: ANN001, ANN201
    from labhub.services import users

    async with harness.hub.tx() as session:
        return await users.create_user(session, name=name, status=status)


async def session_for(harness, name: str) -> str:  # noqa: ANN001
    from labhub.services import credentials, users

    async with harness.hub.tx() as session:
        user = await users.get_user(session, name=name)
        return await credentials.create_session(session, user=user, hours=1)


async def fresh_params(world: World, method: str, path: str, n: int) -> tuple[dict[str, str], str]:
    """Path parameters for one cell, and the name of the owner (the "user" role) for it."""
    from labhub.services import credentials, groups, users
    from labhub.services import instances as svc

    harness = world.hub
    hub = harness.hub
    params: dict[str, str] = {"provider": "mock", "template": "jupyterlab", "owner": "alice",
                              "name": world.ended_name, "path": "api", "share_id": "2147483647"}
    owner = "alice"
    folder = path.startswith(("/api/v1/folders/{name}", "/folders/{name}"))
    if folder:  # a fresh folder of alice's holding a.txt (a call may delete it)
        async with hub.sessions() as session:
            alice_id = (await users.get_user(session, name="alice")).id
        received = hub.folders.new_upload_file(alice_id)
        received.write_bytes(b"matrix")
        await hub.folders.add(hub.tx, owner_id=alice_id, name=f"fold{n}", received=received, filename="a.txt")
        params.update(name=f"fold{n}", path="a.txt")
    needs_subject = any(p in path for p in ("{token_id}", "{group}")) or (
        "{name}" in path and not path.startswith("/user/") and not folder)
    if needs_subject:
        owner = f"subj{n}"
        status = UserStatus.PENDING if path in PENDING_SUBJECT else UserStatus.ACTIVE
        async with hub.tx() as session:
            subject = await users.create_user(session, name=owner, status=status)
            token, _ = await credentials.issue_token(session, user=subject, note="matrix")
            group = await groups.create_group(session, actor=_admin(), name=f"grp{n}")
            await groups.add_member(session, actor=_admin(), group=group.name, user=owner)
        params.update(name=owner, token_id=str(token.id), group=f"grp{n}")
        if status == UserStatus.PENDING:
            owner = "alice"  # the subject is someone waiting; the "user" role is an ordinary user
    if "{instance_id}" in path:
        if method == "GET":
            params["instance_id"] = world.alice_instance
        else:  # something the call may stop or delete: a fresh ended instance of alice's
            async with hub.tx() as session:
                alice = await users.get_user(session, name="alice")
                inst = await svc.launch(session, user=alice, catalog=hub.catalog, sizes=hub.settings.sizes,
                                        backends=hub.backends, template="jupyterlab", name=f"e{n}", hours=1)
                inst.status, inst.active_name = Status.STOPPED, None
            params["instance_id"] = inst.id
    return params, owner


def _admin():  # noqa: ANN202
    from labhub.models import Role, User

    return User(id=-1, name="matrix", role=Role.ADMIN)


async def origin_cookie(world: World, session: str) -> str | None:
    """What a browser with this hub session gets for alice's running instance's origin: the hub's
    redirect with a single-use code, redeemed on the origin for its cookie (None: no grant)."""
    http = world.http
    http.cookies.clear()
    hop = await http.get("/user/alice/ws/api/status", headers={"Accept": "text/html",
                                                                "Cookie": f"labhub_session={session}"})
    target = urlsplit(hop.headers.get("location", ""))
    if hop.status_code != 303 or not target.netloc.endswith(".localhost:" + str(world.hub.running.proxy.port)):
        return None
    redeemed = await http.get(f"{target.path}?{target.query}", headers={"Host": target.netloc, "Accept": "text/html"})
    assert redeemed.status_code == 303 and redeemed.headers["location"] == "/api/status"
    value = redeemed.cookies.get("labhub_origin")
    assert value and "domain=" not in redeemed.headers["set-cookie"].lower()  # host-only: this origin alone
    return value


async def call(world: World, role: str, owner: str, method: str, path: str, params: dict[str, str],
               n: int) -> httpx.Response:
    harness = world.hub
    who = {"pending": "carol", "user": owner, "other": "bob", "admin": "root"}.get(role)
    nonce = secrets.token_urlsafe(16)
    cookies = f"labhub_csrf={nonce}"
    csrf = for_nonce(harness.hub.secret_key, nonce)
    session = None
    if who is not None:
        session = await session_for(harness, who)
        cookies += f"; labhub_session={session}"
        csrf = for_session(harness.hub.secret_key, session)
    host = None
    if path == PROXY:
        url = "/api/status"
        host = urlsplit(world.alice_url).netloc
        grant = await origin_cookie(world, session) if session else None
        cookies = f"labhub_origin={grant}" if grant else ""
    elif path == "/static":
        url = "/static/labhub.css"
    else:
        url = path.replace("{path:path}", "{path}").format(**params)
    headers = {"Accept": "text/html" if is_page(path) else "application/json", "X-CSRF-Token": csrf,
               "Cookie": cookies}
    if path == PROXY:
        headers.update(Accept="application/json", Host=host, Origin=f"http://{host}")  # its own page's request
    kwargs: dict = {}
    key = (method, path)
    if key in RAW_BODIES:
        query, kwargs["content"] = RAW_BODIES[key]
        url += "?" + query
    elif key in JSON_BODIES:
        kwargs["json"] = _numbered(JSON_BODIES[key], n)
    elif method != "GET" and is_page(path) and path != PROXY:
        form = {k: v.format(n=n) for k, v in FORM_BODIES.get(key, {}).items()}
        kwargs["data"] = {**form, "csrf_token": csrf}
    http = world.http
    http.cookies.clear()  # each cell brings exactly its own cookies
    request = http.build_request(method, url, headers=headers, **kwargs)
    response = await http.send(request, stream=True)  # the live pages stream: the status is enough
    await response.aclose()
    return response


def _numbered(value, n: int):  # noqa: ANN001, ANN202 - a JSON body with {n} filled in, at any depth
    if isinstance(value, str):
        return value.format(n=n)
    if isinstance(value, dict):
        return {k: _numbered(v, n) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbered(v, n) for v in value]
    return value


def test_every_route_is_classified():
    """A route nobody classified fails here, with what to do about it."""
    import tempfile

    from labhub.api.app import create_app
    from labhub.hub import Hub
    from labhub.settings import Settings

    hub = Hub(Settings(data_dir=tempfile.mkdtemp(), bind="127.0.0.1:0"), backends={})
    table = set(route_table(create_app(hub)))
    missing = sorted(table - set(EXPECTATIONS))
    stale = sorted(set(EXPECTATIONS) - table)
    assert not missing, (
        "these routes have no access expectation: add each to EXPECTATIONS in tests/api/test_access_matrix.py "
        "with the rule that says who may call it (PUBLIC, OPEN, USER, OWNER, OWNER_ONLY, ADMIN, INSTANCE_TOKEN):\n"
        + "\n".join(f"  {m} {p}" for m, p in missing))
    assert not stale, "these expectations name routes that no longer exist: remove them:\n" + "\n".join(
        f"  {m} {p}" for m, p in stale)


async def test_access_matrix(world):
    harness = world.hub
    from labhub.api.app import create_app

    routes = [r for r in route_table(create_app(harness.hub)) if r in EXPECTATIONS]
    failures, cells = [], 0
    for method, path in routes:
        rule_ = EXPECTATIONS[(method, path)]
        for role in ROLES:
            n = next(world.counter)
            params, owner = await fresh_params(world, method, path, n)
            resp = await call(world, role, owner, method, path, params, n)
            cells += 1
            want = expected(rule_, role, method, path)
            got = resp.status_code
            good = (200 <= got < 400) if want == "ok" else got in want
            if good and role == "pending" and rule_.pending_gated:
                good = (resp.headers.get("location") == "/pending") if is_page(path) and path != PROXY else True
            if good and role == "anonymous" and got == 303 and want != "ok" and is_page(path):
                good = resp.headers.get("location", "").startswith("/login")
            if not good:
                wanted = sorted(want) if want != "ok" else "2xx/3xx"
                failures.append(f"{method:6} {path:48} {role:9} got {got}, want {wanted}")
    print(f"access matrix: {len(routes)} routes x {len(ROLES)} roles = {cells} cells")
    assert not failures, f"{len(failures)} of {cells} cells wrong:\n" + "\n".join(failures)
