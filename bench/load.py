#!/usr/bin/env python3
"""bench/load.py — load and abuse campaign against a running `ifp serve` (issue 16, item 5;
not run by CI). Python 3.9+ standard library only.

What it does, in phases, while a sampler thread times `GET /healthz` (a fresh connection every
0.2 s, as a monitor would) and reads the server process's VmRSS/VmHWM from /proc/PID/status
(and the resident memory of its training child processes, `ifp attempt`):

  baseline  a few seconds of nothing, for the idle figures.
  sse       submits a tiny job and opens --sse (300) concurrent event streams on
            /api/v1/jobs/{id}/events; holds them until the job ends (needs a worker) or
            --sse-secs; counts the streams that connected, that saw the job end, and events.
  slow      slowloris: --slow (400, below the connection cap) connections send a request line
            and then one header byte every 2 s; each should be closed by the server at the
            header-read timeout. Then --idle (cap + 200) connections that send nothing at all,
            i.e. more than the cap: the cap must hold (connections past it wait in the kernel's
            queue) and /healthz must come back once the timeout frees places.
  burst     --burst-clients (48) threads at once, each --burst-rounds (3) times: new-job previews
            with the largest sizes (form fields and YAML: 8192x8192 noise, 2048 crops, batch 1024),
            API submissions with huge configs (DIM 1000000, IMG_SIZE 4096 + BATCH_SIZE 1000,
            BATCH_SIZE 2^62, STEPS 1e12, .inf/.nan, `{"config": {}}` = the paper network,
            YAML alias bombs of ~200 KB and ~1 MB, 5000-deep nesting, max_attempts 20 and
            priority 1000), uploads of small PNGs declaring 16384x16384 and of a 16 MP PNG
            whose zlib stream inflates to 48 MiB, and a JPEG header declaring 65500x65500.
            Every job the burst gets accepted is cancelled right after, so none keeps a worker.
  after     submits {"name": "after", "preset": "tiny"} and waits for it to succeed (needs a
            worker; about a minute on 2 cores with one CPU worker).

Run (a server with one CPU worker; this script does not start one unless --start):
  P=/var/tmp/ifp-campaign-venv/bin/python   # or any python3
  $P bench/load.py --url http://127.0.0.1:8080 --token "$(cat ifp-data/admin-token)" --pid PID
  $P bench/load.py --start /tmp/ifp-load     # starts `ifp serve --workers 1` itself there
  $P bench/load.py --start /tmp/ifp-burst --workers 0 --phases baseline,burst --burst-only '^preview:'
                                             # one kind of burst alone, with nothing training
  $P bench/load.py ... --phases burst,after  # a subset
Options: --ifp-bin, --workers (for --start; default /var/tmp/ifp-target/release/ifp, 1), --port (18581),
  --sse, --sse-secs, --slow, --idle, --header-timeout (the server's, default 10),
  --max-connections (the server's, default 512), --burst-clients, --burst-rounds,
  --burst-only REGEX (e.g. '^(submit|upload):' for a burst without previews), --json FILE.

Prints one line per phase while it runs, then a summary table: per phase, requests by status,
/healthz median / p99 / max latency and failed probes, the server's largest VmRSS sampled and
its VmHWM at the phase's end, the largest training-child RSS; then the SSE, slow-connection,
burst (status counts per request kind, and which hostile submissions were accepted) and
after-job results. Exit status 0 when the server stayed up, no request got a 5xx other than 503
`busy`, /healthz never failed outside the over-the-cap test, and the after job succeeded; 1
otherwise (the reasons are printed).

This file is the driver: options, the phase loop and the summary. The sampler and the phases
are in bench/campaign/load_phases.py, the burst's requests in bench/campaign/burst_catalogue.py,
starting or reaching the server in bench/campaign/server.py (shared with bench/http_fuzz.py).
"""

import argparse
import json
import os
import statistics
import sys
import time

from campaign.load_phases import Sampler, phase_after, phase_burst, phase_slow, phase_sse
from campaign.server import Server, add_server_args, connect, proc_status, stop_server


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))
    return xs[i]


def say(*a):
    print(*a, flush=True)


