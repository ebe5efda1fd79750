"""Speed-up of `inpaint` over an earlier version of bcdi_gapfill/inpaint.py, same inputs.

The earlier ``inpaint.py`` is read from git (``git show REF:bcdi_gapfill/inpaint.py``,
default REF 328abbd, the version before the sparse prefill and gap-voxel accumulation) and
run as a separate module against the same model (a copy), pattern and gap. Each version runs
in its own process, one after the other, at the same thread count; the table gives both
times, the speed-up and how far the results differ: max |log1p(new) - log1p(old)| over the
gap voxels (float32 round-off of a reordered computation) and whether the measured voxels
are bit-identical.

    .venv/bin/python benchmarks/bench_speedup.py [--quick] [--ref 328abbd] [--strides 16] [--threads 1,2]
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

WIDTH = 6


def _old_module(ref: str):
    src = subprocess.run(["git", "show", f"{ref}:bcdi_gapfill/inpaint.py"], cwd=C.ROOT, capture_output=True,
                         text=True, check=True).stdout
    path = C.CACHE / f"inpaint_{ref}.py"
    C.CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"inpaint_{ref}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(args: dict) -> dict:
    import numpy as np
    import torch
    from bcdi_gapfill.core.geometry import synthetic_gap_mask
    from bcdi_gapfill.fill import inpainting as new

    module = _old_module(args["ref"]) if args["version"] == "old" else new
    truth = C.simulated(args["size"], args["seed"])
    gap = synthetic_gap_mask(truth.shape, "cross", WIDTH)
    data = truth.copy()
    data[gap] = 0
    model, _ = C.load_model(args.get("weights"))
    if args.get("random_head"):
        # The untrained residual head is zero (output = prefill): give it weights so the
        # comparison covers the network's correction too.
        torch.manual_seed(1)
        with torch.no_grad():
            model.head.weight.normal_(0, 0.05)
    module.inpaint(data[:32, :32, :32], gap[:32, :32, :32], model=model)  # warm-up
    filled, m = C.measure(lambda: module.inpaint(data, gap, model=model, stride=args["stride"]))
    out_path = C.CACHE / f"speedup_{args['version']}_{args['stride']}_{args['threads']}.npy"
    np.save(out_path, filled)
    return {**args, **m, "threads": torch.get_num_threads(), "result": str(out_path)}


def main(argv=None) -> dict:
    import numpy as np
    from bcdi_gapfill.core.geometry import synthetic_gap_mask

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64^3 pattern, stride 16, 1 thread")
    ap.add_argument("--ref", default="328abbd")
    ap.add_argument("--strides", default="16", help="comma-separated (the old version at 2 threads on a busy "
                                                  "CPU takes minutes at stride 8)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="speedup")
    opts = ap.parse_args(argv)
    size = 64 if opts.quick else 128
    strides = [16] if opts.quick else [int(s) for s in opts.strides.split(",")]
    threads = [1] if opts.quick else [int(t) for t in opts.threads.split(",")]
    truth = C.simulated(size, opts.seed)
    gap = synthetic_gap_mask(truth.shape, "cross", WIDTH)
    _, model_desc = C.load_model(opts.weights)
    rows = []
    for t in threads:
        for s in strides:
            res = {}
            for version in ("old", "new"):
                r = C.run_child(__file__, {"version": version, "ref": opts.ref, "size": size, "seed": opts.seed,
                                           "stride": s, "threads": t, "weights": opts.weights,
                                           "random_head": model_desc.startswith("untrained")})
                res[version] = r
                print(f"  threads={t} stride={s} {version}: {r.get('seconds', r.get('error'))} s", flush=True)
            row = {"threads": t, "stride": s, "old_s": res["old"].get("seconds"), "new_s": res["new"].get("seconds"),
                   "load_old": res["old"].get("load1_before"), "load_new": res["new"].get("load1_before"),
                   "old_peak_rss_mb": res["old"].get("peak_rss_mb"), "new_peak_rss_mb": res["new"].get("peak_rss_mb")}
            if row["old_s"] and row["new_s"]:
                row["speedup"] = round(row["old_s"] / row["new_s"], 2)
                a, b = np.load(res["old"]["result"]), np.load(res["new"]["result"])
                row["max_dlog1p"] = float(np.abs(np.log1p(a[gap].astype(np.float64)) -
                                                 np.log1p(b[gap].astype(np.float64))).max())
                row["measured_identical"] = bool(np.array_equal(a[~gap], b[~gap]))
            rows.append(row)
    cols = [("threads", "threads"), ("stride", "stride"), ("old_s", f"{opts.ref} (s)"), ("new_s", "now (s)"),
            ("speedup", "speed-up"), ("max_dlog1p", "max |d log1p| in gap"), ("measured_identical", "measured identical"),
            ("old_peak_rss_mb", f"{opts.ref} peak RSS (MB)"), ("new_peak_rss_mb", "now peak RSS (MB)"),
            ("load_old", f"load ({opts.ref})"), ("load_new", "load (now)")]
    t = C.table(rows, cols)
    print(f"\n### inpaint speed-up over {opts.ref} ({size}^3 cross {WIDTH})\n{t}")
    payload = {"benchmark": "speedup", "quick": opts.quick, "ref": opts.ref, "model": model_desc
               + (" with a random residual head (std 0.05)" if model_desc.startswith("untrained") else ""),
               "machine": C.machine(), "rows": rows, "tables": {"speedup": t}}
    print(f"wrote {C.save(opts.name + ('_quick' if opts.quick else ''), payload)}")
    return payload


if __name__ == "__main__":
    if not C.child_main(_run):
        main()
