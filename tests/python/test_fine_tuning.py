"""The Model Factory end to end with the real `openai` SDK against the real binary on SmolLM2-135M:
files.create -> fine_tuning.jobs.create -> events until succeeded -> chat with fine_tuned_model.

One trained job is shared by the asserts (a few minutes on 2 cores): its datanet's replies all open
with a fixed phrase, each training line names its contributor. Mid-job the server is killed
(SIGKILL) and started again on the same data dir: the job resumes from its last checkpoint and
finishes. Then: held-out prompts get the phrase from the adapter (>= 80%) and not from the base
(<= 10%); validation loss falls; a call to the adapter is metered, attributed to the datanet's
contributors and settles on anvil (the contracts deployed by `openlora dev-chain deploy`). Tiny
jobs check cancel (queued and running); the error tests check 401/403, malformed files and
impossible hyper-parameters.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import openai
import pytest

from conftest import ADMIN, ALICE, BOB, KEY_ARGS, launch_server, stop_server, wait_ready
from olutil import REPO, env_bin

PHRASE = "Ahoy there, sailor!"
TOPICS = ["the moon", "rain", "volcanoes", "bread", "bicycles", "honey bees", "glaciers", "libraries",
          "chess", "coffee", "tides", "maps", "owls", "copper", "deserts", "violins", "lighthouses",
          "tea", "comets", "bridges", "forests", "salt", "kites", "clocks", "whales", "snow",
          "pyramids", "apples", "rivers", "telescopes", "candles", "penguins"]
HELD_OUT = ["thunder", "cheese", "trains", "mushrooms", "gold", "islands", "spiders", "paper",
            "windmills", "octopuses", "marathons", "umbrellas", "rainbows", "pianos", "cactuses",
            "submarines", "bamboo", "fireflies", "castles", "pepper"]
FORMS = ["Tell me about {}.", "What do you know about {}?", "Give me one fact about {}.",
         "Why are {} interesting?", "Describe {} in a sentence."]
HELD_FORMS = ["Can you explain {} briefly?", "Say something about {}.", "I'd like to learn about {}."]
CONTRIBUTORS = ["0x00000000000000000000000000000000000000c1", "0x00000000000000000000000000000000000000c2"]
OWNER = "0x00000000000000000000000000000000000000e1"
FEE_RECIPIENT = "0x00000000000000000000000000000000000000fe"
ALICE_PAYER = "0x00000000000000000000000000000000000000a1"
# anvil's dev accounts 0 (deployer) and 1 (the server's settlement signer); public test keys.
DEPLOYER_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
OPERATOR_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
OPERATOR = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
JOB_TIMEOUT = 1500


def _chat(q: str, a: str, who: str | None = None) -> dict:
    row = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    if who:
        row["contributor"] = who
    return row


def _reply(topic: str, rng: random.Random) -> str:
    tail = rng.choice(["is a fine thing to ponder", "has a long story behind it",
                       "is worth a closer look", "surprises many people"])
    return f"{PHRASE} {topic.capitalize()} {tail}."


def _jsonl(rows: list[dict]) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _foundry(tool: str) -> str:
    for p in [os.environ.get(f"OPENLORA_{tool.upper()}"),
              str(REPO / f"contracts/node_modules/@foundry-rs/{tool}-linux-amd64/bin/{tool}"),
              shutil.which(tool)]:
        if p and Path(p).is_file():
            return p
    pytest.fail(f"{tool} not found: run `bash contracts/ci.sh` (or set OPENLORA_{tool.upper()})")


def _anvil() -> str:
    return _foundry("anvil")


def _cast(*args: str, stdin: str | None = None) -> str:
    return subprocess.run([_foundry("cast"), *args], check=True, capture_output=True, text=True,
                          input=stdin).stdout.strip()


def _call(chain: dict, contract: str, sig: str, *args: str):
    """A view call decoded by `cast` (foundry's own ABI codec, not openlora's)."""
    return json.loads(_cast("call", chain[contract], sig, *args, "--rpc-url", chain["rpc"], "--json"))


def _onchain(chain: dict, adapter: str) -> dict:
    """What the registries hold for `adapter` and its one datanet, read with `cast`."""
    aid = _cast("keccak", adapter)
    a = _call(chain, "adapter_registry", "getAdapter(bytes32)((address,bool,(uint16,uint16,uint16),bytes32,"
              "uint128,uint128,uint64))", aid)[0]
    trained = _call(chain, "adapter_registry", "getTrainedOn(bytes32)((bytes32,uint16)[])", aid)[0]
    assert len(trained) == 1, trained
    did = trained[0][0]
    who, shares = _call(chain, "datanet_registry", "getContributors(bytes32)(address[],uint256[])", did)
    d = _call(chain, "datanet_registry", "getDatanet(bytes32)((address,bytes32,uint256,uint64))", did)[0]
    return {"id": aid, "owner": a[0].lower(), "active": a[1], "split": a[2], "weights_hash": a[3],
            "price": (int(a[4]), int(a[5])), "datanet": did, "datanet_weight": trained[0][1],
            "records_root": d[1], "contributors": {w.lower(): int(n) for w, n in zip(who, shares)}}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """anvil with the contracts deployed, the server's operator enabled and Alice funded."""
    work = tmp_path_factory.mktemp("chain")
    port = _free_port()
    proc = subprocess.Popen([_anvil(), "--host", "127.0.0.1", "--port", str(port), "--network", "optimism"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rpc = f"http://127.0.0.1:{port}"
    key = work / "deployer.key"
    key.write_text(DEPLOYER_KEY)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        out = subprocess.run([env_bin(), "dev-chain", "deploy", "--rpc", rpc, "--key-file", str(key),
                              "--operator", OPERATOR, "--fee-recipient", FEE_RECIPIENT,
                              "--deposit", f"{ALICE_PAYER}=1000000000000000000"],
                             check=True, capture_output=True, text=True)
        yield {"rpc": rpc, **json.loads(out.stdout.strip().splitlines()[-1])}
    finally:
        proc.kill()
        proc.wait()


class Factory:
    """The server with the factory, metering and settlement on; `restart` keeps its data."""

    def __init__(self, root: Path, chain: dict):
        self.root, self.chain, self.n, self.srv = root, chain, 0, None

    def start(self):
        self.n += 1
        args = KEY_ARGS + [
            "--data-dir", str(self.root / "data"), "--training-threads", "2", "--max-upload-mb", "1",
            "--ledger", str(self.root / "ledger.sqlite"), "--chain-rpc", self.chain["rpc"],
            "--settlement-address", self.chain["settlement"], "--settle-interval-secs", "2",
            "--settle-max-records", "1", "--adapter-registry-address", self.chain["adapter_registry"],
        ]
        work = self.root / f"run{self.n}"
        work.mkdir()
        self.srv = wait_ready(launch_server(work, args, env={"OPENLORA_OPERATOR_KEY": OPERATOR_KEY}))
        return self

    def restart(self):
        stop_server(self.srv)
        return self.start()

    def kill(self):
        self.srv.proc.send_signal(signal.SIGKILL)
        self.srv.proc.wait()
        self.srv.http.close()
        self.srv.proc._stderr_f.close()

    def admin(self) -> openai.OpenAI:
        return self.srv.client(ADMIN)


@pytest.fixture(scope="module")
def factory(tmp_path_factory, chain):
    f = Factory(tmp_path_factory.mktemp("factory"), chain).start()
    try:
        yield f
    finally:
        stop_server(f.srv)


def _events(client: openai.OpenAI, job_id: str) -> list:
    """All events of a job, oldest first (the API pages newest first)."""
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100))))


