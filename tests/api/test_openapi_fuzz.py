"""The REST API against its own OpenAPI document: schemathesis fuzzes every /api/v1 operation.

A real hub (proxy, app, reconciler, fake backend) runs in a thread of its own,
with users, a group, instances and tokens already there, so that generated
requests reach real resources as well as missing ones.  Each operation gets
schemathesis's examples, coverage (boundary and invalid values, undeclared
methods) and a few fuzzed cases, as an ordinary user and as an admin, and
every answer must:

* not be a server error (5xx);
* have a status the document lists for the operation, with a content type it
  lists for that status, a body that validates against the schema given for
  it, and the headers it marks required (``WWW-Authenticate`` on 401);
* for a method the path does not serve, be 405 with an ``Allow`` header
  naming exactly the documented methods.

Generation is derandomized (fixed seed, no example database), so a failure
reproduces with the same command; a failure prints a curl line to replay it.
No operation is left out; the one request kept from doing what it asks is the
caller revoking its own token (every later request would be a 401).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import secrets
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from labhub import server
from labhub.api.schemas import MAX_INT32
from labhub.backends.fake import FakeBackend
from labhub.models import UserStatus
from tests.conftest import EchoUpstream, Harness, make_settings

SEED = 20_251_202
MAX_EXAMPLES = 25  # fuzzed cases per operation and role, on top of the examples and coverage cases
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance", "unsupported_method",
          "allow_header_conformance")


def fuzz_config(base_url: str, token: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "base-url": base_url,
        "headers": {"Authorization": f"Bearer {token}"},
        "request-timeout": 10,
        "suppress-health-check": ["all"],
        "generation": {"deterministic": True, "database": "none", "max-examples": MAX_EXAMPLES,
                       "mode": "all"},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True},
                   "fuzzing": {"enabled": True}, "stateful": {"enabled": False}},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    })


@dataclass
class Target:
    """The hub under test, who calls it, and resources that exist in it."""

    url: str
    role: str
    token: str
    token_id: int  # the caller's own: never revoked by a generated request
    known: dict[str, list[Any]] = field(default_factory=dict)  # path parameter -> values of real resources


class HubThread:
    """A hub serving from an event loop in another thread, so that synchronous tests can call it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzed-hub", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _seed(tmp_path: Path, role: str) -> tuple[Harness, EchoUpstream, Target]:
    """A hub with alice (user), root (admin), bob (user), carol (pending), a group, instances, tokens."""
    from labhub.services import credentials, groups, users

    upstream = EchoUpstream()
    await upstream.start()
    settings_ = make_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'hub.sqlite'}")
    harness = Harness(await server.start(settings_, backends={"fake": FakeBackend(url=upstream.url)}))
    alice = await harness.user("alice")
    root = await harness.user("root", admin=True)
    bob = await harness.user("bob")
    async with harness.hub.tx() as session:
        carol = await users.create_user(session, name="carol", password=secrets.token_urlsafe(12),
                                        status=UserStatus.PENDING, email="carol@lab.example")
        admin = await users.get_user(session, name="root")
        await groups.create_group(session, actor=admin, name="team", description="fuzzed")
        await groups.add_member(session, actor=admin, group="team", user="alice")
        spare = [(await credentials.issue_token(session, user=u, note="spare"))[0].id
                 for u in (await users.get_user(session, name="alice"), await users.get_user(session, name="bob"),
                           carol)]
    body = {"template": "jupyterlab", "size": "small", "hours": 1}
    running = (await alice.http.post("/api/v1/instances", json={**body, "name": "ws1"})).json()
    ended = (await alice.http.post("/api/v1/instances", json={**body, "name": "old"})).json()
    theirs = (await bob.http.post("/api/v1/instances", json={**body, "name": "b1"})).json()
    for inst, owner in ((running, alice), (ended, alice), (theirs, bob)):
        await harness.wait_status(owner, inst["id"], {"running"})
    await alice.http.delete(f"/api/v1/instances/{ended['id']}")
    await harness.wait_status(alice, ended["id"], {"stopped"})
    caller = alice if role == "user" else root
    token_ids = [t["id"] for t in (await caller.http.get("/api/v1/tokens")).json()]
    own = next(t for t in token_ids if t not in spare)
    target = Target(url=harness.url, role=role, token=caller.token, token_id=own, known={
        "name": ["alice", "root", "bob", "carol"],
        "group": ["team"],
        "instance_id": [running["id"], ended["id"], theirs["id"]],
        "token_id": spare,
    })
    return harness, upstream, target


