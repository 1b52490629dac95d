"""The web console's pages in a real browser (see console_harness.py for the setup): first load,
playground, compare, mix and JSON schema, receipt, adapters (tiers, pin, paging over 10,000),
banners for 401, 403 and 429, the server page, phone width, --no-webui."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import expect

from conftest import ADMIN, ALICE, KEY_ARGS, launch_server, stop_server, wait_ready
from console_harness import (  # noqa: F401 (fixtures are used by name)
    CONTRIBUTORS, PIRATE_OWNER, STREAM_TIMEOUT_MS, Console, _adapter, _admin_adapters, api_answer,
    browser_context, console, metered, set_prompt, shots,
)
from olutil import REPO, parse_metrics


def test_first_load_is_small_embedded_and_locked_down(browser_context, metered, shots):
    srv = metered[0]
    page = browser_context.new_page()
    c = Console(page, srv.url)
    first = page.goto(f"{srv.url}/")
    page.fill("#api-key", ALICE)
    page.click("#keys button[type=submit]")
    c.wait_models()
    page.wait_for_load_state("networkidle")
    csp = first.headers["content-security-policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'",
                      "frame-ancestors 'none'"):
        assert directive in csp, csp
    assert "unsafe-inline" not in csp and "http" not in csp
    assert first.headers["x-content-type-options"] == "nosniff"
    # Each asset is the file under webui/, byte for byte, and from this origin only.
    total = 0
    for r in c.responses:
        assert r.url.startswith(srv.url), r.url
        body = r.body()
        total += len(body) + sum(len(k) + len(v) + 4 for k, v in r.headers.items())
        path = r.url[len(srv.url):]
        if path.startswith("/ui/"):
            assert body == (REPO / "webui" / path[4:]).read_bytes(), path
    assert total < 200_000, f"first load transferred {total} bytes"
    assert any(r.url.endswith("/ui/app.js") for r in c.responses)
    page.screenshot(path=str(shots / "playground-empty.png"))
    c.no_errors()
    # Unknown console files are JSON 404s, like any unknown route.
    r = srv.http.get("/ui/../Cargo.toml")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    page.close()


def test_every_control_is_labelled_and_reachable_by_keyboard(console):
    page = console.open().page
    console.wait_models()
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
        .filter(e => e.offsetParent !== null)
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map(e => e.outerHTML)""")
    assert unlabelled == []
    set_prompt(page)
    page.focus("#prompt")
    for _ in range(20):
        if page.evaluate("document.activeElement.id") == "run":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "run"
    page.keyboard.press("Enter")
    expect(page.locator("#pane-a")).to_have_attribute("data-state", "done", timeout=STREAM_TIMEOUT_MS)
    console.no_errors()


def test_playground_streams_and_the_adapter_changes_the_answer(console, metered, shots):
    srv = metered[0]
    page = console.open().page
    console.wait_models()
    set_prompt(page)
    answers = {}
    for target in (srv.base_model, "pirate"):
        page.select_option("#model-a", target)
        # Count the output's text insertions while it streams.
        page.evaluate("""() => { window.__chunks = 0; new MutationObserver((ms) => {
            for (const m of ms) for (const n of m.addedNodes) if (n.parentElement && n.parentElement.matches('#pane-a .output')) window.__chunks++;
        }).observe(document.getElementById('panes'), {childList: true, subtree: true}); }""")
        console.run()
        pane = page.locator("#pane-a")
        expect(pane).to_have_attribute("data-state", "done")
        answers[target] = pane.locator(".output").inner_text()
        assert answers[target] == api_answer(srv, model=target)
        assert page.evaluate("window.__chunks") > 3, "the answer arrived in one piece, not streamed"
        ttft = pane.locator(".ttft").inner_text()
        assert re.fullmatch(r"\d+ ms", ttft), ttft
        assert float(pane.locator(".tps").inner_text()) > 0
    assert answers["pirate"] != answers[srv.base_model]
    page.screenshot(path=str(shots / "playground.png"), full_page=True)
    console.no_errors()


