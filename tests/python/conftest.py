"""Starts the real `openlora serve` binary once per session and hands tests its address.

Env: OPENLORA_BIN (default target/debug/openlora), OPENLORA_MODEL (default: the path printed by
scripts/fetch-model.sh). Demo adapters are copied to a temp folder so the repo stays clean.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from olutil import REPO, copy_demo_adapters, env_bin, parse_metrics, write_random_adapter

ALICE = "sk-test-alice"
BOB = "sk-test-bob"
ADMIN = "sk-admin-test"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_path() -> str:
    env = os.environ.get("OPENLORA_MODEL")
    if env:
        return env
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "fetch-model.sh")], check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "<no stderr>"


@dataclass
class Server:
    port: int
    proc: subprocess.Popen
    stderr_path: Path
    adapters_dir: Path
    demo_adapters: list[str]
    http: httpx.Client = field(repr=False)
    base_model: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, api_key: str = ALICE, **kw) -> openai.OpenAI:
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 300)
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, **kw)

    def async_client(self, api_key: str = ALICE, **kw) -> openai.AsyncOpenAI:
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 300)
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=api_key, **kw)

    def admin_post(self, path: str, body: dict, key: str = ADMIN) -> httpx.Response:
        return self.http.post(path, json=body, headers={"Authorization": f"Bearer {key}"})

    def load_adapter(self, name: str, path: Path) -> httpx.Response:
        return self.admin_post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})

    def unload_adapter(self, name: str) -> httpx.Response:
        return self.admin_post("/v1/unload_lora_adapter", {"lora_name": name})

    def metrics_text(self) -> str:
        r = self.http.get("/metrics")
        assert r.status_code == 200, r.text
        return r.text

    def metrics(self) -> dict:
        return parse_metrics(self.metrics_text())

    def stderr_tail(self) -> str:
        return _tail(self.stderr_path)

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"server exited ({self.proc.returncode}):\n{self.stderr_tail()}"
        assert self.http.get("/health").status_code == 200


KEY_ARGS = [
    "--api-key", "sk-test-alice=0x00000000000000000000000000000000000000a1",
    "--api-key", "sk-test-bob=0x00000000000000000000000000000000000000b0",
    "--admin-key", ADMIN,
]


def launch_server(work: Path, extra: list[str], env: dict | None = None, host: str = "127.0.0.1",
                  max_queue: int = 256) -> Server:
    """Starts `openlora serve` on a free port with the demo adapters in `work/adapters` plus
    `extra` flags; does not wait for readiness (see `wait_ready`)."""
    binary = env_bin()
    assert Path(binary).exists(), f"server binary {binary} not found (cargo build --bins, or set OPENLORA_BIN)"
    adapters_dir = work / "adapters"
    demo = copy_demo_adapters(adapters_dir)
    port = _free_port()
    cmd = [
        binary, "serve",
        "--model", _model_path(),
        "--adapters-dir", str(adapters_dir),
        "--host", host,
        "--port", str(port),
        "--max-queue", str(max_queue),
        *extra,
    ]
    stderr_path = work / "server.stderr"
    stderr_f = open(stderr_path, "wb")
    proc = subprocess.Popen(cmd, stdout=stderr_f, stderr=subprocess.STDOUT, cwd=work,
                            env={**os.environ, **(env or {})})
    proc._stderr_f = stderr_f  # closed by stop_server
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    return Server(port, proc, stderr_path, adapters_dir, demo, http)


def wait_ready(srv: Server, key: str | None = ALICE) -> Server:
    deadline = time.monotonic() + 120
    while True:
        if srv.proc.poll() is not None:
            pytest.fail(f"server exited with {srv.proc.returncode} before ready:\n{srv.stderr_tail()}")
        try:
            if srv.http.get("/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"server not ready within 120 s:\n{srv.stderr_tail()}")
        time.sleep(0.25)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    models = srv.http.get("/v1/models", headers=headers)
    assert models.status_code == 200, models.text
    srv.base_model = models.json()["data"][0]["id"]
    return srv


def stop_server(srv: Server) -> None:
    """SIGTERM, and the server must exit 0 within 30 s."""
    srv.http.close()
    proc, stderr_f = srv.proc, srv.proc._stderr_f
    if proc.poll() is not None:
        stderr_f.close()
        return
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        stderr_f.close()
        pytest.fail(f"server did not exit within 30 s of SIGTERM:\n{srv.stderr_tail()}")
    stderr_f.close()
    assert rc == 0, f"server exited with {rc} after SIGTERM:\n{srv.stderr_tail()}"


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    # Runtime-loaded adapters may come from any of this session's temp folders.
    roots = ["--adapter-roots", str(tmp_path_factory.getbasetemp())]
    srv = launch_server(tmp_path_factory.mktemp("server"), KEY_ARGS + roots)
    try:
        yield wait_ready(srv)
    finally:
        stop_server(srv)


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return server.client()


@pytest.fixture(scope="session")
def base_model(server: Server) -> str:
    return server.base_model


@pytest.fixture(scope="session")
def random_adapters(tmp_path_factory):
    """Factory: random_adapters(n, prefix) -> [(name, path)] of fresh random PEFT adapters."""
    root = tmp_path_factory.mktemp("random_adapters")
    counter = [1000]

    def make(n: int, prefix: str = "rand") -> list[tuple[str, Path]]:
        out = []
        for _ in range(n):
            counter[0] += 1
            name = f"{prefix}{counter[0]}"
            out.append((name, write_random_adapter(root / name, seed=counter[0])))
        return out

    return make