def fmt(x, nd=0):
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return f"{x:.{nd}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_args(ap, port=18581, start_help="start `ifp serve --workers 1` in DIR")
    ap.add_argument("--workers", type=int, default=1,
                    help="worker slots of the --start server (0: API only, for a burst's own memory; "
                         "the sse and after phases need one)")
    ap.add_argument("--phases", default="baseline,sse,slow,burst,after")
    ap.add_argument("--sse", type=int, default=300)
    ap.add_argument("--sse-secs", type=float, default=240)
    ap.add_argument("--slow", type=int, default=400)
    ap.add_argument("--idle", type=int, default=None, help="default: max-connections + 200")
    ap.add_argument("--header-timeout", type=int, default=10)
    ap.add_argument("--max-connections", type=int, default=512)
    ap.add_argument("--burst-clients", type=int, default=48)
    ap.add_argument("--burst-rounds", type=int, default=3)
    ap.add_argument("--burst-only", metavar="REGEX", help="only the burst requests whose kind:label matches")
    ap.add_argument("--after-timeout", type=float, default=600)
    ap.add_argument("--json", help="write every figure to this file")
    args = ap.parse_args()

    proc, url, token, pid = connect(ap, args, [
        "--workers", str(args.workers), "--max-connections", str(args.max_connections),
        "--header-timeout-secs", str(args.header_timeout)])
    s = Server(url, token, pid)
    if not pid:
        say("note: no --pid, so no memory figures")
    sampler = Sampler(s)
    sampler.start()
    results = {"url": url, "pid": pid, "nproc": os.cpu_count(),
               "loadavg_start": open("/proc/loadavg").read().split()[:3]}
    phases = args.phases.split(",")
    problems = []
    try:
        for ph in phases:
            t0 = time.monotonic()
            if ph == "baseline":
                sampler.set_phase("baseline")
                time.sleep(5)
                r = {"seconds": 5}
            elif ph == "sse":
                sampler.set_phase("sse")
                r = phase_sse(s, args.sse, args.sse_secs)
            elif ph == "slow":
                sampler.set_phase("slow-trickle")
                hold = args.header_timeout * 3 + 5
                r1 = phase_slow(s, args.slow, "trickle", 2.0, hold)
                say(f"[slow-trickle] {json.dumps(r1)}")
                idle = args.idle if args.idle is not None else args.max_connections + 200
                sampler.set_phase("slow-over-cap")
                r2 = phase_slow(s, idle, "idle", 1.0, args.header_timeout * 4 + 5)
                say(f"[slow-over-cap] {json.dumps(r2)}")
                sampler.set_phase("slow-recovered")
                time.sleep(3)
                r = {"trickle": r1, "over_cap": r2}
                results[ph] = r
                continue
            elif ph == "burst":
                sampler.set_phase("burst")
                r = phase_burst(s, args.burst_clients, args.burst_rounds, args.burst_only)
                if r["5xx_bodies"]:
                    problems.append(f"burst: 5xx other than 503 busy: {r['5xx_bodies']}")
            elif ph == "after":
                sampler.set_phase("after")
                r = phase_after(s, args.after_timeout)
                if not r.get("ok"):
                    problems.append(f"after job did not succeed: {r}")
            else:
                ap.error(f"unknown phase {ph}")
            results[ph] = r
            say(f"[{ph}] {round(time.monotonic() - t0)} s: {json.dumps(r)}")
    finally:
        sampler.finish()
        sampler.join(timeout=70)

    # Summary
    say("")
    say(f"server {url} pid {pid}; {os.cpu_count()} CPUs; load average at start {' '.join(results['loadavg_start'])}, "
        f"at end {' '.join(open('/proc/loadavg').read().split()[:3])}")
    say(f"{'phase':<16}{'probes':>7}{'fail':>6}{'med ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'RSS max MB':>12}{'HWM end MB':>12}{'train RSS MB':>14}")
    table = {}
    for ph, b in sampler.samples.items():
        if ph in ("start", "end") or not (b["lat"] or b["fail"]):
            continue
        row = {"probes": len(b["lat"]) + b["fail"], "fail": b["fail"],
               "median_ms": round(statistics.median(b["lat"]), 1) if b["lat"] else None,
               "p99_ms": round(pct(b["lat"], 99), 1) if b["lat"] else None,
               "max_ms": round(max(b["lat"]), 1) if b["lat"] else None,
               "rss_max_mb": round(max(b["rss"]), 1) if b["rss"] else None,
               "hwm_end_mb": round(b["hwm_end"], 1) if b["hwm_end"] else None,
               "train_rss_max_mb": round(max(b["kids"]), 1) if b["kids"] else None}
        table[ph] = row
        say(f"{ph:<16}{row['probes']:>7}{row['fail']:>6}{fmt(row['median_ms'], 1):>9}{fmt(row['p99_ms'], 1):>9}"
            f"{fmt(row['max_ms'], 1):>9}{fmt(row['rss_max_mb'], 1):>12}{fmt(row['hwm_end_mb'], 1):>12}"
            f"{fmt(row['train_rss_max_mb'], 1):>14}")
        if b["fail"] and ph not in ("slow-over-cap",):
            problems.append(f"/healthz failed {b['fail']} times during {ph}")
    results["healthz"] = table
    if "sse" in results:
        r = results["sse"]
        say(f"\nSSE: {r.get('streams')} streams, HTTP {r.get('http_status')}, {r.get('connect_fail')} failed to connect, "
            f"{r.get('saw_job_end')} saw the job end ({r.get('job_status')}), {r.get('events')} events, "
            f"first event median {r.get('first_event_ms_median')} ms")
    if "slow" in results:
        for k, r in results["slow"].items():
            say(f"slow {k}: {r['connections']} connections ({r['mode']}), {r['opened']} opened, "
                f"{r['closed_by_server']} closed by the server after {r['close_after_s_min']}-{r['close_after_s_max']} s "
                f"(median {r['close_after_s_median']}), {r['still_open']} still open at the end")
    if "burst" in results:
        r = results["burst"]
        say(f"\nburst: {r['requests']} requests from {r['clients']} clients in {r['seconds']} s")
        for k, v in sorted(r["by_kind"].items()):
            say(f"  {k:<40} {json.dumps(v, sort_keys=True):<34} median {r['latency_ms_median'][k]} ms, max {r['latency_ms_max'][k]} ms")
        say(f"  accepted (201, then cancelled): {r['accepted_and_cancelled'] or 'none'}")
    if "after" in results:
        r = results["after"]
        say(f"\nafter: job {r.get('job')} {r.get('status')} in {r.get('seconds')} s (loss {r.get('loss')}, error {r.get('error')})")
    if pid:
        rss, hwm = proc_status(pid)
        results["server_alive_at_end"] = rss is not None
        say(f"server process {'alive' if rss is not None else 'GONE'} at the end; VmHWM {fmt(hwm, 1)} MB")
        if rss is None:
            problems.append("the server process is gone")
    results["problems"] = problems
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    if proc:
        stop_server(proc)
    say("\n" + ("OK" if not problems else "PROBLEMS:\n  " + "\n  ".join(problems)))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