def test_two_panes_compare_two_adapters(console, metered, shots):
    srv = metered[0]
    page = console.open().page
    console.wait_models()
    set_prompt(page)
    page.check("#compare")
    page.select_option("#model-a", "pirate")
    page.select_option("#model-b", "french")
    console.run()
    a = page.locator("#pane-a .output").inner_text()
    b = page.locator("#pane-b .output").inner_text()
    assert a == api_answer(srv, model="pirate")
    assert b == api_answer(srv, model="french")
    assert a != b
    page.screenshot(path=str(shots / "compare.png"), full_page=True)
    console.no_errors()


def test_weighted_mix_and_json_schema_mode(console, metered):
    srv = metered[0]
    page = console.open().page
    console.wait_models()
    set_prompt(page)
    page.select_option("#model-a", label="Weighted mix\u2026")
    rows = page.locator("#target-a .mix-row")
    expect(rows).to_have_count(2)
    rows.nth(0).locator("select").select_option("pirate")
    rows.nth(1).locator("select").select_option("shouty")
    rows.nth(0).locator("input").fill("0.7")
    rows.nth(1).locator("input").fill("0.3")
    page.check("#json-mode")
    console.run()
    out = page.locator("#pane-a .output").inner_text()
    schema = json.loads(page.input_value("#json-schema"))
    want = api_answer(srv, model=srv.base_model,
                      adapters=[{"id": "pirate", "weight": 0.7}, {"id": "shouty", "weight": 0.3}],
                      response_format={"type": "json_schema",
                                       "json_schema": {"name": "console", "schema": schema, "strict": True}})
    assert out == want
    if page.locator("#pane-a .output.json-ok").count():
        assert "answer" in json.loads(out)
    else:  # cut by max_tokens: the page says it is not (yet) valid JSON
        with pytest.raises(json.JSONDecodeError):
            json.loads(out)
    console.no_errors()


def test_receipt_shows_the_charge_and_split_of_the_ledger(console, metered, shots):
    srv, records = metered
    page = console.open().page
    console.wait_models()
    set_prompt(page)
    page.select_option("#model-a", "pirate")
    console.run()
    pane = page.locator("#pane-a")
    request_id = pane.get_attribute("data-request-id")
    assert request_id and request_id.startswith("chatcmpl-")
    r = srv.http.get(f"/v1/receipts/{request_id}", headers={"Authorization": f"Bearer {ALICE}"})
    assert r.status_code == 200, r.text
    want = r.json()
    box = pane.locator(".receipt-box")
    expect(box).to_have_attribute("data-request-id", request_id)
    assert box.locator(".receipt-cost").get_attribute("data-wei") == want["receipt"]["cost"]
    assert int(want["receipt"]["cost"]) > 0
    shown = {row.get_attribute("data-to").lower(): (row.get_attribute("data-amount"), row.locator(".role").inner_text())
             for row in box.locator("tr.split").all()}
    assert {k: v[0] for k, v in shown.items()} == {s["to"].lower(): s["amount"] for s in want["splits"]}
    assert "owner" in shown[PIRATE_OWNER.lower()][1]
    contributors = {c.lower() for d in want["attribution"] for c, _ in d["contributors"]}
    assert contributors and contributors <= {c.lower() for c in CONTRIBUTORS}
    for c in contributors:
        assert "contributor" in shown[c][1]
    # Attributed spans: the receipt has them for this training question, and each highlighted
    # piece of the answer is text of the datanet's records.
    spans = [s for d in want["attribution"] for s in d.get("spans", []) if s["choice"] == 0]
    assert spans, want["attribution"]
    marks = pane.locator(".output mark.span").all_inner_texts()
    assert len(marks) >= 1
    for m in marks:
        assert any(m.strip() in rec for rec in records), m
    assert pane.locator(".output").inner_text() == api_answer(srv, model="pirate")
    page.screenshot(path=str(shots / "receipt.png"), full_page=True)
    console.no_errors()


