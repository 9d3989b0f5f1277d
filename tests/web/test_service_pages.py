"""The pages of services over HTTP (no browser): "Deploy this model" on a finished job's page, the
launch form of a service template (its model picker, public and sleep-when-idle), a service's page
(its URL, how to call it, the public and sleep toggles) and sleeping services in the lists.

``model-service`` here is a site template replacing the built-in one with a small stdlib server on
the instance's Unix socket (the real serving runtime takes minutes to build; tests/e2e has it).  It
is handed the model file the hub resolved from ``params.model``, as labhub_serve is, names its model
after the file, and counts its requests in labhub_serve's Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
import re
import textwrap
from pathlib import Path

import pytest

from labhub.models import utcnow
from tests.api.test_folders import targz
from tests.web.test_pages import browser_login, field_errors

pytestmark = pytest.mark.asyncio

MODEL_SERVER = textwrap.dedent("""\
    import http.server, json, os, re, socketserver, sys, threading, time
    MODEL, SOCKET = sys.argv[1], sys.argv[2]  # the listen args come after the command
    NAME, SUFFIX = os.path.splitext(os.path.basename(MODEL))
    SIZE = os.path.getsize(MODEL)  # the file the hub resolved: no file, no start
    BOUNDS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]
    lock, counts, seconds = threading.Lock(), {}, {}  # by (protocol, version[, code])
    def labels(path):
        version = re.search(r"/versions/([0-9]+)/", path)
        return ("v2" if path.startswith("/v2/") else "v1" if path.startswith("/v1/") else "tfaas",
                version.group(1) if version else "1")
    def metrics():
        lines = ["# TYPE labhub_serve_requests counter"]
        for (proto, version, code), n in sorted(counts.items()):
            lines.append('labhub_serve_requests_total{model="%s",version="%s",protocol="%s",code="%d"} %d'
                         % (NAME, version, proto, code, n))
        lines.append("# TYPE labhub_serve_request_seconds histogram")
        for (proto, version), taken in sorted(seconds.items()):
            tags = 'model="%s",version="%s",protocol="%s"' % (NAME, version, proto)
            for bound in BOUNDS:
                lines.append('labhub_serve_request_seconds_bucket{%s,le="%s"} %d'
                             % (tags, bound, sum(1 for t in taken if t <= bound)))
            lines.append('labhub_serve_request_seconds_bucket{%s,le="+Inf"} %d' % (tags, len(taken)))
            lines.append("labhub_serve_request_seconds_sum{%s} %f" % (tags, sum(taken)))
            lines.append("labhub_serve_request_seconds_count{%s} %d" % (tags, len(taken)))
        return "\\n".join(lines) + "\\n"
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def answer(self, code, body, kind="application/json"):
            data = body.encode()
            self.send_response(code)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def do_GET(self):
            if self.path == "/v2/health/ready":
                return self.answer(200, "{}")
            if self.path == "/models":
                return self.answer(200, json.dumps([{"name": NAME, "versions": ["1"], "default_version": "1",
                                                     "format": SUFFIX[1:], "keys": ["pt", "eta"], "bytes": SIZE}]))
            if self.path == "/metrics":
                with lock:
                    return self.answer(200, metrics(), "text/plain; version=0.0.4")
            self.answer(404, '{"error": "no such route"}')
        def do_POST(self):
            started = time.perf_counter()
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                request = json.loads(body)
            except ValueError:
                request = None
            code = 200 if isinstance(request, dict) else 400
            if code == 200:
                time.sleep(min(float(request.get("sleep", 0.003)), 0.5))
            with lock:
                counts[labels(self.path) + (code,)] = counts.get(labels(self.path) + (code,), 0) + 1
                seconds.setdefault(labels(self.path), []).append(time.perf_counter() - started)
            self.answer(code, json.dumps({"outputs": [{"name": "output-0", "data": [SIZE]}]}))
        def log_message(self, *args):
            pass
    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True
        def get_request(self):
            return self.socket.accept()[0], ("local", 0)
    Server(SOCKET, Handler).serve_forever()
