#!/usr/bin/env python3
"""bench/http_fuzz.py — structure-aware fuzzing of the config/YAML parser and of the
PNG/JPEG upload check, driven through a live `ifp serve` over HTTP (issue 16, item 5; not run by
CI). Python 3.9+ standard library; Pillow, when importable, adds more image seeds.

Why over HTTP and not cargo-fuzz: see bench/README.md, "HTTP fuzzing" (in short: the parsers
live in crates that pull in candle, and the upload check in the server crate; an instrumented
build of them takes far longer than the campaign on the 2-core machine, and HTTP also exercises
the server's glue: JSON/YAML bodies -> config -> limits -> admission, and the body limit and
gate).

Targets (each case is one request):
  yaml   POST /api/v1/jobs with `config_yaml` (pre-training), or kind compare/finetune with
         `finetune_yaml`, or the config as JSON (`config`): mutated seed configs (presets,
         ../shared golden and reference configs, hostile ones).
  image  POST /api/v1/uploads with the raw body: mutated PNGs (every colour type and bit
         depth, interlaced, palette + tRNS, 16-bit; IHDR fields rewritten with the CRC fixed,
         chunks dropped, duplicated, reordered, oversized, zlib streams corrupted or inflating
         far) and JPEGs (baseline, progressive, grey, CMYK, restart markers; SOF sizes
         rewritten, segments cut).
Mutations: byte-level (flips, interesting integers, cut, splice, duplicate ranges) and
structure-level (YAML scalars replaced by hostile values: +-inf, NaN, 2^63, 1e400, -1, "",
NUL, 100 KB strings, tags like !!binary/!!python/..., anchors/aliases/merge keys, deep
nesting, duplicate and unknown keys; PNG/JPEG as above). An input whose answer (status and
error message with numbers blanked) was not seen before joins the corpus, so the corpus grows
towards new validation branches.

A crash is: a 5xx other than 503 `busy`; a connection reset or no answer in 60 s; an error body
that is not JSON `{"error", "message", ...}`; the server process gone; /healthz failing after a
case; and (a wrong answer rather than a crash) a 201 for a YAML config with a `.inf`/`.nan` value. Crashing inputs go to OUT/crashes/<target>-<n>.bin with a .txt note (status, body).
Accepted jobs (201) are cancelled at once. Run it against a server with no worker slots.

Run:
  P=/var/tmp/ifp-campaign-venv/bin/python
  $P bench/http_fuzz.py --start /tmp/ifp-fuzz --seconds 300        # own server, both targets
  $P bench/http_fuzz.py --url URL --token T --pid PID --target image --seconds 120
Options: --target yaml|image|both (both), --seconds (300), --threads (4: the gate's places on
2 cores, so the gate seldom answers 503), --seed (1), --out (/tmp/ifp-fuzz-out),
--ifp-bin, --port (18681), --datasets (the fine-tuning data folder for --start, default
../shared/data when it exists).

Prints a progress line every 30 s and at the end, per target: execs, execs/s, crashes (unique
by status + message), corpus size, distinct answers, status counts, and the server's VmHWM;
exit 1 when there was any crash.

This file is the driver's front: options, the timed run and the report. The seeds and mutators
are in bench/campaign/fuzz_inputs.py, the cases and crash records in bench/campaign/fuzz_driver.py,
starting or reaching the server in bench/campaign/server.py (shared with bench/load.py).
"""

import argparse
import json
import os
import random
import sys
import threading
import time

from campaign.fuzz_driver import Fuzzer, Target
from campaign.fuzz_inputs import image_seeds, yaml_seeds
from campaign.server import ROOT, add_server_args, connect, proc_status, stop_server


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_args(ap, port=18681, start_help="start `ifp serve --workers 0` in DIR")
    default_data = os.path.join(ROOT, "..", "shared", "data")
    ap.add_argument("--datasets", default=os.path.abspath(default_data) if os.path.isdir(default_data) else None)
    ap.add_argument("--target", choices=["yaml", "image", "both"], default="both")
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="/tmp/ifp-fuzz-out")
    args = ap.parse_args()

    proc, url, token, pid = connect(ap, args, ["--workers", "0"]
                                    + (["--datasets-dir", args.datasets] if args.datasets else []))
    targets = []
    if args.target in ("yaml", "both"):
        targets.append(Target("yaml", yaml_seeds()))
    if args.target in ("image", "both"):
        targets.append(Target("image", image_seeds()))
    f = Fuzzer(args, url, token, pid)
    random.seed(args.seed)
    threads = [threading.Thread(target=f.worker, args=(targets, args.seed * 1000 + i), daemon=True)
               for i in range(args.threads)]
    t0 = time.monotonic()
    for th in threads:
        th.start()

    def report(final=False):
        el = time.monotonic() - t0
        for t in targets:
            print(f"{'final' if final else f'{el:5.0f} s'} {t.name:<5} execs={t.execs} "
                  f"execs/s={t.execs / el:.1f} crashes={sum(t.crashes.values())} unique_crashes={len(t.crashes)} "
                  f"corpus={len(t.corpus)} answers={len(t.seen)} status={json.dumps({str(k): v for k, v in sorted(t.status.items(), key=str)})}",
                  flush=True)
        if pid:
            rss, hwm = proc_status(pid)
            print(f"{'final' if final else f'{el:5.0f} s'} server VmRSS={rss} MB VmHWM={hwm} MB", flush=True)

    try:
        while time.monotonic() - t0 < args.seconds and not f.stop.is_set():
            f.stop.wait(min(30, args.seconds - (time.monotonic() - t0)))
            if not f.stop.is_set():
                report()
    except KeyboardInterrupt:
        pass
    f.stop.set()
    for th in threads:
        th.join(timeout=70)
    alive = f.healthy()
    report(final=True)
    print(f"server healthy at the end: {alive}")
    for t in targets:
        for sig, n in t.crashes.items():
            print(f"  crash [{t.name}] x{n}: {sig}")
        answers = sorted(t.seen)
        with open(os.path.join(args.out, f"answers-{t.name}.txt"), "w") as fh:
            fh.write("\n".join(answers) + "\n")
    print(f"distinct answers written to {args.out}/answers-*.txt; crashing inputs in {args.out}/crashes/")
    if proc:
        stop_server(proc)
    sys.exit(1 if any(t.crashes for t in targets) or not alive else 0)


if __name__ == "__main__":
    main()