def test_adapters_page_shows_a_tier_change_after_a_page_in(console, metered, shots):
    srv = metered[0]
    # A fresh adapter (a copy of shouty): registered, never used, so its weights are on disk.
    src = REPO / "adapters/shouty"
    dst = srv.adapters_dir.parent / "tiercheck"
    shutil.copytree(src, dst)
    r = srv.load_adapter("tiercheck", dst)
    assert r.status_code == 200, r.text
    page = console.open("#adapters", admin_key=ADMIN).page
    page.fill("#adapter-search", "tiercheck")
    row = page.locator("#adapter-table tbody tr[data-adapter=tiercheck]")
    expect(row).to_have_attribute("data-tier", "disk")
    before = [a for a in _admin_adapters(srv, q="tiercheck")["data"] if a["id"] == "tiercheck"][0]
    assert before["tier"] == "disk"
    api_answer(srv, model="tiercheck", max_tokens=2)
    after = [a for a in _admin_adapters(srv, q="tiercheck")["data"] if a["id"] == "tiercheck"][0]
    assert after["tier"] != "disk"
    page.click("#adapter-refresh")
    expect(row).to_have_attribute("data-tier", after["tier"])
    assert row.locator("td.tier").inner_text() == after["tier"]
    # The page also polls: a poll between the page-in and the call's count shows the new tier with
    # the old count, so wait for the refreshed count rather than read it once.
    expect(row.locator("td.num").nth(1)).to_have_text(str(after["requests_served"]))
    assert after["requests_served"] == 1
    # Owner and price from the manifest (metering on).
    manifest = json.loads((src / "manifest.json").read_text())
    assert after["terms"]["owner"].lower() == manifest["owner"].lower()
    page.fill("#adapter-search", "")
    expect(page.locator("#adapter-table tbody tr")).to_have_count(len(_admin_adapters(srv)["data"]))
    page.screenshot(path=str(shots / "adapters.png"), full_page=True)
    console.no_errors()


def test_admin_action_without_the_admin_key_shows_401_and_changes_nothing(console, metered):
    srv = metered[0]
    page = console.open("#adapters").page  # the API key only
    row = page.locator("#adapter-table tbody tr[data-adapter=french]")
    expect(row).to_have_count(1)  # names from /v1/models
    banner = page.locator("#banner")
    expect(banner).to_be_hidden()  # the listing fell back to names without an error
    row.locator("button.unload").click()
    expect(banner).to_be_visible()
    expect(banner).to_have_attribute("data-status", "401")
    assert "admin key" in banner.inner_text()
    models = srv.http.get("/v1/models", headers={"Authorization": f"Bearer {ALICE}"}).json()
    assert "french" in [m["id"] for m in models["data"]]
    assert "french" in [a["id"] for a in _admin_adapters(srv)["data"]]
    # The only console errors are the browser's notes about the refused (401) calls.
    console.no_errors(allowed=("status of 401",))