""")

MODEL_SERVICE = {
    "title": "Model service",
    "description": "Serves a model (a stand-in for the serve runtime).",
    "kind": "service",
    "command": ["python3", "-c", MODEL_SERVER, "{param:model}"],
    "listen": {"socket": ["{socket}"]},
    "ready_path": "v2/health/ready",
    "params": [{"name": "model", "title": "Model", "required": True,
                "help": "a job's artifact as JOB/PATH, or a file you uploaded as folder:FOLDER/PATH",
                "pattern": "([a-z0-9][a-z0-9-]{0,62}|folder:[A-Za-z0-9][A-Za-z0-9._-]{0,62})/"
                           "[A-Za-z0-9_][A-Za-z0-9._/-]{0,250}"}],
    "sizes": ["small", "medium"],
    "default_size": "small",
    "hours": {"default": 8, "max": 168},
    "service": {"min_replicas": 1, "idle_s": 30, "max_replicas": 2},
}

# a job writing two models and a file that is not one
JOB_TEMPLATE = textwrap.dedent("""\
    title: Writes models
    kind: job
    command:
      - python3
      - -c
      - |
        import os, sys
        out = os.environ["LABHUB_OUTPUT"]
        for name in sys.argv[1].split(","):
            path = os.path.join(out, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "wb").write(b"model bytes of " + name.encode())
      - "{param:files}"
    params:
      - name: files
        default: "model.keras,sub/clf.onnx,notes.txt"
    hours: {default: 1, max: 2}
""")


class Clock:
    """The hub's clock, set forward to make an idle service sleep at once."""

    offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return utcnow() + self.offset


def site_templates(root: Path) -> Path:
    site = root / "templates"
    site.mkdir()
    (site / "model-service.yaml").write_text(json.dumps(MODEL_SERVICE))  # JSON is YAML
    (site / "writer.yaml").write_text(JOB_TEMPLATE)
    return site


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
async def hub(start_hub, sqlite_url, tmp_path, clock):
    return await start_hub(sqlite_url, templates_dir=site_templates(tmp_path), clock=clock)


async def api(client, method: str, path: str, **kwargs):
    """An API call from a logged-in page (the session cookie and the page's CSRF token)."""
    return await client.request(method, f"/api/v1{path}", headers={"X-CSRF-Token": client.csrf}, **kwargs)


async def wait_status(client, instance_id: str, statuses: set[str], within: float = 60) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        body = (await client.get(f"/api/v1/instances/{instance_id}")).json()
        if body["status"] in statuses:
            return body
        assert loop.time() < deadline and body["status"] not in {"stopped", "succeeded", "failed", "expired"} - \
            statuses, (body["status"], body["message"])
        await asyncio.sleep(0.05)


async def finished_job(client, name: str = "train-1", files: str | None = None) -> dict:
    body = {"template": "writer", "name": name, "params": {"files": files} if files else {}}
    made = await api(client, "POST", "/instances", json=body)
    assert made.status_code == 201, made.text
    return await wait_status(client, made.json()["id"], {"succeeded"})


def form_values(page: str, form_id: str) -> dict[str, str]:
    """The values a form would send as it is (inputs' values, selected options, checked boxes)."""
    form = re.search(rf'<form[^>]*id="{form_id}".*?</form>', page, re.S)
    assert form, f"no form {form_id}"
    values = {}
    for tag in re.findall(r"<input[^>]*>", form.group(0)):
        name, value = re.search(r'name="([^"]+)"', tag), re.search(r'value="([^"]*)"', tag)
        if name and ('type="checkbox"' not in tag or " checked" in tag):
            values[name.group(1)] = html.unescape(value.group(1)) if value else ""
    for name, body in re.findall(r'<select[^>]*name="([^"]+)"[^>]*>(.*?)</select>', form.group(0), re.S):
        chosen = re.search(r'<option value="([^"]*)" selected', body) or re.search(r'<option value="([^"]*)"', body)
        values[name] = html.unescape(chosen.group(1))
    return values


