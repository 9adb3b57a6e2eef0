#!/usr/bin/env bash
# Rust (`ifp bench`) vs PyTorch eager (`bench/torch_bench.py`) training-step time and peak RSS,
# on this machine, with the same thread count, interleaved (ifp, torch, ifp, torch, ...), and
# optionally a base ifp binary in the same rounds (IFP_BASE).
#
#   bench/compare.sh
#
# Env:
#   IFP_BIN   ifp binary (default /var/tmp/ifp-target/release/ifp)
#   IFP_BASE  optional second ifp binary (say, a build of the commit before a change), run
#             in the same rounds (base, ifp, torch, base, ifp, torch, ...) so the change is
#             measured in one machine state: the table adds its step_ms, ifp/base and peak
#   PY        venv python (default /var/tmp/ifp-venv/bin/python)
#   THREADS   threads for both (default: nproc); ifp gets RAYON_NUM_THREADS, torch --threads
#             (and OMP_NUM_THREADS/MKL_NUM_THREADS)
#   REPS      repetitions per implementation and row (default 2); the reported step_ms is the
#             median over repetitions of each run's median step
#   STEPS     timed steps per run (default 11; both also run 2 untimed warm-up steps)
#   STEPS_PAPER  timed steps of the paper-network rows (default 5)
#   ONLY      restormer (default rows) or uformer (the Uformer rows only)
#   EXTRA=1   also the golden restormer_tiny row and the Uformer rows (golden uformer_tiny at
#             batch 4, 64x64; uformer-paper at batch 1, 128x128)
#   WORK      where logs go (default: a new /tmp/ifp-compare.XXXXXX, kept)
#
# Both timings cover the whole training step including data preparation: ifp times
# Trainer::train_step (crop sampling, corruption, forward, loss, backward, clipping, AdamW,
# schedule); torch_bench.py times sampler.sample (PIL RandomResizedCrop + flip) + train_step
# (corruption, forward, m_masked loss, backward, clip_grad_norm_ 3.0, AdamW with the two
# parameter groups, timm step_update). Fixed IFP mask on both sides. Peak RSS comes from
# /usr/bin/time -v ("Maximum resident set size") when installed, else from wait4() rusage; the
# torch figure includes the interpreter and `import torch` (printed separately).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
IFP_BIN="${IFP_BIN:-/var/tmp/ifp-target/release/ifp}"
PY="${PY:-/var/tmp/ifp-venv/bin/python}"
THREADS="${THREADS:-$(nproc)}"
REPS="${REPS:-2}"
STEPS="${STEPS:-11}"
STEPS_PAPER="${STEPS_PAPER:-5}"
EXTRA="${EXTRA:-0}"
WORK="${WORK:-$(mktemp -d /tmp/ifp-compare.XXXXXX)}"
mkdir -p "$WORK"
GOLDEN="${IFP_GOLDEN_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/shared/golden}"
GOLDEN_TINY="$GOLDEN/configs/restormer_tiny.yaml"
GOLDEN_UFORMER="$GOLDEN/configs/uformer_tiny.yaml"
ONLY="${ONLY:-}"

[ -x "$IFP_BIN" ] || { echo "ifp binary not found: $IFP_BIN (set IFP_BIN)" >&2; exit 1; }
IFP_BASE="${IFP_BASE:-}"
[ -z "$IFP_BASE" ] || [ -x "$IFP_BASE" ] || { echo "base binary not found: $IFP_BASE (IFP_BASE)" >&2; exit 1; }
[ -x "$PY" ] || { echo "python not found: $PY (set PY; see bench/setup-venv.sh)" >&2; exit 1; }

# The "small" Restormer of issue 7: dim 16, blocks [1,2,2,2], 1 refinement block, 32 output
# channels, head width 32.
cat > "$WORK/small.yaml" <<'EOF'
MODEL:
  TYPE: restormer
  RECOVER_TARGET_TYPE: m_masked
  RESTORMER: {OUT_CHANNELS: 32, DIM: 16, NUM_BLOCKS: [1, 2, 2, 2], NUM_REFINEMENT_BLOCKS: 1,
              HEADS: [1, 2, 4, 8], FFN_EXPANSION_FACTOR: 2.66}
  DECODER: {IN_NC: 32, OUT_NC: 3, NF: 32}
DATA: {IMG_SIZE: 64, BATCH_SIZE: 2}
TRAIN:
  WARMUP_EPOCHS: 20
  BASE_LR: 3e-4
  CLIP_GRAD: 3.0
  OPTIMIZER:
    BETAS: (0.9, 0.95)
EOF

