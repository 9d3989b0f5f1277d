"""In a real browser: a service's page lists its models, fills the three ways to call it with what the
service reports, and draws its traffic as it happens (requests/s, errors, p50/p99 latency, totals);
making it public changes the calls.  The service is the stand-in model server of test_service_pages."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from tests.web.conftest import PASSWORD, PHONE, audit, screenshot
from tests.web.test_service_pages import site_templates

pytestmark = [pytest.mark.asyncio, pytest.mark.browser]

POINTS = "(id) => Number(document.querySelector(`#${id} path[data-series=requests]`)?.dataset.points || 0)"
DRAWN = "(id) => (document.querySelector(`#${id} path[data-series=requests]`)?.getAttribute('d') || '')" \
        ".split(/[ML]/).filter(s => s.trim()).length"


async def test_the_chart_draws_a_services_traffic_live(start_hub, sqlite_url, tmp_path, browser):
    hub = await start_hub(sqlite_url, templates_dir=site_templates(tmp_path))
    alice = await hub.user("alice", password=PASSWORD)
    made = await alice.http.post("/api/v1/instances", json={"template": "writer", "name": "train-1",
                                                            "params": {"files": "higgs.onnx,higgs.json"}})
    assert made.status_code == 201, made.text
    job = await hub.wait_status(alice, made.json()["id"], {"succeeded"})

    # the finished job's page offers its model; deploying it opens the new service's page
    web = await browser.user(hub.url)
    page = await web.login("alice")
    await page.goto(f"{hub.url}/instances/{job['id']}")
    deploy = page.locator("#deploy")
    await expect(deploy.get_by_label("Model")).to_have_value("higgs.onnx")
    await expect(deploy.get_by_label("Service name")).to_have_value("train-1-svc")
    await audit(page)
    await screenshot(page, "job-deploy")
    await deploy.get_by_label("Service name").fill("higgs")
    await deploy.get_by_role("button", name="Deploy").click()
    await expect(page).to_have_url(re.compile(r"/instances/[0-9a-f]{32}$"))
    service_id = page.url.rsplit("/", 1)[1]
    svc = await hub.wait_status(alice, service_id, {"running"})
    assert svc["params"] == {"model": "train-1/higgs.onnx"}
    caller = hub.instance_client(alice, svc)

    await expect(page.locator("#service-state")).to_have_text("Serving.")
    await expect(page.locator("#status")).to_have_text("running")
    await expect(page.locator("#service-url")).to_have_text(svc["url"])
    models = page.locator("#models-table tbody tr")
    await expect(models).to_have_count(1)
    await expect(models.first.locator("th, td")).to_have_text(["higgs", "1", "1", "onnx"])
    # the calls now name what the service reported: its first model, and the keys /json takes
    await expect(page.locator("#call-tfaas")).to_contain_text('"keys": ["pt", "eta"], "values": [0.0, 0.0], '
                                                              '"model": "higgs"')
    await expect(page.locator("#call-v2")).to_contain_text(f"{svc['url']}v2/models/higgs/infer")
    await expect(page.locator("#call-v1")).to_contain_text("Authorization: Bearer $TOKEN")

    # traffic: 6 answered, 1 refused (not JSON); the totals and the chart follow
    for _ in range(6):
        assert (await caller.post("/v2/models/higgs/infer", json={"sleep": 0.02})).status_code == 200
    assert (await caller.post("/json", content=b"not json")).status_code == 400
    await expect(page.locator("#stat-requests")).to_have_text("7", timeout=15_000)
    await expect(page.locator("#stat-errors")).to_have_text("1")
    await page.wait_for_function(f"() => ({DRAWN})('rate-chart') >= 2", timeout=15_000)
    await expect(page.locator("#latency-chart path[data-series=p50]")).to_have_attribute("d", re.compile(r"^M\d"))
    p50 = await page.locator("#stat-p50").text_content()
    assert p50.endswith(" ms") and 5 <= float(p50.split()[0]) <= 100, p50  # about 20 ms, from the buckets
    await expect(page.locator("#rate-legend")).to_contain_text("requests/s")
    await expect(page.locator("#latency-legend")).to_contain_text("p99")
    await audit(page)
    await screenshot(page, "service")

    # it keeps reading: more points, and more requests counted
    before = await page.evaluate(f"() => ({POINTS})('rate-chart')")
    for _ in range(3):
        assert (await caller.post("/v1/models/higgs:predict", json={"instances": [[1, 2]]})).status_code == 200
    await expect(page.locator("#stat-requests")).to_have_text("10", timeout=15_000)
    await page.wait_for_function(f"() => ({POINTS})('rate-chart') > {before}", timeout=15_000)

    # one model version's traffic alone
    await expect(page.locator("#traffic-model")).to_be_hidden()  # one version so far: nothing to choose
    for _ in range(2):
        assert (await caller.post("/v2/models/higgs/versions/2/infer", json={})).status_code == 200
    await expect(page.locator("#stat-requests")).to_have_text("12", timeout=15_000)
    await expect(page.locator("#traffic-model option")).to_have_text(["every model", "higgs@1", "higgs@2"])
    await page.get_by_label("Of").select_option("higgs@2")
    await expect(page.locator("#stat-requests")).to_have_text("2")
    await expect(page.locator("#stat-errors")).to_have_text("0")
    await page.get_by_label("Of").select_option("")
    await expect(page.locator("#stat-requests")).to_have_text("12")

    # public: a button, with the warning beside it; then the calls need no token
    await expect(page.locator("#public-warning")).to_contain_text("anyone who finds the address can call it")
    await page.get_by_role("button", name="Make public").click()
    await expect(page.locator("#service-access")).to_contain_text("Anyone may call its inference routes")
    await expect(page.get_by_role("button", name="Make private")).to_be_visible()
    await expect(page.locator("#call-tfaas")).to_contain_text('"model": "higgs"')
    await expect(page.locator("#call-tfaas")).not_to_contain_text("Authorization")
    assert (await hub.instance_client(None, svc).post("/v2/models/higgs/infer", json={})).status_code == 200
    await expect(page.locator("#stat-requests")).to_have_text("13", timeout=15_000)

    await page.set_viewport_size(PHONE)
    await audit(page)  # the long commands scroll inside their boxes, not the page
    assert web.errors() == [], web.errors()


async def test_the_launch_form_of_a_service(start_hub, sqlite_url, tmp_path, browser):
    hub = await start_hub(sqlite_url, templates_dir=site_templates(tmp_path))
    alice = await hub.user("alice", password=PASSWORD)
    up = await alice.http.post("/api/v1/folders/models/upload", params={"filename": "clf.skops"}, content=b"m")
    assert up.status_code == 201, up.text
    web = await browser.user(hub.url)
    page = await web.login("alice")
    await page.goto(f"{hub.url}/launch/model-service")
    options = page.locator("#param-model-choices option")
    await expect(options).to_have_count(1)
    await expect(options.first).to_have_attribute("value", "folder:models/clf.skops")
    await page.get_by_role("combobox", name="Model").fill("folder:models/clf.skops")
    await page.get_by_label("Sleep when idle").check()
    await audit(page)
    await screenshot(page, "launch-service")
    await page.get_by_role("button", name="Launch", exact=True).click()
    await expect(page).to_have_url(re.compile(r"/instances/[0-9a-f]{32}$"))  # its page, not the progress page
    await expect(page.locator("#service-idle")).to_contain_text("Sleeps after 30 s without requests")
    await expect(page.locator("#service-state")).to_have_text("Serving.", timeout=20_000)
    assert web.errors() == [], web.errors()
