"""Does the self-check pick the treatment with the lower true strain error? (issue 22)

For each held-out zero-phase crystal (`bcdi_gapfill.validation.core.validate`'s simulation, seeds
500000...; never used to choose anything) and each cross gap (width, offset from the peak),
`validate(mode="pr")` gives each treatment's true strain RMSE, and
`bcdi_gapfill.validation.selfcheck.assess` on the same measured pattern (``report.pattern``) gives its
recommendation without the truth. A case counts for the issue's target when the two best
treatments by true strain RMSE differ by more than 20 %; the target is the right pick on
>= 80 % of those.

    .venv/bin/python benchmarks/bench_selfcheck.py [--seeds 5] [--size 48] [--oversampling 3]
        [--widths 3 6 9] [--offsets 0 4] [--starts 2] [--hidden free|treated] [--threads 1] [--quick]

Writes ``results/selfcheck_<size>_os<oversampling>_<hidden>.json`` (``..._quick.json``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TREATMENTS = ("free_pixels", "zero_fill", "inpaint", "inpaint+release")
FIRST_SEED = 500_000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--oversampling", type=float, default=3.0)
    ap.add_argument("--widths", type=int, nargs="+", default=[3, 6, 9])
    ap.add_argument("--offsets", type=int, nargs="+", default=[0, 4])
    ap.add_argument("--starts", type=int, default=2)
    ap.add_argument("--hidden", choices=("free", "treated"), default="free",
                    help="the hidden bands left free in every run (default) or treated like the gap")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    opts = ap.parse_args(argv)
    import numpy as np
    import torch

    from bcdi_gapfill import validate
    from bcdi_gapfill.validation.selfcheck import assess

    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.quick:
        opts.seeds, opts.widths, opts.offsets = 1, [3], [0]
    rows = []
    t0 = time.perf_counter()
    for seed in range(FIRST_SEED, FIRST_SEED + opts.seeds):
        for width in opts.widths:
            for offset in opts.offsets:
                t1 = time.perf_counter()
                rep = validate(seed=seed, size=opts.size, gap=f"cross:{width}", gap_offset=offset, mode="pr",
                               methods=TREATMENTS, n_starts=opts.starts, progress=False,
                               simulate_options={"oversampling": opts.oversampling})
                truth = {m: rep["methods"][m]["strain_rmse"] for m in TREATMENTS}
                check = assess(rep.pattern["counts"], rep.pattern["gap_mask"], treatments=TREATMENTS,
                               hidden=opts.hidden, n_starts=opts.starts, progress=False)
                ranked = sorted(TREATMENTS, key=lambda m: truth[m])
                decisive = truth[ranked[1]] > 1.2 * truth[ranked[0]]
                row = {"seed": seed, "width": width, "offset": offset, "true_best": ranked[0],
                       "true_second": ranked[1], "decisive": bool(decisive),
                       "recommended": check["recommended"], "confidence": check["confidence"],
                       "right": check["recommended"] == ranked[0],
                       "recommended_strain_rmse": truth[check["recommended"]],
                       "best_strain_rmse": truth[ranked[0]],
                       "regret": truth[check["recommended"]] / truth[ranked[0]],
                       **{f"strain_{m}": truth[m] for m in TREATMENTS},
                       **{f"deviance_{m}": check["scores"][m]["deviance"] for m in TREATMENTS},
                       "seconds": time.perf_counter() - t1}
                rows.append(row)
                print(f"seed {seed} {width} px offset {offset}: true best {ranked[0]} "
                      f"({truth[ranked[0]]:.2e}, next {ranked[1]} {truth[ranked[1]]:.2e}), assess picks "
                      f"{check['recommended']} ({check['confidence']}) -> {'right' if row['right'] else 'wrong'}"
                      f" [{row['seconds']:.0f} s]", flush=True)
    decisive = [r for r in rows if r["decisive"]]
    summary = {"cases": len(rows), "right": sum(r["right"] for r in rows), "decisive_cases": len(decisive),
               "right_when_decisive": sum(r["right"] for r in decisive),
               "clear_cases": sum(r["confidence"] == "clear" for r in rows),
               "right_when_clear": sum(r["right"] for r in rows if r["confidence"] == "clear"),
               "median_regret": float(np.median([r["regret"] for r in rows])),
               "max_regret": float(max(r["regret"] for r in rows))}
    print()
    print(C.table(rows, [("seed", "seed"), ("width", "width"), ("offset", "offset"), ("true_best", "true best"),
                         ("best_strain_rmse", "its strain"), ("recommended", "assess"),
                         ("confidence", "confidence"), ("regret", "strain ratio"), ("decisive", ">20%")]))
    print()
    print(summary)
    name = f"selfcheck_{opts.size}_os{opts.oversampling:g}_{opts.hidden}" + ("_quick" if opts.quick else "")
    path = C.save(name, {"command": " ".join(["benchmarks/bench_selfcheck.py", *(argv or sys.argv[1:])]),
                         "machine": C.machine(), "treatments": TREATMENTS, "rows": rows, "summary": summary,
                         "seconds": time.perf_counter() - t0})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
