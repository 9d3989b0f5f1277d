"""The instance page's "Extend" form and expiry warning, over HTTP (no browser): the form within the
maximum, refusals shown next to it, forged and cross-site posts, someone else's instance, the banner
inside the warning window (an injected clock), and an instance with nothing left to give."""

from __future__ import annotations

import datetime as dt
import html
import re

import pytest

from labhub.backends.fake import FakeBackend
from labhub.models import utcnow
from tests.web.test_pages import browser_login

pytestmark = pytest.mark.asyncio


class Clock:
    offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return utcnow() + self.offset


DESK = "title: Desk\nkind: workspace\ncommand: [desk]\nhours: {default: 1, max: 2}\n"  # no idle time-out


@pytest.fixture
async def hub(start_hub, sqlite_url, echo_upstream, tmp_path):
    clock = Clock()
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "desk.yaml").write_text(DESK)
    harness = await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)}, clock=clock,
                              templates_dir=templates)
    harness.clock = clock
    return harness


async def running(hub, alice, hours: float, template: str = "jupyterlab") -> str:
    api = await hub.user("ops", admin=True) if not hasattr(hub, "ops") else hub.ops
    hub.ops = api
    name = f"ws{int(hours)}" if template == "jupyterlab" else template
    made = await alice.post(f"/launch/{template}", data={"csrf_token": alice.csrf, "name": name,
                                                          "size": "small", "hours": str(hours)})
    assert made.status_code == 303, made.text
    instance_id = made.headers["location"].split("/")[2]
    await hub.wait_status(api, instance_id, {"running"})
    return instance_id


def error_of(page: str) -> str:
    match = re.search(r'<p class="field-error" id="extend-hours-error">([^<]*)</p>', page)
    return html.unescape(match.group(1)) if match else ""


async def test_extend_form_within_and_beyond_the_maximum(hub):
    alice = await browser_login(hub, "alice")
    iid = await running(hub, alice, hours=4)
    page = await alice.get(f"/instances/{iid}")
    assert f'action="/instances/{iid}/extend"' in page.text and 'id="extend-button"' in page.text
    assert "Up to 20 h more." in page.text and "(4 h chosen, at most 24 h)" in page.text
    assert 'max="20"' in page.text and "labhub extend ws4 --hours H" in page.text
    assert 'id="expiry-warning"' not in page.text  # hours to go: no banner

    done = await alice.post(f"/instances/{iid}/extend", data={"csrf_token": alice.csrf, "hours": "2.5"})
    assert done.status_code == 303 and done.headers["location"] == f"/instances/{iid}#expires"
    page = await alice.get(f"/instances/{iid}")
    assert "(6.5 h chosen, at most 24 h)" in page.text and "Up to 17.5 h more." in page.text
    assert "extended by 2.5 h, to 6.5 h in all" in page.text  # the timeline

    over = await alice.post(f"/instances/{iid}/extend", data={"csrf_token": alice.csrf, "hours": "18"})
    assert over.status_code == 422
    assert error_of(over.text) == "at most 17.5 h more (JupyterLab runs at most 24 h in all; it has 6.5 h)"
    assert 'aria-invalid="true"' in over.text and 'id="extend-form"' in over.text  # the form, to try again
    for bad, said in (("soon", "must be a number of hours"), ("", "must be more than 0"), ("-1", "more than 0"),
                      ("inf", "more than 0"), ("nan", "more than 0")):
        resp = await alice.post(f"/instances/{iid}/extend", data={"csrf_token": alice.csrf, "hours": bad})
        assert resp.status_code == 422 and said in error_of(resp.text), (bad, error_of(resp.text))

    full = await alice.post(f"/instances/{iid}/extend", data={"csrf_token": alice.csrf, "hours": "17.5"})
    assert full.status_code == 303
    page = await alice.get(f"/instances/{iid}")
    assert "(24 h chosen, at most 24 h)" in page.text and 'id="extend-form"' not in page.text  # nothing left


