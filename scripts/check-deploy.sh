#!/usr/bin/env bash
# Deployment artefacts, checked without a cluster or a Docker engine (scripts/check_deploy.py):
# the Helm chart rendered by Helm's Go SDK and every object validated with kubernetes-validate,
# the Dockerfiles (non-root; the CUDA build = CI's cuda build), the Grafana dashboard's queries.
# Tools (deploy/requirements.txt) are installed once into ~/.cache/openlora/venv-deploy.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cache="${OPENLORA_CACHE:-$HOME/.cache/openlora}"
venv="$cache/venv-deploy"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
stamp="$venv/.req.sha256"; want=$(sha256sum deploy/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/pip" install -q -r deploy/requirements.txt
  echo "$want" > "$stamp"
fi
exec "$venv/bin/python" scripts/check_deploy.py
