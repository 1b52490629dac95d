"""The console's fine-tuning page against the Model Factory (real training on the demo model):
upload, start, the loss chart against the job's events, Try it, cancel."""

from __future__ import annotations

import json
import re
from pathlib import Path

from playwright.sync_api import Page, expect

from conftest import ADMIN
from console_harness import (  # noqa: F401 (fixtures are used by name)
    FT_TIMEOUT_MS, api_answer, browser_context, console, metered, set_prompt, shots,
)


# --- Fine-tuning (the Model Factory's OpenAI fine-tuning API) ---

FT_CHATS = [
    ("What colour is the sky?", "Blue, says the console parrot."),
    ("Name a fruit.", "Apple, says the console parrot."),
    ("What is two plus two?", "Four, says the console parrot."),
    ("Where do fish live?", "In water, says the console parrot."),
]


def _admin_get(srv, path: str, **params) -> dict:
    r = srv.http.get(path, params=params, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200, r.text
    return r.json()


def _job_events(srv, job_id: str) -> list[dict]:
    out, after = [], None
    while True:
        page = _admin_get(srv, f"/v1/fine_tuning/jobs/{job_id}/events", limit=100, **({"after": after} if after else {}))
        out += page["data"]
        if not page["has_more"]:
            return out
        after = page["data"][-1]["id"]


def _start_job(page: Page, srv, tmp_path: Path, epochs: int, suffix: str) -> str:
    data = tmp_path / f"{suffix}.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in FT_CHATS))
    page.set_input_files("#ft-file", str(data))
    page.click("#ft-upload")
    expect(page.locator("#ft-training-file")).to_have_value(re.compile(r"^file-"))
    file_id = page.input_value("#ft-training-file")
    r = srv.http.get(f"/v1/files/{file_id}/content", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200 and r.content == data.read_bytes()
    expect(page.locator("#ft-model option")).to_have_count(1)
    assert page.input_value("#ft-model") == srv.base_model
    for sel, v in (("#ft-epochs", epochs), ("#ft-batch", 2), ("#ft-lrm", 10), ("#ft-rank", 4), ("#ft-seed", 7)):
        page.fill(sel, str(v))
    page.fill("#ft-suffix", suffix)
    page.click("#ft-start")
    expect(page.locator("#ft-job-id")).to_have_text(re.compile(r"^ftjob-"))
    job_id = page.locator("#ft-job-id").inner_text()
    job = _admin_get(srv, f"/v1/fine_tuning/jobs/{job_id}")
    assert job["training_file"] == file_id and job["model"] == srv.base_model
    assert job["hyperparameters"]["n_epochs"] == epochs and job["hyperparameters"]["batch_size"] == 2
    return job_id


def test_fine_tuning_job_from_the_page_charts_its_loss_and_ends_in_try_it(console, metered, shots, tmp_path):
    srv = metered[0]
    page = console.open("#finetune", admin_key=ADMIN).page
    job_id = _start_job(page, srv, tmp_path, epochs=2, suffix="parrot")
    expect(page.locator("#ft-job")).to_have_attribute("data-status", "succeeded", timeout=FT_TIMEOUT_MS)
    job = _admin_get(srv, f"/v1/fine_tuning/jobs/{job_id}")
    assert job["status"] == "succeeded" and job["fine_tuned_model"]
    # The chart is the job's training losses by step, as its events report them.
    losses = sorted({e["data"]["step"]: e["data"]["train_loss"] for e in _job_events(srv, job_id)
                     if e["type"] == "metrics" and "train_loss" in (e.get("data") or {})}.items())
    assert len(losses) >= 2, losses
    svg = page.locator("#ft-chart-box svg")
    expect(svg).to_have_attribute("data-points", str(len(losses)))
    assert len(svg.locator("polyline").get_attribute("points").split()) == len(losses)
    assert f"step {losses[-1][0]}: {losses[-1][1]:.4f}" in page.locator("#ft-loss").inner_text()
    expect(page.locator(f"#ft-jobs tr[data-job={job_id}]")).to_contain_text("succeeded")
    page.screenshot(path=str(shots / "finetune.png"), full_page=True)
    # "Try it": the playground on the new adapter, answering as the API does for that model.
    page.click("#ft-try")
    expect(page.locator("#page-playground")).to_be_visible()
    adapter = job["fine_tuned_model"].split(":", 1)[1]
    assert page.input_value("#model-a") == adapter
    set_prompt(page)
    console.run()
    out = page.locator("#pane-a .output").inner_text()
    assert out == api_answer(srv, model=job["fine_tuned_model"]) == api_answer(srv, model=adapter)
    console.no_errors()


def test_fine_tuning_job_cancel_from_the_page(console, metered, tmp_path):
    srv = metered[0]
    page = console.open("#finetune", admin_key=ADMIN).page
    job_id = _start_job(page, srv, tmp_path, epochs=50, suffix="cancelme")
    page.click("#ft-cancel")
    expect(page.locator("#ft-job")).to_have_attribute("data-status", "cancelled", timeout=FT_TIMEOUT_MS)
    job = _admin_get(srv, f"/v1/fine_tuning/jobs/{job_id}")
    assert job["status"] == "cancelled" and job["fine_tuned_model"] is None
    expect(page.locator("#ft-try")).to_be_hidden()
    expect(page.locator("#ft-cancel")).to_be_disabled()
    console.no_errors()
