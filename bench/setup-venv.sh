#!/usr/bin/env bash
# Create (or reuse) the Python environment used by bench/*.py, outside the repository.
#   IFP_VENV          venv path (default /var/tmp/ifp-venv)
# Installs the pinned requirements with all their dependencies: PyPI's Linux torch wheel pulls in
# the CUDA runtime wheels (nvidia-*, several GB); a torch installed without them does not import
# on a GPU machine (libcudart.so.13 not found). The same venv serves CPU and GPU machines.
# Idempotent: if the venv already imports every pinned package at the pinned version, it does
# nothing. Prints the venv's python path on its last line.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${IFP_VENV:-/var/tmp/ifp-venv}"
req="$here/requirements.txt"
py="$venv/bin/python"

check() {
  [ -x "$py" ] || return 1
  "$py" - "$req" <<'PY' >/dev/null 2>&1
import sys, re
from importlib.metadata import version
pins = {}
for line in open(sys.argv[1]):
    line = line.split('#', 1)[0].strip()
    if line:
        name, ver = line.split('==')
        pins[name.lower()] = ver
for name, ver in pins.items():
    have = version(name)
    if have.split('+')[0] != ver:
        sys.exit(1)
import torch, numpy, safetensors, yaml, timm, torchvision  # noqa: F401
torch.zeros(2).sum()
PY
}

if check; then
  echo "venv ok: $venv" >&2
  echo "$py"
  exit 0
fi

if [ ! -x "$py" ]; then
  python3 -m venv "$venv"
fi
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q -r "$req"
check || { echo "venv at $venv does not import the pinned packages" >&2; exit 1; }
echo "venv ready: $venv" >&2
echo "$py"