async def test_deploy_a_model_from_a_finished_jobs_page(hub):
    alice = await browser_login(hub, "alice")
    bob = await browser_login(hub, "bob")
    job = await finished_job(alice)
    page = (await alice.get(f"/instances/{job['id']}")).text
    assert 'id="deploy"' in page and "Deploy this model" in page
    offered = re.findall(r'<option value="([^"]+)"', re.search(r'id="deploy-model".*?</select>', page, re.S).group(0))
    assert offered == ["model.keras", "sub/clf.onnx"]  # not notes.txt
    form = form_values(page, "deploy-form")
    assert form["name"] == "train-1-svc" and form["size"] == "small" and "public" not in form
    assert form["replicas"] == "1"
    assert (await bob.get(f"/instances/{job['id']}")).status_code == 403  # not bob's to see, let alone deploy

    # someone else, a forged form, an artifact that is no model, a bad name: refused, nothing launched
    action = f"/instances/{job['id']}/deploy"
    assert (await bob.post(action, data={**form, "csrf_token": bob.csrf})).status_code == 403
    assert (await alice.post(action, data={**form, "csrf_token": "forged"})).status_code == 403
    notes = await alice.post(action, data={**form, "model": "notes.txt"})
    assert notes.status_code == 422 and "choose one of the job&#39;s models" in field_errors(notes.text)["deploy-model"]
    bad = await alice.post(action, data={**form, "name": "Bad Name"})
    assert bad.status_code == 422 and "deploy-name" in field_errors(bad.text)
    assert 'value="Bad Name"' in bad.text  # the form keeps what was typed
    many = await alice.post(action, data={**form, "replicas": "3"})
    assert many.status_code == 422 and "must be 1 to 2" in field_errors(many.text)["deploy-replicas"]
    assert (await api(alice, "GET", "/instances")).json()[0]["id"] == job["id"]

    deployed = await alice.post(action, data={**form, "model": "sub/clf.onnx", "name": "higgs", "public": "1",
                                              "sleep_when_idle": "1"})
    assert deployed.status_code == 303
    service_id = re.fullmatch(r"/instances/([0-9a-f]{32})", deployed.headers["location"]).group(1)
    svc = (await api(alice, "GET", f"/instances/{service_id}")).json()
    assert (svc["template"], svc["kind"]) == ("model-service", "service")
    assert svc["params"] == {"model": "train-1/sub/clf.onnx"}
    assert svc["public"] is True and svc["min_replicas"] == 0 and svc["size"] == "small" and svc["replicas"] == 1
    running = await wait_status(alice, service_id, {"running"})  # the hub found the artifact: it started
    info = (await api(alice, "GET", f"/instances/{service_id}/service")).json()
    assert info["models"][0]["name"] == "clf" and info["models"][0]["bytes"] == len(b"model bytes of sub/clf.onnx")
    assert running["url"] == info["url"]

    taken = await alice.post(action, data={**form, "name": "higgs"})  # an active service has the name
    assert taken.status_code == 409 and "deploy-name" in field_errors(taken.text), taken.status_code
    again = (await alice.get(f"/instances/{job['id']}")).text
    assert form_values(again, "deploy-form")["name"] == "train-1-svc"  # still free

    # a job that failed, or wrote no model: no form
    other = await finished_job(alice, "plain-1", files="notes.txt")
    assert 'id="deploy"' not in (await alice.get(f"/instances/{other['id']}")).text
    assert (await alice.post(f"/instances/{other['id']}/deploy", data={**form, "model": "notes.txt"})).status_code \
        == 422


