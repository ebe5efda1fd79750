"""Run every benchmark (``make bench``) and collect their tables in results/summary.md.

    .venv/bin/python benchmarks/run_all.py [--quick] [--weights PATH] [--threads N] [--only NAME ...]

The full suite takes about 10 minutes on a 2-core CPU (more when other jobs share it: the
load average is recorded with every timing); ``--quick`` about 3 minutes. Results:
``benchmarks/results/<name>.json`` (``<name>_quick.json`` with ``--quick``), the seam figure
``results/seams_stride16.png`` and ``results/summary.md``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

# Cheapest first, so that a quick look at the first tables needs no wait.
SUITE = ["bench_components", "bench_seams", "bench_training", "bench_speedup", "bench_inpaint_strides",
         "bench_large", "bench_phasing"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--weights", default=None, help="weights file or training checkpoint for the model runs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for every run")
    ap.add_argument("--only", nargs="*", default=None, help=f"subset of {SUITE}")
    opts = ap.parse_args(argv)
    names = opts.only or SUITE
    summary = [f"# Benchmark summary ({'quick' if opts.quick else 'full'})", "",
               f"machine: {C.machine()}", ""]
    t_all = time.perf_counter()
    failed = []
    for name in names:
        module = importlib.import_module(name)
        args = ["--quick"] if opts.quick else []
        if opts.weights and name not in ("bench_training", "bench_components", "bench_phasing"):
            args += ["--weights", opts.weights]
        if opts.threads and name != "bench_speedup":
            args += ["--threads", str(opts.threads)]
        print(f"\n=== {name} {' '.join(args)}", flush=True)
        t0 = time.perf_counter()
        try:
            payload = module.main(args)
        except Exception as exc:  # keep going: one broken benchmark should not hide the others
            print(f"{name} failed: {type(exc).__name__}: {exc}", flush=True)
            failed.append(name)
            continue
        elapsed = time.perf_counter() - t0
        summary += [f"## {name} ({elapsed:.0f} s)", "", f"model: {payload.get('model', '-')}", ""]
        for title, table in payload.get("tables", {}).items():
            summary += [f"### {title}", "", table, ""]
    total = time.perf_counter() - t_all
    summary += [f"total: {total:.0f} s, load average at the end {C.os.getloadavg()}"]
    C.RESULTS.mkdir(parents=True, exist_ok=True)
    out = C.RESULTS / f"summary{'_quick' if opts.quick else ''}.md"
    out.write_text("\n".join(summary) + "\n")
    print(f"\nall benchmarks: {total:.0f} s; summary in {out}" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