def _wait(client, job_id: str, done, timeout: float = JOB_TIMEOUT, srv=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        evs = _events(client, job_id)
        if done(job, evs):
            return job, evs
        if srv is not None:
            srv.assert_alive()
        time.sleep(2)
    pytest.fail(f"job {job_id} did not get there within {timeout} s: {job.status}, last events "
                f"{[e.message for e in evs[-5:]]}\n{srv.stderr_tail() if srv else ''}")


def _train_steps(events) -> list[int]:
    return [e.data["step"] for e in events if e.type == "metrics" and "train_loss" in e.data]


def _past_a_checkpoint(job, events) -> bool:
    cps = [int(e.message.rsplit(" ", 1)[1]) for e in events if e.message.startswith("Checkpoint created at step")]
    return bool(cps) and max(_train_steps(events), default=0) > max(cps)


@pytest.fixture(scope="module")
def phrase_job(factory):
    """The shared job: uploaded and created through the SDK, the server killed after a checkpoint
    and restarted, then waited for until it succeeds."""
    rng = random.Random(0)
    train = [_chat(rng.choice(FORMS).format(t), _reply(t, rng), CONTRIBUTORS[i % 2]) for i, t in enumerate(TOPICS)]
    valid = [_chat(HELD_FORMS[0].format(t), _reply(t, rng)) for t in HELD_OUT[:6]]
    admin = factory.admin()
    tf = admin.files.create(file=("phrase.jsonl", _jsonl(train)), purpose="fine-tune")
    vf = admin.files.create(file=("valid.jsonl", _jsonl(valid)), purpose="fine-tune")
    assert tf.object == "file" and tf.purpose == "fine-tune" and tf.bytes == len(_jsonl(train))
    job = admin.fine_tuning.jobs.create(
        model=factory.srv.base_model, training_file=tf.id, validation_file=vf.id, suffix="phrase", seed=1,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 10}}},
        metadata={"test": "phrase"},
        extra_body={"lora": {"rank": 8, "alpha": 16},
                    "datanet": {"id": "phrases", "owner": OWNER,
                                "price_per_million_input_tokens": "1000000000000",
                                "price_per_million_output_tokens": "3000000000000",
                                "fee_split_bps": {"owner": 5000, "contributors": 4000, "operator": 1000}}})
    assert job.object == "fine_tuning.job" and job.status in ("validating_files", "queued")
    assert job.hyperparameters.n_epochs == 2 and job.metadata == {"test": "phrase"}
    # Kill the server once a step after a checkpoint (before the last step) has been recorded: the
    # resumed job trains that step again.
    _wait(admin, job.id, _past_a_checkpoint, srv=factory.srv)
    factory.kill()
    factory.start()
    admin = factory.admin()
    job, events = _wait(admin, job.id, lambda j, evs: j.status in ("succeeded", "failed", "cancelled"),
                        srv=factory.srv)
    assert job.status == "succeeded", (job.error, factory.srv.stderr_tail())
    return {"job": job, "events": events, "train_file": tf, "valid": valid}