@pytest.fixture(params=["user", "admin"])
def fuzz_target(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Target]:
    """A fresh hub for each role: what the admin's requests change must not decide what the user's get."""
    monkeypatch.setenv("NO_PROXY", "*")
    hub = HubThread()
    harness, upstream, target = hub.run(_seed(tmp_path, request.param))
    try:
        yield target
    finally:
        hub.run(harness.close())
        hub.run(upstream.close())
        hub.close()


def load_schema(target: Target) -> schemathesis.BaseSchema:
    config = fuzz_config(target.url, target.token)
    schema = schemathesis.openapi.from_url(f"{target.url}/api/openapi.json", config=config)
    known = target.known

    @schema.hook
    def flatmap_path_parameters(context: schemathesis.HookContext, path_parameters: dict[str, Any] | None) -> Any:
        """The generated values, or (as often) real resources' in their place."""
        if not path_parameters:
            return st.just(path_parameters)
        options = [[(name, value), *((name, real) for real in known.get(name, ()))]
                   for name, value in path_parameters.items()]
        return st.sampled_from([dict(choice) for choice in itertools.product(*options)])

    return schema.include(path_regex=r"^/api/v1/")


def test_api_conforms_to_its_openapi_document(fuzz_target: Target, subtests: pytest.Subtests) -> None:
    # schemathesis.pytest.from_fixture() would run this, but it renames pytest's nodes through
    # Function._nodeid, which pytest 9.2 no longer has; get_all_tests() builds the same per-operation
    # Hypothesis tests (examples, coverage and fuzzing phases, as configured) without touching pytest.
    from schemathesis.core.result import Err
    from schemathesis.pytest.lazy import get_all_tests

    seen: dict[str, Counter[int]] = defaultdict(Counter)

    def check(case: schemathesis.Case) -> None:
        if case.path_parameters and str(case.path_parameters.get("token_id")) == str(fuzz_target.token_id):
            # Revoking the caller's own token would turn every later request into a 401: keep it alive.
            case.path_parameters["token_id"] = MAX_INT32
        response = case.call_and_validate()
        seen[case.operation.label][response.status_code] += 1

    hypothesis_settings = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                                   suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    tests = []
    for result in get_all_tests(schema=load_schema(fuzz_target), test_func=check, settings=hypothesis_settings,
                                given_kwargs=None):
        if isinstance(result, Err):  # an operation the document describes so badly that no test can be built
            raise result.err()
        tests.append(result.ok())
    assert len(tests) >= 30  # every operation under /api/v1 (a document that failed to load would give none)
    # Deletions last (a group's members before the group), so that the other operations still meet the
    # users, group and instances made for them.
    tests.sort(key=lambda item: (item[0].method.upper() == "DELETE", -item[0].path.count("/")))
    for operation, test in tests:
        with subtests.test(msg=f"{fuzz_target.role}: {operation.label}"):
            test()
    report = "\n".join(f"{label:50} {dict(sorted(statuses.items()))}" for label, statuses in sorted(seen.items()))
    if os.environ.get("LABHUB_FUZZ_REPORT"):
        print(f"\n{fuzz_target.role}:\n{report}")
    # A fuzzing that only ever met refusals would pass while testing little: every request carried a
    # working credential, and most operations must have succeeded at least once.
    assert not any(401 in statuses for statuses in seen.values()), report
    succeeded = [label for label, statuses in seen.items() if any(200 <= code < 300 for code in statuses)]
    assert len(succeeded) >= len(seen) // (3 if fuzz_target.role == "user" else 2), report


# -- what the fuzzer cannot be relied on to try --------------------------------------------------------------------
@pytest.fixture
async def hub(start_hub, sqlite_url):
    return await start_hub(sqlite_url, backends={"fake": FakeBackend()})