async def test_forged_cross_site_and_someone_elses_posts_are_refused(hub):
    alice = await browser_login(hub, "alice")
    bob = await browser_login(hub, "bob")
    iid = await running(hub, alice, hours=4)
    url = f"/instances/{iid}/extend"
    assert (await alice.post(url, data={"hours": "1"})).status_code == 403  # no CSRF token
    assert (await alice.post(url, data={"csrf_token": bob.csrf, "hours": "1"})).status_code == 403  # another's
    cross = await alice.post(url, data={"csrf_token": alice.csrf, "hours": "1"},
                             headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403
    assert (await bob.post(url, data={"csrf_token": bob.csrf, "hours": "1"})).status_code == 403
    anonymous = await hub.client(headers={"Accept": "text/html"}).post(url, data={"hours": "1"})
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
    page = await alice.get(f"/instances/{iid}")
    assert "(4 h chosen, at most 24 h)" in page.text  # none of those changed it

    # an admin may; an ended instance may not (said on its page)
    root = await browser_login(hub, "root", admin=True)
    assert (await root.post(url, data={"csrf_token": root.csrf, "hours": "1"})).status_code == 303
    await alice.post(f"/instances/{iid}/stop", data={"csrf_token": alice.csrf})
    await hub.wait_status(hub.ops, iid, {"stopped"})
    ended = await alice.post(url, data={"csrf_token": alice.csrf, "hours": "1"})
    assert ended.status_code == 409 and error_of(ended.text) == "ws4 cannot be extended: it has ended"
    assert 'id="extend-form"' not in ended.text


async def test_banner_inside_the_warning_window(hub):
    alice = await browser_login(hub, "alice")
    iid = await running(hub, alice, hours=1)
    assert 'id="expiry-warning"' not in (await alice.get(f"/instances/{iid}")).text
    hub.clock.offset = dt.timedelta(minutes=35)  # 25 min left: inside the 30 min window
    page = (await alice.get(f"/instances/{iid}")).text
    banner = re.search(r'<p class="notice warn" role="alert" id="expiry-warning">(.*?)</p>', page, re.S)
    assert banner, page
    text = " ".join(re.sub(r"<[^>]+>", "", banner.group(1)).split())
    said = r"^Expires soon: ws1 expires in 2[45] min and is stopped then\. Extend it by up to 23 h\.$"
    assert re.search(said, text), text
    assert 'href="#expires"' in banner.group(1)

    # extended out of the window: no banner
    assert (await alice.post(f"/instances/{iid}/extend", data={"csrf_token": alice.csrf,
                                                               "hours": "1"})).status_code == 303
    assert 'id="expiry-warning"' not in (await alice.get(f"/instances/{iid}")).text

    # at its maximum and inside the window: the banner says so, and offers no form
    full = await running(hub, alice, hours=2, template="desk")
    hub.clock.offset += dt.timedelta(hours=1, minutes=50)
    page = (await alice.get(f"/instances/{full}")).text
    assert 'id="expiry-warning"' in page and "It has its most time already (2 h): save your work." in page
    assert 'id="extend-form"' not in page


async def test_restart_with_a_new_size_from_the_instance_page(hub):
    alice = await browser_login(hub, "alice")
    old = await running(hub, alice, 1)
    page = (await alice.get(f"/instances/{old}")).text
    assert 'id="resize-form"' in page and '<option value="medium">' in page
    assert '<option value="small">' not in page  # its own size is not offered
    forged = await alice.post(f"/instances/{old}/restart", data={"size": "medium"})
    assert forged.status_code == 403
    bad = await alice.post(f"/instances/{old}/restart", data={"csrf_token": alice.csrf, "size": "huge"})
    assert bad.status_code == 422
    assert re.search(r'id="resize-size-error">must be one of: [^<]*medium', bad.text)
    assert (await hub.wait_status(hub.ops, old, {"running"}))["name"] == "ws1"  # the refusal changed nothing
    bob = await browser_login(hub, "bob")
    assert (await bob.post(f"/instances/{old}/restart", data={"csrf_token": bob.csrf, "size": "medium"})
            ).status_code == 403
    done = await alice.post(f"/instances/{old}/restart", data={"csrf_token": alice.csrf, "size": "medium"})
    assert done.status_code == 303
    new = done.headers["location"].split("/")[2]
    assert new != old
    running_new = await hub.wait_status(hub.ops, new, {"running"})
    assert running_new["name"] == "ws1" and running_new["size"] == "medium"
    assert (await hub.wait_status(hub.ops, old, {"stopped"}))["reason"] == "restart"
    assert 'id="resize-form"' not in (await alice.get(f"/instances/{old}")).text  # ended: nothing to restart


async def test_an_admin_launches_for_a_user_from_the_pages(hub):
    root = await browser_login(hub, "root", admin=True)
    alice = await browser_login(hub, "alice")
    users_page = (await root.get("/admin/users")).text
    assert 'href="/launch?for=alice"' in users_page
    assert 'href="/launch/jupyterlab?for=alice"' in (await root.get("/launch?for=alice")).text
    form = (await root.get("/launch/jupyterlab?for=alice")).text
    assert 'id="owner" name="owner" value="alice"' in form
    assert 'id="owner"' not in (await alice.get("/launch/jupyterlab?for=root")).text  # admins only

    nobody = await root.post("/launch/jupyterlab", data={"csrf_token": root.csrf, "name": "x", "size": "small",
                                                          "hours": "1", "owner": "nobody"})
    assert nobody.status_code == 422 and "no user named &#39;nobody&#39;" in nobody.text
    made = await root.post("/launch/jupyterlab", data={"csrf_token": root.csrf, "name": "for-alice",
                                                        "size": "small", "hours": "1", "owner": "alice"})
    assert made.status_code == 303, made.text
    iid = made.headers["location"].split("/")[2]
    ops = await hub.user("ops2", admin=True)
    assert (await hub.wait_status(ops, iid, {"running"}))["owner"] == "alice"
    # alice's own "owner" field is ignored: her launch is hers
    hers = await alice.post("/launch/jupyterlab", data={"csrf_token": alice.csrf, "name": "mine", "size": "small",
                                                         "hours": "1", "owner": "root"})
    assert hers.status_code == 303
    assert (await hub.wait_status(ops, hers.headers["location"].split("/")[2], {"running"}))["owner"] == "alice"
