"""Real-space validation over several seeds (issue 4): does the model's fill beat the baselines?

For each seed, :func:`bcdi_gapfill.validation.core.validate` runs on a zero-phase simulated crystal
(``--size``^3, peak 1e6 photons, Poisson noise; ``--counts none``: noiseless, as the
paper's section 2.6.1) with cross gaps of every width of ``--widths``,
their centre ``--gap-offset`` pixels from the Bragg peak on both detector axes, in both modes
(or the one ``--mode`` names):

* ``oracle``: inverse FFT of each method's ``sqrt(I)`` with the true reciprocal phase
  (``free_pixels`` has no oracle counterpart; ``zero_fill`` is "the gap" there);
* ``pr``: the default phase retrieval (``phasing.DEFAULT_ALGORITHM``, 4 random starts, best
  LLK), the same starts for every method.

The model runs at ``--stride`` with one torch thread (``inpaint_options``); each seed runs in
a fresh process, with ``torch.set_num_threads(--threads)`` for phase retrieval too.

``--oversampling`` is passed to ``simulate_pattern`` (validate's default 3); the crystal is
``--size / --oversampling`` voxels wide, so the array grows with it to keep the crystal.

Tables (per mode and width): strain RMSE and phase standard deviation inside the true support
per seed and their mean, per method; how many seeds ``inpaint`` (and ``inpaint+release``,
the fill released during phase retrieval) is below ``free_pixels`` and ``zero_fill`` on
each metric; in oracle mode the ratio of the zero-filled gap's phase standard
deviation to the model's (the paper's claim: at least 5x).

    .venv/bin/python benchmarks/bench_validation_seeds.py [--seeds 0 1 2 3 4] [--widths 3 6 9 12]
        [--size 48] [--gap-offset 4] [--stride 16] [--threads 1] [--mode both|oracle|pr]
        [--counts 1e6|none] [--oversampling 3]
        [--name validation_seeds_X] [--reports DIR] [--quick]

Writes ``benchmarks/results/validation_seeds.json`` (``validation_seeds_quick.json`` with
``--quick``: seed 0, widths 6 and 9; ``--name`` for another name), updated after every seed
so that an interrupted run keeps the seeds it finished. ``--reports DIR`` also writes each seed's ``report.json`` and
``report.html`` under ``DIR/seed<N>/``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

METHODS = ("inpaint", "inpaint+release", "biharmonic", "free_pixels", "zero_fill", "linear_interp", "no_gap")
# Judged against the baselines: the model's fill used as data, and released during phasing.
JUDGED_METHODS = ("inpaint", "inpaint+release")
# The baselines the issue-4 targets name, per mode (free pixels only exist in phase retrieval).
BASELINES = {"oracle": ("zero_fill", "linear_interp"), "pr": ("free_pixels", "zero_fill")}
METRICS = (("strain_rmse", "strain RMSE (1e-4)", 1e4), ("phase_std", "phase std (rad)", 1.0))


def _run(args: dict) -> dict:
    from bcdi_gapfill.validation.core import validate, write_report

    widths = args["widths"]
    t0 = time.perf_counter()
    load0 = round(os.getloadavg()[0], 2)
    rep = validate(seed=args["seed"], size=args["size"], gap=f"cross:{widths[0]}",
                   gap_offset=args["gap_offset"], mode=args.get("mode", "both"), widths=widths,
                   counts=args.get("counts", 1e6),
                   methods=args["methods"], progress=False,
                   simulate_options={"oversampling": args.get("oversampling", 3.0)},
                   inpaint_options={"num_threads": args["threads"], "stride": args["stride"]})
    seconds = time.perf_counter() - t0
    if args.get("reports"):
        write_report(rep, Path(args["reports"]) / f"seed{args['seed']}")
    settings = rep["settings"]
    keep = ("strain_rmse", "phase_std", "mean_strain", "spurious_modulus", "overlap", "pcc_gap",
            "gap_intensity_ratio", "llk_measured")
    return {"seed": args["seed"], "seconds": round(seconds, 1), "load1_before": load0,
            "load1_after": round(os.getloadavg()[0], 2),
            "widths": rep["sweep"]["widths"],
            "by_mode": {mode: {name: {k: vals.get(k) for k in keep if k in vals}
                               for name, vals in per_method.items()}
                        for mode, per_method in rep["sweep"]["by_mode"].items()},
            "skipped": settings.get("skipped_methods"),
            "settings": {k: settings.get(k) for k in ("shape", "counts", "gap_offset_px", "algorithm", "n_starts",
                                                      "seed_pr", "support_voxels", "simulation", "model",
                                                      "versions")}}


def _fmt(v, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if v is None else f"{v * scale:.{digits}f}"


def summarise(runs: list[dict]) -> dict:
    """Per mode and width: values per seed, means, inpaint's wins and the oracle phase ratio."""
    import numpy as np

    runs = [r for r in runs if "error" not in r]
    if not runs:
        return {}
    widths = runs[0]["widths"]
    out: dict = {}
    for mode in ("oracle", "pr"):
        if not all(mode in r["by_mode"] for r in runs):
            continue
        out[mode] = {}
        names = [m for m in METHODS if all(m in r["by_mode"].get(mode, {}) for r in runs)]
        for i, w in enumerate(widths):
            entry: dict = {"values": {}, "mean": {}, "wins": {}}
            for name in names:
                for key, _, _ in METRICS:
                    vals = [r["by_mode"][mode][name][key][i] for r in runs]
                    entry["values"].setdefault(name, {})[key] = vals
                    finite = [v for v in vals if v is not None]
                    entry["mean"].setdefault(name, {})[key] = float(np.mean(finite)) if finite else None
            for model in (m for m in JUDGED_METHODS if m in names):
                for base in BASELINES[mode]:
                    if base not in names:
                        continue
                    for key, _, _ in METRICS:
                        a, b = entry["values"][model][key], entry["values"][base][key]
                        wins = entry["wins"] if model == "inpaint" else entry.setdefault("wins_" + model, {})
                        wins.setdefault(base, {})[key] = sum(
                            1 for x, y in zip(a, b) if x is not None and y is not None and x < y)
            if "inpaint" in names:
                if mode == "oracle" and "zero_fill" in names:
                    ratios = [z / m if m else None for z, m in zip(entry["values"]["zero_fill"]["phase_std"],
                                                                   entry["values"]["inpaint"]["phase_std"])]
                    entry["phase_ratio_zero_fill_over_inpaint"] = ratios
                    finite = [v for v in ratios if v is not None]
                    entry["phase_ratio_mean"] = float(np.mean(finite)) if finite else None
                    entry["phase_ratio_at_least_5"] = sum(1 for v in finite if v >= 5)
            out[mode][str(w)] = entry
    out["seeds"] = [r["seed"] for r in runs]
    return out