def test_pin_needs_the_admin_key_and_keeps_the_adapter_on_device(console, metered, shots):
    srv = metered[0]
    name = "shouty"
    assert _adapter(srv, name)["pinned"] is False
    # Without the admin key: the 401 banner, and the server's state is unchanged.
    page = console.open("#adapters").page
    row = page.locator(f"#adapter-table tbody tr[data-adapter={name}]")
    row.locator("button.pin").click()
    banner = page.locator("#banner")
    expect(banner).to_have_attribute("data-status", "401")
    assert "admin key" in banner.inner_text()
    assert _adapter(srv, name)["pinned"] is False
    console.no_errors(allowed=("status of 401",))
    console.errors.clear()
    # With the admin key: pinned, paged in, shown so; then unpinned again.
    console.open("#adapters", admin_key=ADMIN)
    page.fill("#adapter-search", name)
    expect(row).to_have_attribute("data-pinned", "false")
    expect(banner).to_be_hidden()
    row.locator("button.pin").click()
    expect(row).to_have_attribute("data-pinned", "true")
    expect(row.locator("td.pinned")).to_contain_text("pinned")
    deadline = time.monotonic() + 60
    while (a := _adapter(srv, name))["tier"] != "device":
        assert time.monotonic() < deadline, a
        time.sleep(0.1)
    assert a["pinned"] is True
    page.click("#adapter-refresh")
    expect(row).to_have_attribute("data-tier", "device")
    page.screenshot(path=str(shots / "adapters-pinned.png"), full_page=True)
    row.locator("button.pin").click()
    expect(row).to_have_attribute("data-pinned", "false")
    assert _adapter(srv, name)["pinned"] is False
    console.no_errors()
    # The API itself: an API key is not the admin key (403), an unknown adapter is a 404.
    for key, body, status in ((ALICE, {"lora_name": name}, 403), (ADMIN, {"lora_name": "nope"}, 404),
                              (ADMIN, {"name": name}, 400)):
        r = srv.http.post("/v1/pin_lora_adapter", json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == status and "message" in r.json()["error"], (key, body, r.text)
    assert _adapter(srv, name)["pinned"] is False


def test_api_errors_show_a_banner(console, metered):
    page = console.open(api_key="sk-wrong").page
    banner = page.locator("#banner")
    expect(banner).to_have_attribute("data-status", "401")
    console.no_errors(allowed=("status of 401",))


def test_a_refused_call_shows_403_and_a_full_queue_429(browser_context, metered, tmp_path):
    # Metered calls need a key billed to a payer: the admin key is not one (403).
    page = browser_context.new_page()
    c = Console(page, metered[0].url).open(api_key=ADMIN)
    c.wait_models()
    set_prompt(page)
    c.run()
    expect(page.locator("#banner")).to_have_attribute("data-status", "403")
    expect(page.locator("#pane-a")).to_have_attribute("data-state", "error")
    c.no_errors(allowed=("status of 403",))
    page.close()
    # A full queue refuses calls (429): one sequence at a time, a queue of one, both taken by
    # long calls made here.
    srv = launch_server(tmp_path, ["--max-num-seqs", "1"], max_queue=1)
    try:
        wait_ready(srv, key=None)
        long_call = {"model": srv.base_model, "prompt": "Once upon a time", "max_tokens": 400,
                     "ignore_eos": True, "temperature": 0}
        with ThreadPoolExecutor(2) as pool:
            busy = [pool.submit(srv.http.post, "/v1/completions", json=long_call, timeout=300) for _ in range(2)]
            deadline = time.monotonic() + 60
            while parse_metrics(srv.metrics_text())["openlora_queue_length"][0][1] < 1:
                assert time.monotonic() < deadline, "the second call never queued"
                time.sleep(0.05)
            page = browser_context.new_page()
            c = Console(page, srv.url).open(api_key="")
            c.wait_models()
            c.run()
            expect(page.locator("#banner")).to_have_attribute("data-status", "429")
            assert "retry" in page.locator("#banner").inner_text()
            c.no_errors(allowed=("status of 429",))
            page.close()
            assert [f.result().status_code for f in busy] == [200, 200]
    finally:
        stop_server(srv)


def test_server_page_charts_the_servers_metrics(console, metered, shots):
    srv = metered[0]
    page = console.open("#server").page
    for key in ("throughput", "requests", "queue", "kv", "pageins", "hitrate", "backlog"):
        expect(page.locator(f"#card-{key} svg polyline")).to_have_count(1)
    # Traffic while the page scrapes: a page-in (miss), then hits, on two concurrent streams.
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda m: [api_answer(srv, model=m) for _ in range(2)], ["pirate", "french"]))
    # Once idle, two more scrapes; the figures are then the server's current ones: compare them
    # with /metrics read here.
    page.wait_for_timeout(4500)
    assert float(page.locator("#card-throughput").get_attribute("data-value")) == 0
    points = page.locator("#card-throughput polyline").get_attribute("points").split()
    assert max(36 - float(p.split(",")[1]) for p in points) > 10, "the chart never showed the tokens/s"
    m = parse_metrics(srv.metrics_text())
    device = sum(v for labels, v in m["openlora_adapters_resident"] if labels["tier"] == "device")
    assert device > 0
    expect(page.locator("#card-pageins .value")).to_contain_text(f"resident: {device:.0f} device")
    hits = sum(v for _, v in m["openlora_adapter_hits_total"])
    lookups = hits + sum(v for _, v in m["openlora_adapter_misses_total"])
    assert 0 < hits < lookups
    assert float(page.locator("#card-hitrate").get_attribute("data-value")) == pytest.approx(hits / lookups)
    unsettled = m["openlora_ledger_unsettled_records"][0][1]
    assert float(page.locator("#card-backlog").get_attribute("data-value")) == unsettled
    kv = float(page.locator("#card-kv").get_attribute("data-value"))
    assert kv == m["openlora_kv_cache_usage_ratio"][0][1]
    page.screenshot(path=str(shots / "server.png"), full_page=True)
    console.no_errors()


