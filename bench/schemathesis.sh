#!/usr/bin/env bash
# bench/schemathesis.sh — schemathesis campaign against the API's own `/openapi.json`
# (issue 16, item 5; not run by CI).
#
# What it does:
#   1. Makes the campaign venv (default /var/tmp/ifp-campaign-venv, `IFP_CAMPAIGN_VENV`) with a
#      pinned schemathesis if it is missing (pip from PyPI). It never touches /var/tmp/ifp-venv.
#   2. Starts `ifp serve --workers 0` (API only: nothing the fuzzing submits is ever trained)
#      with a fresh data folder and port under $WORK, unless IFP_URL and IFP_TOKEN name a
#      running server. With TRAINED=1 (the default, own server only) it first trains one short
#      tiny job (40 steps) with a separate `ifp worker` process, which is stopped as soon as
#      the job has succeeded, so the checkpoint, sample and event endpoints have real data;
#      it also leaves one job queued (its event stream stays open).
#   3. Runs `schemathesis run` with the admin token as a Bearer header, all phases (examples,
#      coverage, fuzzing, stateful), N cases per operation and phase, with dictionaries that
#      feed the real job ids, checkpoint names, sample steps, presets and hostile YAML configs
#      (alias bombs, inf/NaN, huge sizes, deep nesting) into the generated requests half the
#      time, and the checks CHECKS (default: no 5xx, status code documented, response
#      conforms to its schema, content type and headers documented).
#   4. Stops what it started (server, worker, PostgreSQL).
#
# Run (from the repository root):
#   bench/schemathesis.sh                      # N=600: ~10,000 cases, ~9 min on 2 busy cores
#   N=100 bench/schemathesis.sh                # a quicker pass (~1,500 cases)
#   CHECKS=all bench/schemathesis.sh           # every schemathesis check (also positive/negative
#                                              # data acceptance: schema precision, not crashes)
#   IFP_URL=http://127.0.0.1:8080 IFP_TOKEN=$(cat ifp-data/admin-token) bench/schemathesis.sh
# Env: IFP_BIN (default /var/tmp/ifp-target/release/ifp), WORK (default /tmp/ifp-schemathesis),
#   PORT (18481), N (600), SEED (1), WORKERS (schemathesis concurrency, 2), MAX_TIME (seconds,
#   unset = until N cases each), TRAINED (1), CHECKS.
#
# Prints schemathesis's own report, then one line
#   schemathesis: cases=<generated> failures=<unique failures> errors=<n> \
#     seconds=<s> server_peak_rss_mb=<VmHWM of the server process> exit=<schemathesis exit code>
# and exits with schemathesis's exit code (0 = no failures). Files: $WORK/schemathesis.log,
# $WORK/report/ (JUnit + NDJSON), $WORK/serve.log.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
VENV=${IFP_CAMPAIGN_VENV:-/var/tmp/ifp-campaign-venv}
IFP_BIN=${IFP_BIN:-/var/tmp/ifp-target/release/ifp}
WORK=${WORK:-/tmp/ifp-schemathesis}
PORT=${PORT:-18481}
N=${N:-600}
SEED=${SEED:-1}
WORKERS=${WORKERS:-2}
TRAINED=${TRAINED:-1}
CHECKS=${CHECKS:-not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance,response_headers_conformance}
SCHEMATHESIS_VERSION=4.32.5

if [ ! -x "$VENV/bin/schemathesis" ]; then
    echo "== making $VENV (schemathesis $SCHEMATHESIS_VERSION)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi
PY=$VENV/bin/python