async def test_every_integer_parameter_is_bounded_and_out_of_range_is_422_naming_it(hub):
    admin = await hub.user("root", admin=True)  # past every route's access check
    spec = (await admin.http.get("/api/openapi.json")).json()
    seen = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for param in operation.get("parameters", []):
                schemas = param["schema"].get("anyOf", [param["schema"]])
                if not any(s.get("type") == "integer" for s in schemas):
                    continue
                seen += 1
                bounds = [s.get("maximum") for s in schemas if s.get("type") == "integer"]
                assert all(b is not None and b <= MAX_INT32 for b in bounds), (method, path, param["name"])
                if param["in"] != "query":
                    continue
                url = path.replace("{instance_id}", "x").replace("{name}", "root").replace("{token_id}", "1")
                resp = await admin.http.request(method, url, params={param["name"]: 2**63})
                assert resp.status_code == 422, (method, path, param["name"], resp.text)
                assert param["name"] in resp.json()["fields"]
    assert seen >= 10


async def test_every_list_answer_has_a_capped_limit(hub):
    alice = await hub.user("alice")
    spec = (await alice.http.get("/api/openapi.json")).json()
    for path, operations in spec["paths"].items():
        get = operations.get("get")
        if get is None:
            continue
        body = get["responses"]["200"].get("content", {}).get("application/json", {}).get("schema", {})
        if body.get("type") != "array" or path == "/api/v1/templates":  # the catalog is the hub's configuration
            continue
        limit = next((p for p in get.get("parameters", []) if p["name"] == "limit"), None)
        assert limit is not None and limit["schema"]["maximum"] <= 10_000, path


async def test_error_answers_are_documented_as_error_out(hub):
    spec = (await (await hub.user("alice")).http.get("/api/openapi.json")).json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    schema_ = response["content"]["application/json"]["schema"]
                    assert schema_ == {"$ref": "#/components/schemas/ErrorOut"}, (method, path, status)
            assert "413" in operation["responses"], (method, path)


async def test_options_answers_405_with_every_method_of_the_path(hub):
    alice = await hub.user("alice")
    for accept in ("application/json", "text/html"):
        resp = await alice.http.options("/api/v1/instances", headers={"Accept": accept})
        assert resp.status_code == 405 and resp.headers["allow"] == "GET, POST"
        resp = await alice.http.options("/api/v1/users/alice", headers={"Accept": accept})
        assert resp.headers["allow"] == "DELETE, GET, PATCH"
    page = await alice.http.put("/login", headers={"Accept": "text/html"})  # the HTML error page keeps it too
    assert page.status_code == 405 and page.headers["allow"] == "GET, POST"
    assert page.headers["content-type"].startswith("text/html")


async def test_401_says_how_to_authenticate(hub):
    resp = await hub.client().get("/api/v1/me")
    assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
    assert resp.json() == {"detail": "authentication required"}


@pytest.mark.parametrize("chunked", [True, False])
async def test_a_body_over_the_limit_is_413_streamed_or_declared(start_hub, sqlite_url, chunked):
    hub = await start_hub(sqlite_url, backends={"fake": FakeBackend()}, max_body_bytes=64 * 1024)
    alice = await hub.user("alice")

    async def stream() -> Any:
        for _ in range(40):
            yield b" " * 16 * 1024

    content = stream() if chunked else b" " * 640 * 1024
    resp = await alice.http.post("/api/v1/tokens", content=content, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413, resp.text
    assert resp.json() == {"detail": "request body too large (limit 65536 bytes)"}
    assert (await alice.http.get("/api/v1/me")).status_code == 200  # and the hub still answers


async def test_a_body_that_is_not_json_is_415(hub):
    alice = await hub.user("alice")
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}, {}):
        resp = await alice.http.post("/api/v1/tokens", content=b'{"note": "x"}', headers=headers)
        assert resp.status_code == 415, (headers, resp.text)
    resp = await alice.http.post("/api/v1/tokens", content=b'{"note": ', headers={"Content-Type": "application/json"})
    assert resp.status_code == 422 and resp.json()["fields"] == {"body": "JSON decode error at position 9"}