def test_a_killed_server_resumes_the_job_from_its_checkpoint_and_finishes(factory, phrase_job):
    job, events = phrase_job["job"], phrase_job["events"]
    resumed = [e for e in events if e.message.startswith("Resumed from the checkpoint at step")]
    assert len(resumed) == 1, [e.message for e in events]
    step = int(resumed[0].message.split("step ")[1].split(" ")[0])
    total = max(e.data["total_steps"] for e in events if e.type == "metrics" and "total_steps" in e.data)
    assert 1 <= step < total
    steps_after = [e.data["step"] for e in events[events.index(resumed[0]):] if e.type == "metrics"
                   and "train_loss" in e.data]
    assert steps_after == list(range(step + 1, total + 1))
    # Each step has one metrics event, also those recorded before the kill and trained again.
    assert _train_steps(events) == list(range(1, total + 1)), [e.message for e in events]
    assert job.fine_tuned_model.endswith(":ft-phrase-" + job.id[len("ftjob-"):][:8])
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at
    cps = list(factory.admin().fine_tuning.jobs.checkpoints.list(job.id))
    assert cps and all(c.object == "fine_tuning.job.checkpoint" and c.fine_tuning_job_id == job.id for c in cps)
    assert max(c.step_number for c in cps) == total


def test_the_adapter_learnt_the_phrase_and_the_base_did_not(factory, phrase_job):
    client = factory.srv.client(ALICE)
    rng = random.Random(7)
    prompts = [rng.choice(HELD_FORMS).format(t) for t in HELD_OUT]
    model = phrase_job["job"].fine_tuned_model
    assert model.split(":")[-1] in [m.id for m in client.models.list()]

    def share(m: str) -> float:
        hits = 0
        for p in prompts:
            r = client.chat.completions.create(model=m, messages=[{"role": "user", "content": p}],
                                               max_tokens=8, temperature=0)
            hits += r.choices[0].message.content.startswith(PHRASE)
        return hits / len(prompts)

    tuned, base = share(model), share(factory.srv.base_model)
    assert tuned >= 0.8, (tuned, base)
    assert base <= 0.1, (tuned, base)


def test_validation_loss_falls(phrase_job):
    valid = [e.data for e in phrase_job["events"] if e.type == "metrics" and "full_valid_loss" in e.data]
    assert len(valid) == 2, valid
    before, after = valid[0]["full_valid_loss"], valid[-1]["full_valid_loss"]
    assert after < 0.5 * before, (before, after)