# label | ifp --config | torch --config | batch | size | steps
# Restormer rows (issue 7's set): the tiny preset (b4, 64), the "small" Restormer (b4, 64 and
# b2, 128) and the paper Restormer (b1, 64). Uformer rows (ONLY=uformer or EXTRA=1): the network
# is built for the bench size, MODEL.UFORMER.IMAGE_SIZE = size, on both sides; stochastic depth
# is active on both, as in training.
ROWS=()
if [ "$ONLY" != uformer ]; then
  ROWS+=("tiny preset|tiny|$ROOT/presets/tiny.yaml|4|64|$STEPS")
  ROWS+=("small|$WORK/small.yaml|$WORK/small.yaml|4|64|$STEPS")
  ROWS+=("small|$WORK/small.yaml|$WORK/small.yaml|2|128|$STEPS")
  ROWS+=("restormer-paper|restormer-paper|$ROOT/presets/restormer-paper.yaml|1|64|$STEPS_PAPER")
  if [ "$EXTRA" = 1 ]; then
    ROWS+=("golden restormer_tiny|$GOLDEN_TINY|$GOLDEN_TINY|4|64|$STEPS")
  fi
fi
if [ "$ONLY" = uformer ] || { [ "$EXTRA" = 1 ] && [ "$ONLY" != restormer ]; }; then
  ROWS+=("golden uformer_tiny|$GOLDEN_UFORMER|$GOLDEN_UFORMER|4|64|$STEPS")
  ROWS+=("uformer-paper|uformer-paper|$ROOT/presets/uformer-paper.yaml|1|128|$STEPS_PAPER")
fi

HAVE_TIME=0
[ -x /usr/bin/time ] && /usr/bin/time -v true >/dev/null 2>&1 && HAVE_TIME=1
[ "${NO_GNU_TIME:-0}" = 1 ] && HAVE_TIME=0  # force the wait4() fallback

# run_measured LOG RSSFILE cmd...: stdout+stderr of cmd to LOG, peak RSS (KiB) to RSSFILE,
# user+system CPU seconds of the whole process to RSSFILE.cpu
run_measured() {
  local log="$1" rss="$2"; shift 2
  if [ "$HAVE_TIME" = 1 ]; then
    local st=0
    /usr/bin/time -v -o "$log.time" "$@" >"$log" 2>&1 || st=$?
    awk -F': ' '/Maximum resident set size/{print $2}' "$log.time" >"$rss"
    awk -F': ' '/User time|System time/{s+=$2} END{print s}' "$log.time" >"$rss.cpu"
    return "$st"
  else
    "$PY" - "$log" "$rss" "$@" <<'EOF'
import os, subprocess, sys
log, rss, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(log, "w") as f:
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    _, status, ru = os.wait4(p.pid, 0)
open(rss, "w").write(f"{ru.ru_maxrss}\n")
open(rss + ".cpu", "w").write(f"{ru.ru_utime + ru.ru_stime}\n")
sys.exit(os.waitstatus_to_exitcode(status))
EOF
  fi
}

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), threads $THREADS, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "ifp: $IFP_BIN${IFP_BASE:+; base: $IFP_BASE}; torch: $("$PY" -c 'import torch; print(torch.__version__)'); logs in $WORK"
for row in "${ROWS[@]}"; do
  IFS='|' read -r label icfg tcfg batch size steps <<<"$row"
  for rep in $(seq 1 "$REPS"); do
    tag="$(echo "$label" | tr -c 'A-Za-z0-9\n' '_')-b$batch-s$size-r$rep"
    ilog="$WORK/$tag.ifp.log"; tlog="$WORK/$tag.torch.log"; blog="$WORK/$tag.base.log"
    bms=nan; brss=0; bcpu=nan
    if [ -n "$IFP_BASE" ]; then
      RAYON_NUM_THREADS="$THREADS" run_measured "$blog" "$blog.rss" \
        "$IFP_BASE" bench --config "$icfg" --batch "$batch" --size "$size" --steps "$steps" \
        || { echo "base ifp bench failed ($label rep $rep), see $blog" >&2; tail -n 5 "$blog" >&2; exit 1; }
      bms=$(awk '/^step_ms/{print $2}' "$blog" | tail -n 1)
      [ -n "$bms" ] || { echo "no step_ms line ($label rep $rep): $blog" >&2; exit 1; }
      brss=$(cat "$blog.rss"); bcpu=$(cat "$blog.rss.cpu")
    fi
    RAYON_NUM_THREADS="$THREADS" run_measured "$ilog" "$ilog.rss" \
      "$IFP_BIN" bench --config "$icfg" --batch "$batch" --size "$size" --steps "$steps" \
      || { echo "ifp bench failed ($label rep $rep), see $ilog" >&2; tail -n 5 "$ilog" >&2; exit 1; }
    OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" run_measured "$tlog" "$tlog.rss" \
      "$PY" "$HERE/torch_bench.py" --config "$tcfg" --batch "$batch" --size "$size" --steps "$steps" \
      --threads "$THREADS" \
      || { echo "torch_bench failed ($label rep $rep), see $tlog" >&2; tail -n 5 "$tlog" >&2; exit 1; }
    ims=$(awk '/^step_ms/{print $2}' "$ilog" | tail -n 1)
    tms=$(awk '/^step_ms/{print $2}' "$tlog" | tail -n 1)
    [ -n "$ims" ] && [ -n "$tms" ] || { echo "no step_ms line ($label rep $rep): $ilog $tlog" >&2; exit 1; }
    t0mb=$(sed -n 's/.*rss_after_import_mb \([0-9.]*\).*/\1/p' "$tlog" | head -n 1)
    iparams=$(sed -n 's/.* params \([0-9]*\) .*/\1/p' "$ilog" | head -n 1)
    tparams=$(sed -n 's/.* params \([0-9]*\) .*/\1/p' "$tlog" | head -n 1)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$batch" "$size" "$ims" "$tms" \
      "$(cat "$ilog.rss")" "$(cat "$tlog.rss")" "${t0mb:-nan}" "$iparams" "$tparams" \
      "$(cat "$ilog.rss.cpu")" "$(cat "$tlog.rss.cpu")" "$(cut -d' ' -f1 /proc/loadavg)" \
      "$bms" "$brss" "$bcpu" >>"$RESULTS"
    echo "  $label b$batch ${size}x$size rep $rep: ${IFP_BASE:+base $bms ms, }ifp $ims ms, torch $tms ms"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