class LogsUnreachable(FakeBackend):
    async def logs(self, handle, *, tail=100):  # noqa: ANN001, ANN201 - the contract's signature
        from labhub.backends.base import BackendUnavailable

        raise BackendUnavailable("the login node does not answer")
        yield  # an async generator, like the real ones


async def test_logs_from_an_unreachable_backend_are_503_with_retry_after(start_hub, sqlite_url, echo_upstream):
    hub = await start_hub(sqlite_url, backends={"fake": LogsUnreachable(url=echo_upstream.url)})
    alice = await hub.user("alice")
    inst = (await alice.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": "ws1"})).json()
    await hub.wait_status(alice, inst["id"], {"running"})
    resp = await alice.http.get(f"/api/v1/instances/{inst['id']}/logs")
    assert resp.status_code == 503 and resp.headers["retry-after"] == "10"
    assert "the login node does not answer" in resp.json()["detail"]


async def test_events_are_paged_with_after_and_limit(start_hub, sqlite_url, echo_upstream):
    hub = await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)})
    alice = await hub.user("alice")
    inst = (await alice.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": "ws1"})).json()
    await hub.wait_status(alice, inst["id"], {"running"})
    await alice.http.delete(f"/api/v1/instances/{inst['id']}")
    await hub.wait_status(alice, inst["id"], {"stopped"})  # no more events from here on
    everything = (await alice.http.get(f"/api/v1/instances/{inst['id']}/events")).json()
    assert len(everything) >= 4
    first = (await alice.http.get(f"/api/v1/instances/{inst['id']}/events", params={"limit": 2})).json()
    rest = (await alice.http.get(f"/api/v1/instances/{inst['id']}/events",
                                 params={"after": first[-1]["id"]})).json()
    assert first + rest == everything


def test_the_checks_refuse_an_undocumented_status_and_a_body_off_its_schema() -> None:
    """What the fuzzing relies on: the configured checks fail an answer the document does not describe."""
    from schemathesis.core.failures import FailureGroup

    document = {"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {"/api/v1/x": {"get": {
        "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}}}}}}
    api = schemathesis.openapi.from_dict(document, config=fuzz_config("http://127.0.0.1:9", "t"))
    operation = api["/api/v1/x"]["GET"]
    case = operation.Case()
    request = httpx.Request("GET", "http://127.0.0.1:9/api/v1/x")

    def answer(status: int, body: object) -> httpx.Response:
        response = httpx.Response(status, json=body, request=request)
        response.elapsed = dt.timedelta(milliseconds=1)
        return response

    case.validate_response(answer(200, {}))
    for status, body in ((418, {}), (200, [])):  # an undocumented status; a body not matching the schema
        with pytest.raises(FailureGroup):
            case.validate_response(answer(status, body))


async def test_nul_characters_are_422_naming_the_field_on_every_database(start_hub, database_url):
    """PostgreSQL cannot hold text with NUL: without the checks each of these was a 500 there."""
    hub = await start_hub(database_url, backends={"fake": FakeBackend()})
    admin = await hub.user("root", admin=True)
    for method, url, body, field_ in [
        ("GET", "/api/v1/users/a%00b", None, "name"),
        ("PUT", "/api/v1/groups/%00/members/x", None, "group"),
        ("GET", "/api/v1/instances?name=%00", None, "name"),
        ("GET", "/api/v1/users?q=%00", None, "q"),
        ("GET", "/api/v1/audit?actor=a%00", None, "actor"),
        ("POST", "/api/v1/tokens", {"note": "a\u0000"}, "note"),
        ("POST", "/api/v1/groups", {"name": "g1", "description": "a\u0000"}, "description"),
        ("PATCH", "/api/v1/users/root", {"email": "a\u0000@lab.example"}, "email"),
        ("POST", "/api/v1/instances", {"template": "jupyterlab", "name": "x", "params": {"a": ["\u0000"]}}, "params"),
    ]:
        resp = await admin.http.request(method, url, json=body)
        assert resp.status_code == 422, (method, url, resp.text)
        assert resp.json()["fields"] == {field_: "must not contain NUL characters"}, (method, url)
