"""Console error banners from a real chain (anvil): 503 while the RPC does not answer, 402 for a
payer without a deposit, 403 for an adapter whose weights do not match its registration."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

from playwright.sync_api import expect

from conftest import ALICE, KEY_ARGS, _free_port, launch_server, stop_server, wait_ready
from console_harness import Console, browser_context, set_prompt, shots  # noqa: F401 (fixtures)
from olutil import REPO, env_bin


# --- 503, 402 and 403 from a real chain: the RPC down, a payer without a deposit, a tampered adapter ---

DEV_KEY_0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil's public dev keys
DEV_KEY_1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


def _foundry(tool: str) -> str:
    npm = REPO / f"contracts/node_modules/@foundry-rs/{tool}-linux-amd64/bin/{tool}"
    found = str(npm) if npm.is_file() else shutil.which(tool)
    assert found, f"{tool} missing (bash contracts/ci.sh installs it; scripts/test.sh runs that)"
    return found


def _chat_status(srv, model: str = "pirate") -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return srv.http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {ALICE}"}).status_code


def _banner_after_run(browser_context, srv, status: str, words: str):
    page = browser_context.new_page()
    c = Console(page, srv.url).open()
    c.wait_models()
    set_prompt(page)
    page.select_option("#model-a", "pirate")  # priced by its manifest (a base-model call costs 0)
    c.run()
    banner = page.locator("#banner")
    expect(banner).to_have_attribute("data-status", status)
    assert words in banner.inner_text(), banner.inner_text()
    expect(page.locator("#pane-a")).to_have_attribute("data-state", "error")
    c.no_errors(allowed=(f"status of {status}",))
    return page


def test_chain_down_shows_503_no_deposit_402_and_a_tampered_adapter_403(browser_context, tmp_path, shots):
    """Metering against a chain RPC that does not answer yet: the payer's deposit was never read,
    so calls are refused with a 503 (a real upstream failure). Then anvil comes up on that port and
    the contracts are deployed where the server expects them; the payer has deposited nothing, so
    calls to the priced pirate adapter are refused with a 402 insufficient_quota. Last, an adapter
    registered on chain with other weights than its files is refused at page-in (403
    adapter_refused)."""
    port = _free_port()
    rpc = f"http://127.0.0.1:{port}"
    # Dev account 0's first three contracts: Settlement, DatanetRegistry, AdapterRegistry.
    settlement = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    datanets = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
    registry = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"
    (tmp_path / "operator.key").write_text(DEV_KEY_1)
    srv = launch_server(tmp_path, KEY_ARGS + [
        "--dtype", "f32", "--ledger", str(tmp_path / "ledger.sqlite"), "--chain-rpc", rpc,
        "--settlement-address", settlement, "--operator-key-file", str(tmp_path / "operator.key"),
        "--deposit-refresh-secs", "1", "--settle-interval-secs", "1", "--adapter-registry-address", registry,
        "--chain-refresh-secs", "1", "--adapter-roots", str(tmp_path)])
    anvil = None
    try:
        wait_ready(srv)
        assert _chat_status(srv) == 503
        page = _banner_after_run(browser_context, srv, "503", "unavailable")
        page.screenshot(path=str(shots / "banner-503.png"))
        page.close()
        anvil = subprocess.Popen([_foundry("anvil"), "--host", "127.0.0.1", "--port", str(port), "--network",
                                  "optimism"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        owner = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        cast = _foundry("cast")

        def deploy(name: str, sig: str, *args: str) -> str:
            artefact = json.loads((REPO / f"contracts/abi/{name}.json").read_text())
            code = artefact["bytecode"]["object"]
            if sig:
                code += subprocess.run([cast, "abi-encode", sig, *args], check=True, capture_output=True,
                                       text=True).stdout.strip()[2:]
            deadline = time.monotonic() + 30
            while (out := subprocess.run([cast, "send", "--json", "--rpc-url", rpc, "--private-key", DEV_KEY_0,
                                          "--create", code], capture_output=True, text=True)).returncode:
                assert time.monotonic() < deadline, out.stderr
                time.sleep(0.2)
            return json.loads(out.stdout)["contractAddress"].lower()

        # No protocol fee, a one-hour withdrawal delay.
        assert deploy("Settlement", "constructor(address,address,uint16,uint64)", owner, owner, "0", "3600") \
            == settlement.lower()
        assert deploy("DatanetRegistry", "") == datanets.lower()
        assert deploy("AdapterRegistry", "constructor(address)", datanets) == registry.lower()

        def register(name: str, weights_hash: str, price: str = "1000000000000"):
            adapter_id = subprocess.run([cast, "keccak", name], check=True, capture_output=True, text=True).stdout
            subprocess.run([cast, "send", "--rpc-url", rpc, "--private-key", DEV_KEY_0, registry,
                            "register(bytes32,bytes32,uint128,uint128,(bytes32,uint16)[],(uint16,uint16,uint16))",
                            adapter_id.strip(), weights_hash, price, price, "[]",
                            "(9000,0,1000)"], check=True, capture_output=True)

        # The pirate adapter, registered with its own weights and a price.
        register("pirate", subprocess.run([env_bin(), "adapter-hash", str(srv.adapters_dir / "pirate")], check=True,
                                          capture_output=True, text=True).stdout.strip())
        deadline = time.monotonic() + 30
        while (status := _chat_status(srv)) != 402:
            # 503 until the server has read the chain; between the registry's deployment and the
            # registration being read, pirate is an unregistered adapter, priced like the base
            # model (free: 200, ledger/pricing.rs), so a call in that window is served.
            assert status in (503, 200) and time.monotonic() < deadline, status
            time.sleep(0.25)
        page = _banner_after_run(browser_context, srv, "402", "deposit")
        page.screenshot(path=str(shots / "banner-402.png"))
        page.close()
        # An adapter registered on chain (free) with other weights than its files: calls to it are
        # refused at page-in (403 adapter_refused), and the page says so.
        register("tampered", "0x" + "11" * 32, price="0")
        shutil.copytree(REPO / "adapters/shouty", tmp_path / "tampered")
        assert srv.load_adapter("tampered", tmp_path / "tampered").status_code == 200
        # Until the server has read tampered's registration its on-chain terms are unknown: 503,
        # retry later (the chain is refreshed every second). Then the page-in refuses it: 403.
        deadline = time.monotonic() + 30
        while (status := _chat_status(srv, "tampered")) != 403:
            assert status == 503 and time.monotonic() < deadline, status
            time.sleep(0.25)
        page = browser_context.new_page()
        c = Console(page, srv.url).open()
        c.wait_models()
        set_prompt(page)
        page.select_option("#model-a", "tampered")
        c.run()
        banner = page.locator("#banner")
        expect(banner).to_have_attribute("data-status", "403")
        assert "adapter is refused" in banner.inner_text(), banner.inner_text()
        page.screenshot(path=str(shots / "banner-403-refused.png"))
        c.no_errors(allowed=("status of 403",))
        page.close()
    finally:
        if anvil:
            anvil.terminate()
            anvil.wait()
        stop_server(srv)