async def test_a_services_page_says_how_to_call_it_and_toggles_public_and_sleep(hub, clock):
    alice = await browser_login(hub, "alice")
    bob = await browser_login(hub, "bob")
    await api(alice, "POST", "/folders/models/upload", params={"filename": "clf.skops"}, content=b"skops bytes")
    made = await api(alice, "POST", "/instances", json={"template": "model-service", "name": "clf",
                                                        "params": {"model": "folder:models/clf.skops"}})
    assert made.status_code == 201, made.text
    svc = await wait_status(alice, made.json()["id"], {"running"})
    url = svc["url"]
    assert re.fullmatch(r"http://clf--alice\.localhost:\d+/", url)

    page = (await alice.get(f"/instances/{svc['id']}")).text
    assert f'<code id="service-url">{url}</code>' in page and "folder:models/clf.skops" in page
    calls = {k: html.unescape(v) for k, v in re.findall(r'<pre class="code" id="call-(\w+)"[^>]*>(.*?)</pre>', page,
                                                         re.S)}
    assert set(calls) == {"v2", "v1", "tfaas"}
    assert calls["v2"].endswith(f"{url}v2/models/clf/infer") and calls["v1"].endswith(f"{url}v1/models/clf:predict")
    assert calls["tfaas"].endswith(f"{url}json") and '"model": "clf"' in calls["tfaas"]
    assert all('-H "Authorization: Bearer $TOKEN"' in c for c in calls.values())
    assert "Make public" in page and 'id="public-warning"' in page and "Let it sleep when idle" in page
    assert ">Open<" not in page  # a service has no page to open: its section says how to call it
    assert '<script src="/static/service.js">' in page

    # the toggles: the owner's (bob may not, nor may a forged form)
    toggle = f"/instances/{svc['id']}/service"
    assert (await bob.post(toggle, data={"csrf_token": bob.csrf, "public": "1"})).status_code == 403
    assert (await alice.post(toggle, data={"csrf_token": "forged", "public": "1"})).status_code == 403
    assert (await alice.post(toggle, data={"csrf_token": alice.csrf, "public": "yes"})).status_code == 422
    made_public = await alice.post(toggle, data={"csrf_token": alice.csrf, "public": "1"})
    assert made_public.status_code == 303 and made_public.headers["location"] == f"/instances/{svc['id']}#service"
    now = (await api(alice, "GET", f"/instances/{svc['id']}")).json()
    assert now["public"] is True and now["min_replicas"] == 1
    anyone = hub.instance_client(None, svc)
    assert (await anyone.post("/v2/models/clf/infer", json={})).status_code == 200  # open to anyone now
    page = (await alice.get(f"/instances/{svc['id']}")).text
    assert "Make private" in page and "Authorization" not in re.search(r'id="call-tfaas".*?</pre>', page, re.S).group(0)
    assert '<span class="chip public"' in page

    slept = await alice.post(toggle, data={"csrf_token": alice.csrf, "sleep_when_idle": "1"})
    assert slept.status_code == 303
    assert (await api(alice, "GET", f"/instances/{svc['id']}")).json()["min_replicas"] == 0
    clock.offset = dt.timedelta(seconds=120)  # past idle_s (30): it sleeps
    await wait_status(alice, svc["id"], {"sleeping"}, within=30)
    page = (await alice.get(f"/instances/{svc['id']}")).text
    assert 'class="status s-sleeping"' in page and "Sleeping: the next request wakes it." in page
    assert "Keep it running" in page
    home = (await alice.get("/")).text
    row = re.search(rf'<tr data-instance="{svc["id"]}".*?</tr>', home, re.S).group(0)
    assert '<span class="status s-sleeping" data-status>sleeping</span>' in row
    assert ">public</span>" in row and ">sleeps when idle</span>" in row
    assert ">Open<" not in row

    # an ended service keeps its page, without toggles
    assert (await api(alice, "DELETE", f"/instances/{svc['id']}")).status_code == 202
    await wait_status(alice, svc["id"], {"stopped"})
    page = (await alice.get(f"/instances/{svc['id']}")).text
    assert 'id="service"' in page and "Make private" not in page and "It has ended." in page
    assert (await alice.post(toggle, data={"csrf_token": alice.csrf, "public": "0"})).status_code == 409
    # launched again as it was: public, sleeping when idle; its page, not the progress page (nothing to open)
    again = await alice.post(f"/instances/{svc['id']}/retry", data={"csrf_token": alice.csrf})
    assert again.status_code == 303 and re.fullmatch(r"/instances/[0-9a-f]{32}", again.headers["location"])
    relaunched = (await alice.get("/api/v1" + again.headers["location"])).json()
    assert (relaunched["name"], relaunched["public"], relaunched["min_replicas"]) == ("clf", True, 0)


