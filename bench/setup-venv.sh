#!/usr/bin/env bash
# Create (or reuse) the Python environment used by bench/*.py, outside the repository.
#   IFP_VENV          venv path (default /var/tmp/ifp-venv)
#   IFP_VENV_MINIMAL  1: install torch with --no-deps plus its pure-python dependencies only
#                     (skips the multi-GB nvidia-* wheels; CPU use only)
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
if [ "${IFP_VENV_MINIMAL:-0}" = "1" ]; then
  torch_pin="$(grep -E '^torch==' "$req")"
  "$py" -m pip install -q --no-deps "$torch_pin"
  "$py" -m pip install -q filelock typing-extensions sympy networkx jinja2 fsspec
  # everything else, without letting torchvision/timm pull torch's nvidia-* dependencies back
  grep -vE '^(torch==|#|$)' "$req" | sed 's/#.*//' | xargs "$py" -m pip install -q --no-deps
  "$py" -m pip install -q huggingface_hub packaging tqdm
else
  "$py" -m pip install -q -r "$req"
fi
check || { echo "venv at $venv does not import the pinned packages" >&2; exit 1; }
echo "venv ready: $venv" >&2
echo "$py"