def tables(summary: dict) -> str:
    if not summary:
        return "(no finished seed)"
    seeds = summary["seeds"]
    lines = []
    for mode in ("oracle", "pr"):
        for w, entry in summary.get(mode, {}).items():
            lines += [f"\n{mode} mode, {w}-pixel cross (seeds {', '.join(map(str, seeds))}):", ""]
            head = "| method |" + "|".join(f" {label} | mean " for _, label, _ in METRICS) + "|"
            lines += [head, "|---" * (1 + 2 * len(METRICS)) + "|"]
            for name, vals in entry["values"].items():
                cells = []
                for key, _, scale in METRICS:
                    cells.append(" / ".join(_fmt(v, scale) for v in vals[key]))
                    cells.append(_fmt(entry["mean"][name][key], scale))
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
            for model in JUDGED_METHODS:
                wins = entry["wins"] if model == "inpaint" else entry.get("wins_" + model, {})
                if wins:
                    lines.append("; ".join(f"{model} < {base}: strain {d['strain_rmse']}/{len(seeds)}, phase "
                                           f"{d['phase_std']}/{len(seeds)}" for base, d in wins.items()))
            if "phase_ratio_zero_fill_over_inpaint" in entry:
                lines.append("phase std zero fill / inpaint: "
                             + " / ".join(_fmt(v) for v in entry["phase_ratio_zero_fill_over_inpaint"])
                             + f" (mean {_fmt(entry['phase_ratio_mean'])}, >= 5 on "
                             f"{entry['phase_ratio_at_least_5']}/{len(seeds)} seeds)")
    return "\n".join(lines)


def main(argv=None) -> int:
    if C.child_main(_run):
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--widths", type=int, nargs="+", default=[3, 6, 9, 12])
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--gap-offset", type=int, default=4)
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--mode", default="both", choices=("both", "oracle", "pr"))
    ap.add_argument("--counts", type=lambda v: None if v.lower() == "none" else float(v), default=1e6,
                    help="peak photons of the Poisson noise; 'none': noiseless (the paper's section 2.6.1)")
    ap.add_argument("--oversampling", type=float, default=3.0,
                    help="linear oversampling asked of simulate_pattern (validate's default 3; the crystal "
                         "is --size / this wide, so keep --size / --oversampling near 16 to compare)")
    ap.add_argument("--name", default=None, help="results file name (default validation_seeds[_quick])")
    ap.add_argument("--reports", default=None, help="also write each seed's report under DIR/seed<N>/")
    ap.add_argument("--quick", action="store_true", help="seed 0, widths 6 and 9")
    opts = ap.parse_args(argv)
    if opts.quick:
        opts.seeds, opts.widths = [0], [6, 9]
    name = opts.name or ("validation_seeds_quick" if opts.quick else "validation_seeds")
    if not name.startswith("validation_seeds"):
        ap.error(f"--name must start with 'validation_seeds', got {name!r}")
    payload = {"machine": C.machine(),
               "config": {"seeds": opts.seeds, "widths": opts.widths, "size": opts.size,
                          "gap": "cross", "gap_offset": opts.gap_offset, "stride": opts.stride,
                          "threads": opts.threads, "methods": opts.methods, "mode": opts.mode,
                          "counts": opts.counts, "oversampling": opts.oversampling},
               "runs": []}
    for seed in opts.seeds:
        args = {"seed": seed, "widths": opts.widths, "size": opts.size, "gap_offset": opts.gap_offset,
                "stride": opts.stride, "threads": opts.threads, "methods": opts.methods, "mode": opts.mode,
                "counts": opts.counts, "oversampling": opts.oversampling, "reports": opts.reports}
        result = C.run_child(__file__, args, timeout=3600)
        print(f"seed {seed}: " + (f"{result['seconds']} s" if "error" not in result else result["error"]),
              flush=True)
        payload["runs"].append(result)
        payload["summary"] = summarise(payload["runs"])
        payload["machine"]["loadavg_end"] = os.getloadavg()
        C.save(name, payload)
    print(tables(payload["summary"]))
    print(f"\nwritten: {C.RESULTS / (name + '.json')}")
    return 0 if all("error" not in r for r in payload["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