def test_phone_width_has_no_horizontal_scroll(browser_context, metered, shots):
    page = browser_context.new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    c = Console(page, metered[0].url).open(admin_key=ADMIN)
    c.wait_models()
    for h in ("#playground", "#adapters", "#server", "#finetune"):
        page.click(f"nav a[href='{h}']")
        expect(page.locator(f"#page-{h[1:]}")).to_be_visible()
        page.wait_for_timeout(300)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), h
    page.click("nav a[href='#playground']")
    page.screenshot(path=str(shots / "phone.png"))
    c.no_errors()
    page.close()


def test_console_off_with_no_webui(tmp_path):
    srv = launch_server(tmp_path, ["--no-webui"])
    try:
        wait_ready(srv, key=None)
        for path in ("/", "/ui/app.js"):
            r = srv.http.get(path)
            assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error", path
    finally:
        stop_server(srv)


# --- 10,000 adapters: search and paging stay fast ---

N_MANY = 10_000


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    work = tmp_path_factory.mktemp("console-many")
    src = REPO / "adapters/pirate"
    for i in range(N_MANY):
        d = work / "adapters" / f"a{i:05d}"
        d.mkdir(parents=True)
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            os.link(src / f, d / f)
    srv = launch_server(work, KEY_ARGS)
    try:
        yield wait_ready(srv)
    finally:
        stop_server(srv)


def test_ten_thousand_adapters_search_and_page_fast(browser_context, crowded, shots):
    page = browser_context.new_page()
    c = Console(page, crowded.url).open("#adapters", admin_key=ADMIN)
    rows = page.locator("#adapter-table tbody tr")
    expect(rows).to_have_count(50)
    everything = _admin_adapters(crowded)["data"]
    names = [a["id"] for a in everything]
    assert len(names) == N_MANY + 3 and names == sorted(names)
    assert rows.nth(0).get_attribute("data-adapter") == names[0]
    expect(page.locator("#adapter-page-info")).to_have_text(f"1\u201350 of {len(names)}")
    t0 = time.monotonic()
    page.click("#adapter-next")
    expect(rows.nth(0)).to_have_attribute("data-adapter", names[50])
    assert time.monotonic() - t0 < 2.0
    t0 = time.monotonic()
    page.fill("#adapter-search", "a0777")
    want = [n for n in names if "a0777" in n]
    expect(rows).to_have_count(len(want))
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.adapter)") == want
    assert time.monotonic() - t0 < 2.0
    page.screenshot(path=str(shots / "adapters-10k.png"))
    c.no_errors()
    page.close()


def test_adapter_list_pages_and_searches_like_the_full_list(metered):
    srv = metered[0]
    full = _admin_adapters(srv)
    names = [a["id"] for a in full["data"]]
    assert full["total"] == len(names) >= 3 and full["offset"] == 0
    paged = []
    for offset in range(0, len(names) + 2, 2):
        page = _admin_adapters(srv, offset=offset, limit=2)
        assert page["total"] == len(names) and page["offset"] == min(offset, len(names))
        paged += [a["id"] for a in page["data"]]
    assert paged == names
    hits = _admin_adapters(srv, q="RaT")  # case-insensitive substring
    assert [a["id"] for a in hits["data"]] == [n for n in names if "rat" in n.lower()] == ["pirate"]
    assert hits["total"] == 1
    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "x"}):
        r = srv.http.get("/v1/adapters", params=bad, headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", (bad, r.text)
