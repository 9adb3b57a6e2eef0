#!/usr/bin/env bash
# End-to-end checkpoint check: train with the Rust CLI, then strict-load its last model file in
# PyTorch and compare `ifp forward` with the PyTorch float64 forward on random inputs.
#
#   bench/check_train_checkpoint.sh [CONFIG (default tiny)] [STEPS (default 30)]
#
# Env: IFP_BIN (default /var/tmp/ifp-target/release/ifp), PY (default /var/tmp/ifp-venv/bin/python),
#      WORK (default: a new /tmp/ifp-ckcheck.XXXXXX, kept), TOL (default 1e-4).
# Steps: 1. `ifp train --config C --out WORK/run --steps N`; 2. the last model-*.safetensors must
# match its .sha256 sidecar; 3. for two random inputs (N=2 at DATA.IMG_SIZE and N=1 at 45x37, not
# a multiple of 8; for a Uformer, which takes square sides only, N=1 at twice IMG_SIZE) written
# to WORK: `ifp forward` with those weights, then
# bench/torch_check_checkpoint.py (load_state_dict(strict=True), rel L2 <= TOL). The torch side
# uses the config embedded in the model file's metadata (`ifp_config`), so the checkpoint must be
# self-describing; for a preset name that is also what the preset expands to.
# Exit 0 when every check passes, else the first failing step's status (1 if it had none).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IFP_BIN="${IFP_BIN:-/var/tmp/ifp-target/release/ifp}"
PY="${PY:-/var/tmp/ifp-venv/bin/python}"
TOL="${TOL:-1e-4}"
CONFIG="${1:-tiny}"
STEPS="${2:-30}"
WORK="${WORK:-$(mktemp -d /tmp/ifp-ckcheck.XXXXXX)}"
mkdir -p "$WORK"
RUN="$WORK/run"
rm -rf "$RUN"

echo "== ifp train --config $CONFIG --out $RUN --steps $STEPS"
t0=$(date +%s.%N)
"$IFP_BIN" train --config "$CONFIG" --out "$RUN" --steps "$STEPS" 2>&1 | tail -n 4
t1=$(date +%s.%N)
echo "train wall: $(awk -v a="$t0" -v b="$t1" -v n="$STEPS" 'BEGIN{printf "%.2f s (%.1f ms/step incl. startup)", b-a, (b-a)*1000/n}')"

MODEL="$(ls "$RUN"/model-*.safetensors | sort | tail -n 1)"
echo "== last model file: $MODEL"
(cd "$RUN" && sha256sum -c "$(basename "$MODEL").sha256")

# config embedded in the checkpoint + random inputs
"$PY" - "$MODEL" "$WORK" <<'EOF'
import sys, torch, yaml
from safetensors import safe_open
from safetensors.torch import save_file
model, work = sys.argv[1], sys.argv[2]
with safe_open(model, "pt") as f:
    meta = f.metadata() or {}
    keys = list(f.keys())
    dtypes = {str(f.get_tensor(k).dtype) for k in keys}
if "ifp_config" not in meta:
    sys.exit(f"{model}: no ifp_config metadata")
open(f"{work}/config.yaml", "w").write(meta["ifp_config"])
cfg = yaml.safe_load(meta["ifp_config"])
size = int(cfg["DATA"]["IMG_SIZE"])
print(f"{len(keys)} tensors, dtypes {sorted(dtypes)}, step {meta.get('ifp_step')}, IMG_SIZE {size}")
g = torch.Generator().manual_seed(20240607)
# Uformer takes square sides whose levels all tile (twice the built size does); Restormer any.
other = (1, 3, 2 * size, 2 * size) if str(cfg["MODEL"]["TYPE"]).lower() == "uformer" else (1, 3, 45, 37)
for name, shape in (("a", (2, 3, size, size)), ("b", other)):
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    mean = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float64).view(1, 3, 1, 1)
    save_file({"input": ((x - mean) / std).float().contiguous()}, f"{work}/input_{name}.safetensors")
EOF

rc=0
for name in a b; do
  echo "== input_$name"
  "$IFP_BIN" forward --config "$CONFIG" --weights "$MODEL" --input "$WORK/input_$name.safetensors" \
    --output "$WORK/output_$name.safetensors"
  "$PY" "$HERE/torch_check_checkpoint.py" --config "$WORK/config.yaml" --weights "$MODEL" \
    --input "$WORK/input_$name.safetensors" --output "$WORK/output_$name.safetensors" --tol "$TOL" \
    || { s=$?; [ "$rc" -ne 0 ] || rc=$s; }
done
echo "work dir: $WORK"
if [ "$rc" -eq 0 ]; then echo "checkpoint check: OK"; else echo "checkpoint check: FAIL ($rc)"; fi
exit "$rc"