async def test_the_launch_form_of_a_service_picks_a_model_and_its_options(hub):
    alice = await browser_login(hub, "alice")
    await finished_job(alice)
    await api(alice, "POST", "/folders/models/upload", content=targz({"clf.skops": "s", "readme.md": "r"}),
              params={"filename": "m.tar.gz"})
    form = await alice.get("/launch/model-service")
    assert form.status_code == 200
    picks = re.search(r'<datalist id="param-model-choices">(.*?)</datalist>', form.text, re.S)
    assert picks, "the model field has no suggestions"
    assert re.findall(r'<option value="([^"]+)"', picks.group(1)) == [
        "train-1/model.keras", "train-1/sub/clf.onnx", "folder:models/clf.skops"]
    assert 'list="param-model-choices"' in form.text
    assert r'pattern="([a-z0-9][a-z0-9\-]{0,62}|folder:' in form.text  # as browsers' `v` flag takes it
    assert 'id="public" name="public"' in form.text and 'id="sleep" name="sleep_when_idle"' in form.text
    assert 'id="replicas" name="replicas" min="1" max="2"' in form.text
    assert " checked" not in re.search(r'<input type="checkbox" id="sleep"[^>]*>', form.text).group(0)
    assert "After 30 s without requests" in form.text

    data = {"csrf_token": alice.csrf, "name": "svc", "size": "small", "hours": "2",
            "param.model": "folder:models/clf.skops", "public": "1"}
    launched = await alice.post("/launch/model-service", data=data)
    assert launched.status_code == 303
    inst = (await alice.get(launched.headers["location"].replace("/instances/", "/api/v1/instances/"))).json()
    assert inst["public"] is True and inst["min_replicas"] == 1
    assert inst["params"] == {"model": "folder:models/clf.skops"}
    assert inst["replicas"] == 1
    data.pop("public")
    again = await alice.post("/launch/model-service", data={**data, "name": "svc2", "sleep_when_idle": "1",
                                                            "replicas": "2"})
    inst = (await alice.get(again.headers["location"].replace("/instances/", "/api/v1/instances/"))).json()
    assert inst["public"] is False and inst["min_replicas"] == 0 and inst["replicas"] == 2
    too_many = await alice.post("/launch/model-service", data={**data, "name": "svc3", "replicas": "3"})
    assert too_many.status_code == 422 and "must be 1 to 2" in field_errors(too_many.text)["replicas"]
    assert 'href="#replicas">Replicas: must be 1 to 2' in too_many.text  # in the summary, linked to the field
    not_a_number = await alice.post("/launch/model-service", data={**data, "name": "svc3", "replicas": "two"})
    assert not_a_number.status_code == 422 and "whole number" in field_errors(not_a_number.text)["replicas"]

    # a job template has neither option, and its launch never sends them
    job_form = (await alice.get("/launch/writer")).text
    assert 'name="public"' not in job_form and 'name="sleep_when_idle"' not in job_form
    job = await alice.post("/launch/writer", data={"csrf_token": alice.csrf, "name": "w", "size": "small",
                                                   "hours": "1", "public": "1"})
    assert job.status_code == 303

    tokens = (await alice.get("/tokens")).text
    assert 'value="infer"' in tokens and "only call your services" in tokens