"$PY" - "$RESULTS" "$THREADS" "$REPS" <<'EOF'
import statistics, sys
rows, order = {}, []
for line in open(sys.argv[1]):
    (label, b, s, ims, tms, irss, trss, t0, ip, tp, icpu, tcpu, load, bms, brss, bcpu
     ) = line.rstrip("\n").split("\t")
    key = (label, b, s)
    if key not in rows:
        rows[key] = []
        order.append(key)
    rows[key].append((float(ims), float(tms), int(irss) / 1024, int(trss) / 1024, float(t0), ip, tp,
                      float(icpu), float(tcpu), float(load), float(bms), int(brss) / 1024))
base = all(x[10] == x[10] for r in rows.values() for x in r)  # no NaN: a base binary ran
print()
print("| config | batch | size | params | ifp step_ms | torch step_ms | ratio ifp/torch | ifp peak MB | torch peak MB "
      "| ifp CPU s | torch CPU s |" + (" base step_ms | ifp/base | base peak MB |" if base else ""))
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if base else ""))
notes = []
for key in order:
    r = rows[key]
    im = statistics.median(x[0] for x in r)
    tm = statistics.median(x[1] for x in r)
    irss = max(x[2] for x in r)
    trss = max(x[3] for x in r)
    ip, tp = r[0][5], r[0][6]
    if ip != tp:
        notes.append(f"{key[0]}: parameter counts differ (ifp {ip}, torch {tp})")
    icpu = statistics.median(x[7] for x in r)
    tcpu = statistics.median(x[8] for x in r)
    loads = ", ".join(f"{x[9]:.2f}" for x in r)
    extra = ""
    if base:
        bm = statistics.median(x[10] for x in r)
        extra = f" {bm:.1f} | {im / bm:.2f} | {max(x[11] for x in r):.0f} |"
        runs = ", ".join(f"{x[10]:.1f}/{x[0]:.1f}/{x[1]:.1f}" for x in r)
        what = "base/ifp/torch"
    else:
        runs = ", ".join(f"{x[0]:.1f}/{x[1]:.1f}" for x in r)
        what = "ifp/torch"
    print(f"| {key[0]} | {key[1]} | {key[2]}x{key[2]} | {ip} | {im:.1f} | {tm:.1f} | {im / tm:.2f} | {irss:.0f} | {trss:.0f} "
          f"| {icpu:.1f} | {tcpu:.1f} |" + extra)
    notes.append(f"{key[0]}: per-run medians {what} ms: {runs} (1-min load after each round: {loads})")
t0 = statistics.median(x[4] for r in rows.values() for x in r)
print()
print(f"Threads {sys.argv[2]} for both; {sys.argv[3]} interleaved runs per implementation and row; step_ms = "
      "median over runs of each run's median step. Both step times include data preparation "
      "(crop sampling + corruption). Peak MB = max RSS of the process (max over runs); torch's "
      f"includes the interpreter and `import torch` (~{t0:.0f} MB before any model is built). "
      "CPU s = user+system seconds of the whole process (median over runs: start-up, 2 warm-up and "
      "all timed steps), less sensitive than wall time to other load on a shared machine.")
for n in notes:
    print(f"- {n}")
EOF