SERVER_PID=""
WORKER_PID=""
cleanup() {
    if [ -n "$WORKER_PID" ]; then kill "$WORKER_PID" 2>/dev/null || true; fi
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# An HTTP call through python (no curl dependency): prints the body, fails on >= 400.
api() { # METHOD PATH [JSON]
    "$PY" - "$URL" "$TOKEN" "$@" <<'EOF'
import sys, urllib.request
url, token, method, path = sys.argv[1:5]
data = sys.argv[5].encode() if len(sys.argv) > 5 else None
req = urllib.request.Request(url + path, data=data, method=method,
                             headers={"Authorization": "Bearer " + token,
                                      "Content-Type": "application/json"})
print(urllib.request.urlopen(req, timeout=30).read().decode())
EOF
}
field() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

rm -rf "$WORK/report"
mkdir -p "$WORK/report"
if [ -n "${IFP_URL:-}" ]; then
    URL=${IFP_URL%/}
    TOKEN=${IFP_TOKEN:?IFP_TOKEN is needed with IFP_URL}
    TRAINED=0
    SERVER_PID=""
    WATCH_PID=${IFP_PID:-}
else
    rm -rf "$WORK/data"
    URL=http://127.0.0.1:$PORT
    echo "== starting ifp serve --workers 0 on $URL (data in $WORK/data)"
    nice -n 10 "$IFP_BIN" serve --data-dir "$WORK/data" --bind "127.0.0.1:$PORT" --workers 0 \
        >"$WORK/serve.log" 2>&1 &
    SERVER_PID=$!
    WATCH_PID=$SERVER_PID
    for _ in $(seq 120); do
        if [ -s "$WORK/data/admin-token" ] && "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1]+'/healthz', timeout=2)" "$URL" 2>/dev/null; then
            break
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/serve.log"; exit 2; }
        sleep 1
    done
    TOKEN=$(cat "$WORK/data/admin-token")
fi

JOB_IDS=()
CKPTS=()
STEPS=()
if [ "$TRAINED" = 1 ]; then
    DB=$(grep -o 'DATABASE_URL=[^ ]*' "$WORK/serve.log" | head -1 | cut -d= -f2- | tr -d ')')
    YAML=$(sed -e 's/^  STEPS: 400/  STEPS: 40/' -e 's/^SAVE_FREQ: 200/SAVE_FREQ: 20/' "$ROOT/presets/tiny.yaml")
    BODY=$("$PY" -c 'import json,sys; print(json.dumps({"name": "schemathesis-seed", "config_yaml": sys.argv[1]}))' "$YAML")
    DONE=$(api POST /api/v1/jobs "$BODY" | field 'd["id"]')
    echo "== training seed job $DONE (40 tiny steps) with a separate ifp worker"
    nice -n 10 "$IFP_BIN" worker --database-url "$DB" --data-dir "$WORK/data" --workers 1 \
        >"$WORK/worker.log" 2>&1 &
    WORKER_PID=$!
    for _ in $(seq 600); do
        S=$(api GET "/api/v1/jobs/$DONE" | field 'd["status"]')
        case $S in succeeded) break ;; failed|cancelled) echo "seed job $S"; exit 2 ;; esac
        sleep 1
    done
    kill "$WORKER_PID"; wait "$WORKER_PID" 2>/dev/null || true; WORKER_PID=""
    echo "== seed job $S; worker stopped"
    JOB_IDS+=("$DONE")
    mapfile -t CKPTS < <(api GET "/api/v1/jobs/$DONE/checkpoints" | field '"\n".join(sorted({c["name"] for c in d}))')
    STEPS=(20 40)
    QUEUED=$(api POST /api/v1/jobs '{"name": "schemathesis-queued", "preset": "tiny"}' | field 'd["id"]')
    JOB_IDS+=("$QUEUED")
fi

# The config file: dictionaries of real identifiers and of hostile configs, each used for half
# of the generated values of its parameter.
"$PY" - "$WORK/schemathesis.toml" "$ROOT/presets/tiny.yaml" "${#JOB_IDS[@]}" "${JOB_IDS[@]}" \
    "${#CKPTS[@]}" "${CKPTS[@]}" "${STEPS[@]}" <<'EOF'
import json, sys
out, tiny_path = sys.argv[1], sys.argv[2]
rest = sys.argv[3:]
n = int(rest[0]); ids = rest[1:1 + n]; rest = rest[1 + n:]
n = int(rest[0]); ckpts = rest[1:1 + n]; steps = rest[1 + n:]
tiny = open(tiny_path).read()
def sub(k, v):
    return "\n".join(l if not l.strip().startswith(k + ":") else l.split(k)[0] + f"{k}: {v}"
                     for l in tiny.splitlines())
wide = "[" + ", ".join(["1"] * 2000) + "]"
bomb_small = "a: &a " + wide + "\nb: [" + ", ".join(["*a"] * 100) + "]\n"
bomb_mb = "a: &a " + wide + "\nb: [" + ", ".join(["*a"] * 50000) + "]\n"   # ~200 KB
yaml = [tiny, sub("STEPS", ".inf"), sub("BASE_LR", ".nan"), sub("DIM", "1000000"),
        sub("IMG_SIZE", "4096").replace("BATCH_SIZE: 4", "BATCH_SIZE: 1000"),
        sub("BATCH_SIZE", str(2**62)), sub("STEPS", str(10**12)), sub("SEED", "-1"),
        sub("DIM", "1e400"), sub("NUM_BLOCKS", "[1, 1, 1, 200000]"),
        sub("TAG", "\"a\\u0000b\""), sub("TAG", "!!binary aGVsbG8="),
        "MODEL: {TYPE: uformer}\nDATA: {IMG_SIZE: 2048, BATCH_SIZE: 1024}\n",
        "MODEL:\n  UFORMER:\n    IMAGE_SIZE: 2048\n    EMBED_DIM: 512\n",
        "DATA: {NOISE: {WIDTH: 8192, HEIGHT: 8192}}\n",
        "[" * 5000 + "]" * 5000, "{" * 3000, "a: !!python/object/apply:os.system [ls]\n",
        "<<: {MODEL: {}}\n", "? [a, b]\n: c\n", "---\n---\n", "", "\x00", "\ufeffMODEL: {}\n",
        bomb_small, bomb_mb]