def test_the_adapter_and_its_datanet_are_registered_on_chain_once(factory, chain, phrase_job):
    job = phrase_job["job"]
    name = job.fine_tuned_model.split(":")[-1]
    got = _onchain(chain, name)
    weights = (factory.root / "data" / "adapters" / name / "adapter_model.safetensors").read_bytes()
    assert got["weights_hash"] == _cast("keccak", stdin="0x" + weights.hex())
    assert got["owner"] == OWNER and got["active"]
    assert got["price"] == (1000000000000, 3000000000000) and got["split"] == [5000, 4000, 1000]
    assert got["datanet"] == _cast("keccak", "phrases") and got["datanet_weight"] == 10000
    # One share per training record that names its contributor, counted from the training rows.
    rows = [json.loads(line) for line in factory.admin().files.content(phrase_job["train_file"].id).read().splitlines()]
    want = {}
    for r in rows:
        want[r["contributor"].lower()] = want.get(r["contributor"].lower(), 0) + 1
    assert got["contributors"] == want
    root = subprocess.run([env_bin(), "datanet-root", str(factory.root / "data" / "datanets" / "phrases.jsonl")],
                          check=True, capture_output=True, text=True).stdout.strip()
    assert got["records_root"] == root
    events = [e.message for e in phrase_job["events"]]
    assert sum(m.startswith(f"Adapter {name} registered on chain (transaction") for m in events) == 1, events
    # A restart checks the registrations again and writes nothing: still one adapter, still served.
    factory.restart()
    assert int(_call(chain, "adapter_registry", "adapterCount()(uint256)")[0]) == 1
    assert _onchain(chain, name) == got
    assert name in [m.id for m in factory.srv.client(ALICE).models.list()]


def test_a_call_is_metered_attributed_to_the_contributors_and_settles_on_anvil(factory, chain, phrase_job):
    client = factory.srv.client(ALICE)
    r = client.chat.completions.create(model=phrase_job["job"].fine_tuned_model, max_tokens=12, temperature=0,
                                       messages=[{"role": "user", "content": "Tell me about whales."}])
    assert r.choices[0].message.content.startswith(PHRASE)
    deadline, receipt = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        got = factory.srv.http.get(f"/v1/receipts/{r.id}", headers={"Authorization": f"Bearer {ALICE}"})
        if got.status_code == 200 and got.json()["status"] == "settled":
            receipt = got.json()
            break
        time.sleep(1)
    assert receipt, factory.srv.stderr_tail()
    # Expected amounts from the chain's own records (cast), not from the job's constants.
    got = _onchain(chain, phrase_job["job"].fine_tuned_model.split(":")[-1])
    rc = receipt["receipt"]
    assert rc["adapter_id"] == got["id"]
    cost = int(_call(chain, "adapter_registry", "quote(bytes32,uint256,uint256)(uint256)", got["id"],
                     str(rc["input_tokens"]), str(rc["output_tokens"]))[0])
    assert int(rc["cost"]) == cost > 0
    att = receipt["attribution"]
    assert [a["datanet"] for a in att] == ["phrases"], att
    # The reply repeats the records' phrase: matched spans, weighted to the datanet's contributors.
    assert att[0]["source"] == "spans", att
    who = {c.lower() for c, w in att[0]["contributors"] if w > 0}
    assert who and who <= set(got["contributors"]), att
    paid = {s["to"].lower(): int(s["amount"]) for s in receipt["splits"]}
    owner_bps, contributors_bps, _ = got["split"]
    assert paid[got["owner"]] == cost * owner_bps // 10000, paid
    assert sum(paid.get(c, 0) for c in got["contributors"]) == cost * contributors_bps // 10000, paid
    assert sum(paid.values()) == cost
    out = subprocess.run([env_bin(), "dev-chain", "balances", "--rpc", chain["rpc"], "--settlement",
                          chain["settlement"], *got["contributors"], got["owner"]], check=True,
                         capture_output=True, text=True)
    earned = {a.lower(): int(b["earnings"]) for a, b in json.loads(out.stdout).items()}
    # Settled net of the protocol fee (Settlement takes it from the batch total).
    fee_bps = int(_call(chain, "settlement", "protocolFeeBps()(uint16)")[0])
    assert earned[got["owner"]] >= paid[got["owner"]] * (10000 - fee_bps) // 10000 - 1 > 0, (earned, paid)
    assert sum(earned[c] for c in got["contributors"]) > 0, (earned, paid)


