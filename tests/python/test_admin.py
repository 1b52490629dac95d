"""Admin endpoints: auth, adapter listing, load/unload, and rejection of bad adapter folders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import ALICE

SAY = [{"role": "user", "content": "Say hi."}]


def _error_message(r) -> str:
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"], r.text
    return err["message"]


def test_admin_requires_admin_key(server, random_adapters):
    [(name, path)] = random_adapters(1, prefix="auth")
    for key in (ALICE, "sk-wrong"):
        r = server.admin_post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)}, key=key)
        assert r.status_code in (401, 403), (key, r.status_code, r.text)
        r = server.admin_post("/v1/unload_lora_adapter", {"lora_name": server.demo_adapters[0]}, key=key)
        assert r.status_code in (401, 403), (key, r.status_code, r.text)
    r = server.http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
    assert r.status_code == 401
    r = server.http.get("/v1/adapters", headers={"Authorization": f"Bearer {ALICE}"})
    assert r.status_code in (401, 403)
    assert name not in {m.id for m in server.client().models.list().data}


def test_list_adapters(server):
    r = server.http.get("/v1/adapters", headers={"Authorization": "Bearer sk-admin-test"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    ids = {a["id"] for a in body["data"]}
    assert set(server.demo_adapters) <= ids
    for a in body["data"]:
        assert a["tier"] in ("device", "host", "disk"), a


def test_load_use_unload(server, random_adapters):
    [(name, path)] = random_adapters(1, prefix="lu")
    r = server.load_adapter(name, path)
    assert r.status_code == 200, r.text
    client = server.client()
    assert name in {m.id for m in client.models.list().data}
    listed = server.http.get("/v1/adapters", headers={"Authorization": "Bearer sk-admin-test"}).json()
    assert name in {a["id"] for a in listed["data"]}
    out = client.chat.completions.create(model=name, messages=SAY, max_tokens=4, temperature=0)
    assert out.choices[0].message.content
    r = server.unload_adapter(name)
    assert r.status_code == 200, r.text
    assert name not in {m.id for m in client.models.list().data}
    r = server.unload_adapter(name)
    assert r.status_code == 404, r.text
    r = server.unload_adapter("never-loaded")
    assert r.status_code == 404, r.text
    _error_message(r)


def _bad_folders(tmp_path, good_path):
    def copy(name):
        d = tmp_path / name
        shutil.copytree(good_path, d)
        return d

    bad = {}
    d = tmp_path / "empty"
    d.mkdir()
    bad["empty"] = d
    d = copy("no_weights")
    (d / "adapter_model.safetensors").unlink()
    bad["no_weights"] = d
    d = copy("no_config")
    (d / "adapter_config.json").unlink()
    bad["no_config"] = d
    bad["missing_dir"] = tmp_path / "does-not-exist"

    d = copy("wrong_shape")
    t = load_file(str(d / "adapter_model.safetensors"))
    t["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = np.zeros((8, 100), np.float32)
    save_file(t, str(d / "adapter_model.safetensors"))
    bad["wrong_shape"] = d

    d = copy("unknown_module")
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj", "v_proj", "foo_proj"]
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    t = load_file(str(d / "adapter_model.safetensors"))
    t["base_model.model.model.layers.0.self_attn.foo_proj.lora_A.weight"] = np.zeros((8, 576), np.float32)
    t["base_model.model.model.layers.0.self_attn.foo_proj.lora_B.weight"] = np.zeros((576, 8), np.float32)
    save_file(t, str(d / "adapter_model.safetensors"))
    bad["unknown_module"] = d

    d = copy("bad_json")
    (d / "adapter_config.json").write_text("{ this is not json")
    bad["bad_json"] = d

    d = copy("garbage_weights")
    (d / "adapter_model.safetensors").write_bytes(b"\x00" * 100)
    bad["garbage_weights"] = d
    return bad


def test_bad_adapter_loads_rejected(server, random_adapters, tmp_path):
    [(_, good)] = random_adapters(1, prefix="good")
    client = server.client()
    for kind, folder in _bad_folders(tmp_path, good).items():
        name = f"bad-{kind}"
        r = server.load_adapter(name, folder)
        assert r.status_code == 400, (kind, r.status_code, r.text)
        msg = _error_message(r)
        print(f"{kind}: {msg}")
        assert name not in {m.id for m in client.models.list().data}, kind
    # malformed admin bodies
    for body in ({}, {"lora_name": "x"}, {"lora_path": str(good)}):
        r = server.admin_post("/v1/load_lora_adapter", body)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
    server.assert_alive()
    out = client.chat.completions.create(model=server.base_model, messages=SAY, max_tokens=4, temperature=0)
    assert out.choices[0].message.content


def test_duplicate_load_is_not_500(server, random_adapters):
    [(name, path)] = random_adapters(1, prefix="dup")
    assert server.load_adapter(name, path).status_code == 200
    r = server.load_adapter(name, path)
    assert r.status_code < 500, (r.status_code, r.text)
    assert server.unload_adapter(name).status_code == 200
