"""The load and fuzz campaigns against `ifp serve` (issue 16, item 5; not run by CI).

The entry points are the scripts next to this package, `bench/load.py` and `bench/http_fuzz.py`
(run as `python3 bench/load.py ...`, so `bench/` is on the import path and `campaign` imports
without any path set-up). Python 3.9+ standard library only.

  server          start an `ifp serve` or connect to one, HTTP requests, /proc memory figures,
                  the --url/--token/--pid/--start/--ifp-bin/--port options both scripts share
  images          PNG chunks and PNG files, for the burst's uploads and the fuzzer's seeds
  load_phases     load.py's /healthz and memory sampler and its phases (sse, slow, burst, after)
  burst_catalogue the burst's requests: hostile submissions, uploads, page previews
  fuzz_inputs     http_fuzz.py's seeds and mutators (YAML, PNG, JPEG, bytes)
  fuzz_driver     http_fuzz.py's targets, cases, crash records and answer signatures
"""