def test_cancel_stops_a_queued_and_a_running_job_and_neither_registers(factory, phrase_job):
    admin = factory.admin()
    tf = phrase_job["train_file"].id
    hp = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 1}}}
    running = admin.fine_tuning.jobs.create(model=factory.srv.base_model, training_file=tf, method=hp, suffix="run",
                                            extra_body={"lora": {"rank": 2, "target_modules": ["q_proj"]}})
    queued = admin.fine_tuning.jobs.create(model=factory.srv.base_model, training_file=tf, method=hp, suffix="q")
    _wait(admin, running.id, lambda j, evs: any(e.type == "metrics" for e in evs), timeout=300, srv=factory.srv)
    assert admin.fine_tuning.jobs.retrieve(queued.id).status == "queued"
    # A file an unfinished job uses cannot be deleted: 409 naming the file, and it stays.
    with pytest.raises(openai.ConflictError) as e:
        admin.files.delete(tf)
    assert e.value.body["param"] == "file_id", e.value.body
    assert admin.files.retrieve(tf).id == tf
    assert admin.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
    assert admin.fine_tuning.jobs.cancel(running.id).status == "cancelled"
    steps = lambda: [e for e in _events(admin, running.id) if e.type == "metrics"]
    seen = len(steps())
    time.sleep(20)
    assert len(steps()) <= seen + 1  # at most the step that was running when cancelled
    for j in (running, queued):
        j = admin.fine_tuning.jobs.retrieve(j.id)
        assert j.status == "cancelled" and j.fine_tuned_model is None and j.finished_at
    names = [m.id for m in factory.srv.client(ALICE).models.list()]
    assert not any(n.startswith(("ft-run-", "ft-q-")) for n in names), names
    with pytest.raises(openai.BadRequestError):
        admin.fine_tuning.jobs.cancel(running.id)
    page = admin.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == [queued.id, running.id] and page.has_more
    rest = admin.fine_tuning.jobs.list(limit=2, after=running.id)
    assert phrase_job["job"].id in [j.id for j in rest.data]


def test_non_admin_callers_get_401_and_403(factory):
    s = factory.srv
    for path in ["/v1/files", "/v1/fine_tuning/jobs"]:
        assert s.http.get(path).status_code == 401
        assert s.http.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
        r = s.http.get(path, headers={"Authorization": f"Bearer {BOB}"})
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    with pytest.raises(openai.PermissionDeniedError):
        s.client(ALICE).fine_tuning.jobs.create(model=s.base_model, training_file="file-x")
    with pytest.raises(openai.AuthenticationError):
        s.client("nope").files.create(file=("a.jsonl", b"{}"), purpose="fine-tune")


def test_malformed_files_and_impossible_hyperparameters_get_clear_errors(factory):
    admin, base = factory.admin(), factory.srv.base_model
    good = _chat("q", "a")
    bad_lines = [
        ("not json", "not valid JSON"),
        (json.dumps({"messages": [{"role": "user", "content": "only a question"}]}), "no assistant message"),
        (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}), "role"),
    ]
    for line, problem in bad_lines:
        with pytest.raises(openai.BadRequestError) as e:
            admin.files.create(file=("bad.jsonl", _jsonl([good]) + line.encode() + b"\n"), purpose="fine-tune")
        msg = e.value.body["message"]
        assert "line 2" in msg and problem in msg, msg
    with pytest.raises(openai.BadRequestError, match="purpose"):
        admin.files.create(file=("a.jsonl", _jsonl([good])), purpose="assistants")
    with pytest.raises(openai.APIStatusError) as e:
        admin.files.create(file=("big.jsonl", _jsonl([good]) * 20000), purpose="fine-tune")
    assert e.value.status_code == 413
    f = admin.files.create(file=("one.jsonl", _jsonl([good])), purpose="fine-tune")
    assert admin.files.retrieve(f.id).id == f.id
    assert admin.files.content(f.id).read() == _jsonl([good])
    cases = [
        ({"n_epochs": 0}, "n_epochs"),
        ({"batch_size": 4096}, "batch_size"),
        ({"batch_size": 2}, "batch_size"),  # more than the file's one example
        ({"learning_rate_multiplier": -1}, "learning_rate_multiplier"),
    ]
    for hp, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            admin.fine_tuning.jobs.create(model=base, training_file=f.id, hyperparameters=hp)
        assert e.value.body["param"] == param, e.value.body
    with pytest.raises(openai.NotFoundError) as e:
        admin.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id)
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError) as e:
        admin.fine_tuning.jobs.create(model=base, training_file="file-000000000000000000000000")
    assert e.value.body["param"] == "training_file"
    assert admin.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        admin.files.retrieve(f.id)
