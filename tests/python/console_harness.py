"""The browser harness of the console tests (test_console*.py): the web console at `/` in a real browser: Debian's chromium, headless, driven by Playwright
(PyPI) against the real `openlora serve` binary, the SmolLM2 model (`--dtype f32`, the exact
path) and the demo adapters, with metering on (a SQLite ledger, the pirate adapter's datanet
built from its training chats). Every expected value comes from the server's own API, asked
independently of the page: the greedy answers from `/v1/chat/completions`, receipts from
`/v1/receipts/{id}`, tiers and pins from `/v1/adapters`, figures from `/metrics`, fine-tuning jobs
and their losses from `/v1/fine_tuning/jobs/...` (the Model Factory under `--data-dir`, training
for real on the demo model). Error banners come from real conditions: wrong or missing keys, a
refused caller, a really full queue, a chain RPC that does not answer (503), a payer without a
deposit on a real anvil chain (402) and an adapter whose weights do not match its on-chain
registration (403 adapter_refused).

Screenshots go to $OPENLORA_SCREENSHOT_DIR when set (docs/screenshots/ holds the committed ones),
else to a temp folder."""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from conftest import ADMIN, ALICE, KEY_ARGS, launch_server, stop_server, wait_ready
from olutil import REPO

CHROMIUM = os.environ.get("OPENLORA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PIRATE_OWNER = json.loads((REPO / "adapters/pirate/manifest.json").read_text())["owner"]
CONTRIBUTORS = ["0x00000000000000000000000000000000000C0001", "0x00000000000000000000000000000000000C0002"]
PROMPT = "What is the capital of France?"  # a question of the demo adapters' training chats
MAX_TOKENS = 24
STREAM_TIMEOUT_MS = 180_000
FT_TIMEOUT_MS = 600_000


def _training_chats() -> list[str]:
    """The pirate adapter's training answers, rebuilt from adapters/train_demo.py's literals (the
    script itself needs torch): its QA list through its pirate() rewrite."""
    tree = ast.parse((REPO / "adapters/train_demo.py").read_text())
    lit = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("QA", "PIRATE_WORDS", "PIRATE_OPEN"):
                lit[name] = ast.literal_eval(node.value)
    out = []
    for i, (_, answer, _) in enumerate(lit["QA"]):
        s = answer
        for pat, rep in lit["PIRATE_WORDS"]:
            s = re.sub(pat, rep, s)
        out.append(f"{lit['PIRATE_OPEN'][i % len(lit['PIRATE_OPEN'])]} {s.rstrip('.')}, arr!")
    return out


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = Path(os.environ.get("OPENLORA_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def metered(tmp_path_factory):
    work = tmp_path_factory.mktemp("console")
    datanets = work / "datanets"
    datanets.mkdir()
    records = _training_chats()
    with open(datanets / "datanet-pirate-chats.jsonl", "w") as f:
        for i, text in enumerate(records):
            f.write(json.dumps({"text": text, "contributor": CONTRIBUTORS[i % 2]}) + "\n")
    extra = ["--dtype", "f32", "--ledger", str(work / "ledger.sqlite"), "--datanets-dir", str(datanets),
             "--attribution-min-span", "4", "--adapter-roots", str(work), "--data-dir", str(work / "factory")]
    srv = launch_server(work, KEY_ARGS + extra)
    try:
        yield wait_ready(srv), records
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing (apt-get install chromium; scripts/test.sh does)"
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM,
            headless=True, args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        try:
            yield ctx
        finally:
            ctx.close()


class Console:
    """One tab on the console, recording console errors, page errors and responses."""

    def __init__(self, page: Page, url: str):
        self.page, self.url = page, url
        self.errors: list[str] = []
        self.responses = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("response", lambda r: self.responses.append(r))

    def open(self, hash_: str = "", api_key: str = ALICE, admin_key: str = ""):
        """Opens the console, gives the keys as a user does, then goes to page `hash_`."""
        self.page.goto(f"{self.url}/")
        self.page.fill("#api-key", api_key)
        self.page.fill("#admin-key", admin_key)
        self.page.click("#keys button[type=submit]")
        if hash_:
            self.page.click(f"nav a[href='{hash_}']")
        return self

    def wait_models(self):
        expect(self.page.locator("#model-a option")).not_to_have_count(0)

    def run(self) -> None:
        self.page.click("#run")
        for pane in self.page.locator(".pane").all():
            expect(pane).to_have_attribute("data-state", re.compile("done|error"), timeout=STREAM_TIMEOUT_MS)

    def no_errors(self, allowed: tuple[str, ...] = ()):
        bad = [e for e in self.errors if not any(a in e for a in allowed)]
        assert not bad, bad


@pytest.fixture
def console(browser_context, metered):
    page = browser_context.new_page()
    c = Console(page, metered[0].url)
    try:
        yield c
    finally:
        page.close()


def api_answer(srv, **body) -> str:
    body = {"messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": MAX_TOKENS, **body}
    r = srv.http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {ALICE}"}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def set_prompt(page: Page):
    page.fill("#prompt", PROMPT)
    page.fill("#max-tokens", str(MAX_TOKENS))
    page.fill("#temperature", "0")


def _admin_adapters(srv, **params) -> dict:
    r = srv.http.get("/v1/adapters", params=params, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200, r.text
    return r.json()


def _adapter(srv, name: str) -> dict:
    return [a for a in _admin_adapters(srv, q=name)["data"] if a["id"] == name][0]