# Event streams: read a few events, then move on (a queued job's stream stays open).
toml = ["max-stream-events = 5"]
def dictionary(name, values):
    toml.append(f"[dictionaries.{name}]")
    toml.append("values = [" + ", ".join(json.dumps(v) for v in values) + "]")
dictionary("yaml", yaml)
dictionary("presets", ["tiny", "tiny-uformer", "restormer-paper", "uformer-paper", "TINY", "tiny\u0000", "../tiny"])
dictionary("kinds", ["pretrain", "compare", "finetune", "PRETRAIN", ""])
if ids:
    dictionary("ids", ids)
if ckpts:
    dictionary("ckpts", ckpts + ["../../admin-token", "model-000040.safetensors%00", "state-000040.safetensors"])
if steps:
    dictionary("steps", [int(s) for s in steps] + [0, -1, 2**63])
def bind(path_regex, params):
    toml.append("[[operations]]")
    toml.append(f"include-path-regex = {json.dumps(path_regex)}")
    toml.append("parameters = { " + ", ".join(
        f"{json.dumps(k)} = {{ dictionary = {json.dumps(d)}, probability = 0.5 }}" for k, d in params) + " }")
# No other ifp-specific settings: everything else comes from the command line.
bind("^/api/v1/jobs$", [("body.config_yaml", "yaml"), ("body.finetune_yaml", "yaml"),
                          ("body.preset", "presets"), ("body.kind", "kinds")])
if ids:
    bind(r"^/api/v1/jobs/\{id\}(/cancel|/metrics|/events|/checkpoints)?$", [("path.id", "ids")])
if ids and ckpts:
    bind(r"^/api/v1/jobs/\{id\}/checkpoints/\{name\}$", [("path.id", "ids"), ("path.name", "ckpts")])
if ids and steps:
    bind(r"^/api/v1/jobs/\{id\}/samples/\{step\}$", [("path.id", "ids"), ("path.step", "steps")])
open(out, "w").write("\n".join(toml) + "\n")
EOF

MAXT=()
if [ -n "${MAX_TIME:-}" ]; then MAXT=(--max-time "$MAX_TIME"); fi
echo "== schemathesis $("$VENV/bin/schemathesis" --version | awk '{print $NF}') against $URL/openapi.json: N=$N per operation and phase, seed $SEED, checks $CHECKS"
START=$(date +%s)
cd "$WORK"   # schemathesis keeps a cache folder (.schemathesis/) in the current directory
set +e
nice -n 5 "$VENV/bin/schemathesis" --config-file "$WORK/schemathesis.toml" run "$URL/openapi.json" \
    -H "Authorization: Bearer $TOKEN" \
    --phases examples,coverage,fuzzing,stateful \
    -n "$N" --seed "$SEED" -w "$WORKERS" "${MAXT[@]}" \
    -c "$CHECKS" \
    --request-timeout 20 \
    --suppress-health-check all --continue-on-failure \
    --report junit,ndjson --report-dir "$WORK/report" \
    2>&1 | tee "$WORK/schemathesis.log"
RC=${PIPESTATUS[0]}
set -e
SECS=$(( $(date +%s) - START ))

PEAK=na
if [ -n "${WATCH_PID:-}" ] && [ -r "/proc/$WATCH_PID/status" ]; then
    PEAK=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$WATCH_PID/status")
fi
"$PY" - "$WORK/schemathesis.log" "$SECS" "$PEAK" "$RC" <<'EOF'
import re, sys
log, secs, peak, rc = sys.argv[1:]
text = re.sub(r"\x1b\[[0-9;]*m", "", open(log, errors="replace").read())
m = re.search(r"Test cases:\s*\n\s*(.+)", text)
line = m.group(1) if m else ""
def num(pattern):
    m = re.search(pattern, line)
    return int(m.group(1)) if m else 0
cases = num(r"(\d+) generated")
failures = num(r"(\d+) unique failures?")
errors = num(r"(\d+) errors?")
print(f"schemathesis: cases={cases} failures={failures} errors={errors} "
      f"seconds={secs} server_peak_rss_mb={peak} exit={rc}   ({line.strip()})")
EOF
exit "$RC"
