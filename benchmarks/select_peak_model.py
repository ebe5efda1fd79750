"""Whole-array model selection for issue 21: score candidate weights (e.g. every epoch of a
training run) on *validation* crystals of both simulators, near and off the Bragg peak.

Validation crystals: our simulator's seeds 330000... and cdiutils' seeds 30..., which neither
the training (seeds < 2000) nor the held-out peak-position protocol (seeds 320000..., cdiutils
10...; `bench_peak_position.py`) uses. Per candidate and per (simulator, width, near/off peak):
error = 1 - log1p PCC over the gap against the noise-free pattern, the error reduction against
the log-biharmonic fill, how many cases are above it, and the photon ratio (photons the fill
puts in the gap over those the gap hid).

    .venv/bin/python benchmarks/select_peak_model.py CAND.pt [CAND.pt ...] [--shipped]
        [--arrays 2] [--scans 2] [--widths 3 9] [--size 128] [--threads 2] [--name NAME]

Writes ``results/<NAME>.json`` (default ``select_peak_model``) with every row, the weights'
SHA-256, the command and the machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

VALIDATION_FIRST_SEED = 330_000
CDIUTILS_VALIDATION_FIRST_SEED = 30


def summarise(table: dict, names: list[str]) -> list[dict]:
    """Per (simulator, width, position) and candidate: mean error reduction, cases above the
    biharmonic fill, median photon ratio."""
    from bcdi_gapfill.validation.evaluate import NEAR_PEAK_OFFSETS

    groups: dict = {}
    for row in table["rows"]:
        where = "near" if row["offset"] in NEAR_PEAK_OFFSETS else "off"
        groups.setdefault((row["simulator"], row["width"], where), []).append(row)
    out = []
    for (sim, width, where), rows in sorted(groups.items()):
        cell = {"simulator": sim, "width": width, "position": where, "n": len(rows),
                "biharmonic_photon_ratio": float(np.median([r["biharmonic_photon_ratio"] for r in rows]))}
        for name in names:
            cell[f"{name}_error_reduction"] = float(np.mean([r[f"{name}_error_reduction"] for r in rows]))
            cell[f"{name}_above"] = int(sum(r[f"{name}_error"] < r["biharmonic_error"] for r in rows))
            cell[f"{name}_photon_ratio"] = float(np.median([r[f"{name}_photon_ratio"] for r in rows]))
            cell[f"{name}_seconds"] = float(np.median([r[f"{name}_seconds"] for r in rows]))
        out.append(cell)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", nargs="*", help="candidate weights or training checkpoints")
    ap.add_argument("--shipped", action="store_true", help="also score the shipped default weights")
    ap.add_argument("--arrays", type=int, default=2)
    ap.add_argument("--scans", type=int, default=2)
    ap.add_argument("--widths", type=int, nargs="+", default=[3, 9])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--name", default="select_peak_model")
    opts = ap.parse_args(argv)
    import torch

    from bcdi_gapfill.validation.evaluate import NEAR_PEAK_OFFSETS, OFF_PEAK_OFFSETS, peak_cross_table
    from bcdi_gapfill.fill.inpainting import DEFAULT_WEIGHTS
    from bcdi_gapfill.core.io import file_sha256

    if opts.threads:
        torch.set_num_threads(opts.threads)
    paths = ([str(DEFAULT_WEIGHTS)] if opts.shipped else []) + list(opts.weights)
    if not paths:
        ap.error("give candidate weights or --shipped")
    models, described = {}, {}
    for i, path in enumerate(paths):
        name = "shipped" if (opts.shipped and i == 0) else f"c{i}"
        models[name], description = C.load_model(path)
        described[name] = {"weights": path, "description": description, "sha256": file_sha256(path)}
    t0 = time.perf_counter()
    table = peak_cross_table(models, n_arrays=opts.arrays, n_scans=opts.scans, size=opts.size,
                             widths=tuple(opts.widths), offsets=(*NEAR_PEAK_OFFSETS, *OFF_PEAK_OFFSETS),
                             first_seed=VALIDATION_FIRST_SEED, first_scan_seed=CDIUTILS_VALIDATION_FIRST_SEED)
    cells = summarise(table, list(models))
    for name, info in described.items():
        print(f"{name}: {info['description']}")
    header = "| simulator | width | position | n | biharmonic photons | " + " | ".join(
        f"{n}: reduction / above / photons" for n in models) + " |"
    print("\n" + header + "\n|" + "---|" * (5 + len(models)))
    for c in cells:
        print(f"| {c['simulator']} | {c['width']} | {c['position']} | {c['n']} | {c['biharmonic_photon_ratio']:.3f} | "
              + " | ".join(f"{c[f'{n}_error_reduction']:+.3f} / {c[f'{n}_above']}/{c['n']} / "
                           f"{c[f'{n}_photon_ratio']:.3f}" for n in models) + " |")
    payload = {"command": " ".join(["benchmarks/select_peak_model.py", *(argv or sys.argv[1:])]),
               "machine": C.machine(), "models": described, "torch_threads": torch.get_num_threads(),
               "validation_first_seed": VALIDATION_FIRST_SEED,
               "cdiutils_validation_first_seed": CDIUTILS_VALIDATION_FIRST_SEED,
               "summary": cells, "table": table, "seconds": time.perf_counter() - t0}
    path = C.save(opts.name, payload)
    print(f"wrote {path} ({payload['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
