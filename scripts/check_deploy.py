"""Checks the deployment artefacts without a cluster (run by scripts/check-deploy.sh):

- the Helm chart `deploy/helm/openlora` is linted and rendered by Helm's own Go SDK (the
  `helm-python-sdk` wheel binds libhelm: the same engine as `helm template`; no helm binary is
  installable from the registries CI reaches), under several value sets (CPU, GPU, PVC + hub
  adapters + created Secret + ServiceMonitor, existing Secret, a GGUF model); values.schema.json
  refuses misspelt keys and bad values;
- every rendered object is validated with `kubernetes-validate --strict` (the Kubernetes OpenAPI
  schemas: unknown fields are errors). The ServiceMonitor is a CRD whose schema kubernetes-validate
  does not ship, so it is checked against the subset of the Prometheus operator's CRD schema the
  chart uses, with unknown fields refused; the InferencePool (Gateway API Inference Extension,
  `inference.networking.k8s.io/v1`) likewise against its CRD's field rules;
- what the issue asks of the chart holds in the rendered objects: probes on /health and /ready,
  the InferencePool (when enabled) selecting exactly the Deployment's pods on the server's port,
  `nvidia.com/gpu` in the GPU variant, keys from a Secret, graceful termination matching
  `--shutdown-timeout`, non-root;
- both Dockerfiles run as a non-root user, and Dockerfile.cuda builds the way CI's cuda build does
  (scripts/test.sh: `source scripts/cuda-env.sh`, `cargo build --features cuda`);
- the Grafana dashboard is valid JSON whose every query names only openlora metrics (the names are
  checked against a live server's /metrics by tests/python/test_deploy.py).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "deploy" / "helm" / "openlora"
K8S_VERSION = "1.33.0"

# The part of monitoring.coreos.com/v1 ServiceMonitor's CRD schema the chart uses.
LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
    "additionalProperties": False,
}
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                        },
                    },
                },
            },
        },
    },
}

# inference.networking.k8s.io/v1 InferencePool's CRD schema (GIE v1.0): the fields and rules.
INFERENCE_POOL = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "inference.networking.k8s.io/v1"},
        "kind": {"const": "InferencePool"},
        "metadata": SERVICE_MONITOR["properties"]["metadata"],
        "spec": {
            "type": "object",
            "required": ["selector", "targetPorts", "endpointPickerRef"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object", "minProperties": 1, "maxProperties": 64,
                                                   "additionalProperties": {"type": "string", "maxLength": 63}}},
                },
                "targetPorts": {
                    "type": "array", "minItems": 1, "maxItems": 8,
                    "items": {"type": "object", "required": ["number"], "additionalProperties": False,
                              "properties": {"number": {"type": "integer", "minimum": 1, "maximum": 65535}}},
                },
                "endpointPickerRef": {
                    "type": "object",
                    "required": ["name", "port"],
                    "additionalProperties": False,
                    "properties": {
                        "group": {"type": "string", "maxLength": 253},
                        "kind": {"type": "string", "pattern": "^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$", "maxLength": 63},
                        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
                        "port": {"type": "object", "required": ["number"], "additionalProperties": False,
                                 "properties": {"number": {"type": "integer", "minimum": 1, "maximum": 65535}}},
                        "failureMode": {"enum": ["FailOpen", "FailClose"]},
                    },
                },
            },
        },
    },
}

VALUE_SETS = {
    "cpu": {},
    "gpu": {"gpu": {"enabled": True, "count": 2, "runtimeClassName": "nvidia"}},
    "full": {
        "replicaCount": 3,
        "adapters": {"existingClaim": "adapters", "hubIds": ["acme/pirate", "acme/poet@v1"]},
        "auth": {"create": True, "apiKeys": "sk-a=0x00000000000000000000000000000000000000a1", "adminKey": "sk-admin"},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "hub": {"cache": {"persistence": True}, "endpoint": "http://hub.local", "tokenSecret": {"name": "hf"}},
        "server": {"shutdownTimeout": 120, "extraArgs": ["--max-num-seqs", "64"]},
        "podAnnotations": {"team": "ml"},
    },
    "existing-secret": {"auth": {"existingSecret": "openlora-keys"}, "model": {"id": "/models/m.gguf"}},
    "gguf": {"model": {"id": "acme/smol", "ggufFile": "smol.Q4_K_M.gguf"}},
    "pool": {"replicaCount": 4, "inferencePool": {"enabled": True}},
    "pool-named": {"inferencePool": {"enabled": True, "endpointPicker": {"name": "llm-d-epp", "port": 9003,
                                                                         "failureMode": "FailOpen"}}},
}

failures: list[str] = []
checked = [0]


def check(cond: bool, what: str) -> None:
    checked[0] += 1
    if not cond:
        failures.append(what)


def render(values: dict) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name="ol", namespace="serving")
    docs = []
    for name, text in sorted(out.items()):
        if name.endswith("NOTES.txt"):
            continue
        for d in yaml.safe_load_all(text):
            if d:
                docs.append(d)
    return docs


def validate(doc: dict, label: str) -> None:
    what = f"{label}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
    checked[0] += 1
    try:
        if doc.get("kind") == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR)
        elif doc.get("kind") == "InferencePool":
            jsonschema.validate(doc, INFERENCE_POOL)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except Exception as e:  # noqa: BLE001 - every failure is reported
        failures.append(f"{what}: {e}")


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def server_container(docs: list[dict]) -> tuple[dict, dict]:
    [dep] = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    [c] = [c for c in pod["containers"] if c["name"] == "openlora"]
    return pod, c


def arg(c: dict, flag: str) -> str | None:
    a = c.get("args", [])
    return a[a.index(flag) + 1] if flag in a else None


def env(c: dict) -> dict:
    return {e["name"]: e for e in c.get("env", [])}


def check_semantics(label: str, values: dict, docs: list[dict]) -> None:
    pod, c = server_container(docs)
    check(c["readinessProbe"]["httpGet"]["path"] == "/ready", f"{label}: readiness on /ready")
    check(c["livenessProbe"]["httpGet"]["path"] == "/health", f"{label}: liveness on /health")
    timeout = values.get("server", {}).get("shutdownTimeout", 30)
    check(arg(c, "--shutdown-timeout") == str(timeout), f"{label}: --shutdown-timeout {timeout}")
    check(pod["terminationGracePeriodSeconds"] > timeout, f"{label}: grace period covers the drain")
    check(pod["securityContext"]["runAsNonRoot"] is True, f"{label}: non-root")
    gpus = c["resources"].get("limits", {}).get("nvidia.com/gpu")
    gpu = values.get("gpu", {})
    check(gpus == (gpu.get("count") if gpu.get("enabled") else None), f"{label}: nvidia.com/gpu = {gpus}")
    if gpu.get("enabled"):
        check(c["image"].endswith("-cuda"), f"{label}: the GPU variant runs the -cuda image")
    e = env(c)
    auth = values.get("auth", {})
    secret = auth.get("existingSecret") or ("ol-openlora" if auth.get("create") else None)
    for var in ("OPENLORA_API_KEYS", "OPENLORA_ADMIN_KEY"):
        ref = e.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {}).get("name")
        check(ref == secret, f"{label}: {var} from Secret {secret}, got {ref}")
    check(len(by_kind(docs, "Secret")) == int(bool(auth.get("create"))), f"{label}: Secret count")
    sm = values.get("serviceMonitor", {}).get("enabled", False)
    check(len(by_kind(docs, "ServiceMonitor")) == int(sm), f"{label}: ServiceMonitor count")
    check_pool(label, values, docs, c)
    hub_ids = values.get("adapters", {}).get("hubIds", [])
    init = {i["name"]: i for i in pod.get("initContainers", [])}
    for h in hub_ids:
        check(h in init.get("fetch", {}).get("args", []), f"{label}: init container fetches {h}")
        check(h in c["args"], f"{label}: --hub-adapter {h}")
    if values.get("adapters", {}).get("existingClaim"):
        check(arg(c, "--adapters-dir") == "/adapters", f"{label}: adapters from the PVC")
    model = values.get("model", {})
    if model.get("ggufFile"):
        check(arg(c, "--model") == f"{model['id']}:{model['ggufFile']}", f"{label}: the GGUF file")
    if model.get("id", "").startswith("/"):
        check("fetch" not in init, f"{label}: a model path needs no init container")


def check_pool(label: str, values: dict, docs: list[dict], c: dict) -> None:
    """The InferencePool, when enabled, selects exactly the Deployment's pods on the server's port."""
    pool = values.get("inferencePool", {})
    pools = by_kind(docs, "InferencePool")
    check(len(pools) == int(bool(pool.get("enabled"))), f"{label}: InferencePool count {len(pools)}")
    if not pools:
        return
    [dep] = by_kind(docs, "Deployment")
    spec = pools[0]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    sel = spec["selector"]["matchLabels"]
    check(sel == dep["spec"]["selector"]["matchLabels"], f"{label}: pool selector = the Deployment's")
    check(all(pod_labels.get(k) == v for k, v in sel.items()), f"{label}: pool selects the pods")
    ports = [p["containerPort"] for p in c["ports"] if p["name"] == "http"]
    check([p["number"] for p in spec["targetPorts"]] == ports, f"{label}: pool targets {ports}")
    epp = pool.get("endpointPicker", {})
    ref = spec["endpointPickerRef"]
    check(ref["name"] == (epp.get("name") or "ol-openlora-epp"), f"{label}: EPP name {ref['name']}")
    check(ref["port"]["number"] == epp.get("port", 9002), f"{label}: EPP port")
    check(ref["failureMode"] == epp.get("failureMode", "FailClose"), f"{label}: failureMode")


def check_chart() -> None:
    lint = helm.lint(str(CHART), strict=True)
    check(not lint.get("errors"), f"helm lint: {lint}")
    for m in lint.get("messages", []):
        check(m.get("severity", 0) <= 1, f"helm lint: {m}")
    for label, values in VALUE_SETS.items():
        docs = render(values)
        check(len(docs) >= 3, f"{label}: rendered {len(docs)} objects")
        for d in docs:
            validate(d, label)
        check_semantics(label, values, docs)
        print(f"chart [{label}]: {len(docs)} objects: " + ", ".join(sorted(d["kind"] for d in docs)))
    try:
        render({"auth": {"create": True}})
        failures.append("auth.create without keys must fail to render")
    except helm.HelmError as e:
        check("auth.apiKeys" in str(e), f"auth.create without keys: {e}")
    # values.schema.json: a misspelt key or a bad value is refused before anything renders.
    for bad, word in [({"gpu": {"enabeld": True}}, "enabeld"), ({"gpu": {"count": 0}}, "count"),
                      ({"adapters": {"hubIds": ["../x"]}}, "hubIds"),
                      ({"inferencePool": {"enabled": True, "endpointPicker": {"failureMode": "Open"}}}, "failureMode"),
                      ({"inferencePool": {"enabeld": True}}, "enabeld")]:
        try:
            render(bad)
            failures.append(f"values {bad} must be refused by values.schema.json")
        except helm.HelmError as e:
            check(word in str(e), f"values {bad}: {e}")


def final_stage(dockerfile: Path) -> str:
    text = dockerfile.read_text()
    return text[text.rindex("\nFROM ") :]


def check_dockerfiles() -> None:
    for name in ("Dockerfile", "Dockerfile.cuda"):
        stage = final_stage(REPO / name)
        users = re.findall(r"^USER\s+(\S+)", stage, re.M)
        check(bool(users) and not users[-1].split(":")[0] in ("0", "root"), f"{name}: runs as non-root ({users})")
    cuda = (REPO / "Dockerfile.cuda").read_text()
    ci = (REPO / "scripts" / "test.sh").read_text()
    for step in ("source scripts/cuda-env.sh", "cargo build --features cuda"):
        check(step in ci, f"scripts/test.sh's cuda build has `{step}`")
    build = re.search(r"^RUN bash -c '(.*)'$", cuda, re.M)
    check(build is not None and "source scripts/cuda-env.sh" in build.group(1), "Dockerfile.cuda sources scripts/cuda-env.sh")
    check(build is not None and re.search(r"cargo build (--release )?--features cuda", build.group(1)) is not None,
          "Dockerfile.cuda runs cargo build --features cuda")
    check(re.search(r"^FROM nvidia/cuda:13\.0\.\d+-runtime", cuda, re.M) is not None,
          "Dockerfile.cuda runs on an NVIDIA CUDA 13.0 runtime base (the pinned nvcc's series)")


def check_dashboard() -> None:
    dash = json.loads((REPO / "deploy" / "grafana" / "openlora.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    check(len(exprs) >= 15, f"dashboard: {len(exprs)} queries")
    for e in exprs:
        check(re.search(r"openlora_[a-z_]+", e) is not None, f"dashboard query names no openlora metric: {e}")


def main() -> int:
    check_chart()
    check_dockerfiles()
    check_dashboard()
    for f in failures:
        print("FAIL:", f)
    print(f"deploy checks: {checked[0] - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
