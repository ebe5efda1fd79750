"""Command-line interface: ``bcdi-gapfill SUBCOMMAND ...``, a thin layer over the library.

argparse (standard library) rather than click or typer: one dependency fewer on beamline
machines, and subcommands with plain options are all we need.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bcdi_gapfill import __version__
from bcdi_gapfill.cli.batch import add_batch_parser
from bcdi_gapfill.cli.bcdi import add_bcdi_parser
from bcdi_gapfill.cli.bcdi_preprocess import add_bcdi_preprocess_parser
from bcdi_gapfill.cli.finetune import add_finetune_parser
from bcdi_gapfill.cli.options import add_data_and_gap_arguments, gap_from_args
from bcdi_gapfill.core import io
from bcdi_gapfill.core.errors import error_text, is_user_error
from bcdi_gapfill.core.simulate import write_dataset
from bcdi_gapfill.fill import inpainting
from bcdi_gapfill.validation.core import validate, write_report
from bcdi_gapfill.validation.evaluate import run_evaluation
from bcdi_gapfill.validation.selfcheck import assess, format_assessment
from bcdi_gapfill.workflow.demo import run_demo


def _cmd_simulate(args: argparse.Namespace) -> int:
    paths = write_dataset(args.out, args.n, size=args.size, first_seed=args.first_seed,
                          overwrite=args.overwrite, workers=args.workers)
    print(f"wrote {len(paths)} patterns to {args.out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from bcdi_gapfill.nn.train import load_train_config, train
    cfg = load_train_config(args.config)
    if args.out_dir:
        cfg.out_dir = args.out_dir
    metrics = train(cfg)
    print(json.dumps(metrics, indent=2))
    return 0


def _inpaint_outputs(output: str) -> tuple[Path, Path]:
    """The two files ``inpaint`` writes: the data (with its mask) and the record (with the uncertainty)."""
    out_path = Path(output)
    return out_path, out_path.with_name(out_path.stem + "_gapfill_record.npz")


def _check_outputs_free(paths: list[Path], *, overwrite: bool, protect: list, arrays: bool = True) -> None:
    """Refuse, before anything is read or computed, outputs that the writes would refuse.

    ``arrays``: the outputs are array files (their suffix must be one `io.save_array` writes
    with a mask); False for other outputs (a JSON record), whose suffix the caller checks.
    """
    for path in paths:
        if arrays and io.array_suffix(path) == ".npy":  # also raises on an unsupported suffix
            raise ValueError(f"{path}: a .npy file holds a single array, so the mask and attributes cannot be "
                             "stored; use .npz, .h5 or .cxi")
        for protected in protect:
            if io.same_file(path, Path(protected)):
                raise ValueError(f"refusing to write {path}: it is the protected input {protected}")
        if path.is_dir():
            raise ValueError(f"cannot write {path}: it is a directory")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot write {path}: directory {path.parent} does not exist")
    existing = [str(p) for p in paths if os.path.lexists(p)]
    if existing and not overwrite:
        raise FileExistsError(f"outputs exist: {', '.join(existing)}; pass --overwrite to replace them")


def _cmd_inpaint(args: argparse.Namespace) -> int:
    import io as _io

    import numpy as np

    protect = [args.input] + ([args.mask] if args.mask else [])
    out_path, extra_path = _inpaint_outputs(args.output)
    _check_outputs_free([out_path, extra_path], overwrite=args.overwrite, protect=protect)
    data, mask = io.load_data_and_mask(args.input, args.mask, data_key=args.key)
    gap = gap_from_args(args, data, mask)
    run_info: dict = {}
    result = inpainting.inpaint(data, gap, method=args.method, model=args.weights, stride=args.stride,
                                device=args.device, batch_size=args.batch_size, flips=args.flips,
                                return_uncertainty=args.uncertainty, progress=True, run_info=run_info,
                                **({"prefill": args.prefill} if args.method == "model" else {}))
    filled, uncertainty = result if args.uncertainty else (result, None)
    new_mask = (np.zeros(data.shape, np.int8) if mask is None else (np.asarray(mask) != 0).astype(np.int8))
    new_mask[gap] = 0  # gap voxels are now data, no longer masked
    record = {"bcdi_gapfill_version": __version__, "input": str(args.input), "mask_input": str(args.mask),
              "method": args.method, "stride": args.stride, "flips": args.flips,
              "gap_voxels_filled": int(gap.sum())}
    if args.method == "model":
        if args.weights is None:
            info = inpainting.default_model_info()
            record["weights"], record["weights_sha256"] = info.get("weights"), info.get("sha256")
        else:
            record["weights"], record["weights_sha256"] = str(args.weights), io.file_sha256(args.weights)
        record.update(device=run_info.get("device"), batch_size=run_info.get("batch_size"),
                      windows=run_info.get("n_windows"), prefill=run_info.get("prefill"))
    io.save_array(out_path, filled, mask=new_mask, attrs=record, overwrite=args.overwrite, protect=protect)
    extras = {"filled_voxels": gap}
    if uncertainty is not None:
        extras["uncertainty_log1p"] = uncertainty
    buffer = _io.BytesIO()
    np.savez_compressed(buffer, **extras, metadata=json.dumps(record))
    io.atomic_write_bytes(extra_path, buffer.getvalue(), overwrite=args.overwrite, protect=protect)
    batch = f", batch size {record['batch_size']}" if args.method == "model" else ""
    print(f"filled {int(gap.sum())} gap voxels{batch} -> {out_path} (record: {extra_path.name})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    run_evaluation(args.out, n_portions=args.portions, n_arrays=args.arrays, weights=args.weights,
                   overwrite=args.overwrite, paper_weights=args.paper_weights,
                   array_widths=tuple(int(w) for w in args.widths.split(",")), stride=args.stride,
                   num_threads=args.threads, n_scans=args.scans, n_peak_arrays=args.peak_arrays,
                   n_peak_scans=args.peak_scans)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    import numpy as np

    obj = None
    if args.object:
        obj = io.load_array(args.object, key="obj")
        if not np.iscomplexobj(obj) or obj.ndim != 3:
            raise ValueError(f"{args.object}: 'obj' must be a complex 3D array, got {obj.dtype} {obj.shape}")
    widths = [int(w) for w in args.sweep.split(",")] if args.sweep else None
    report = validate(obj, seed=args.simulate, size=args.size, gap=args.gap, gap_offset=args.gap_offset,
                      mode=args.mode, counts=args.counts, widths=widths, n_starts=args.starts,
                      methods=args.methods.split(",") if args.methods else None, selfcheck=args.selfcheck)
    paths = write_report(report, args.out, figures=getattr(report, "figures", None), overwrite=args.overwrite)
    print(f"report: {paths['html']}  ({paths['json']})")
    return 0


def _cmd_assess(args: argparse.Namespace) -> int:
    import numpy as np

    protect = [args.input] + ([args.mask] if args.mask else [])
    if args.output:
        out = Path(args.output)
        if out.suffix != ".json":
            raise ValueError(f"{out}: the assessment is written as JSON; give a .json output")
        _check_outputs_free([out], overwrite=args.overwrite, protect=protect, arrays=False)  # before the phasing
    data, mask = io.load_data_and_mask(args.input, args.mask, data_key=args.key)
    gap = gap_from_args(args, data, mask)
    bad = None if mask is None else (np.asarray(mask) != 0) & ~gap   # hot pixels, aliens
    result = assess(data, gap, bad_mask=bad, treatments=args.treatments.split(","), hidden=args.hidden,
                    n_bands=args.bands,
                    n_starts=args.starts, model=args.weights, device=args.device, seed=args.seed)
    print(format_assessment(result))
    if args.output:
        result["settings"].update(input=str(args.input), mask_input=str(args.mask),
                                  weights=str(args.weights) if args.weights else None)
        io.atomic_write_text(out, json.dumps(result, indent=1), overwrite=args.overwrite, protect=protect)
        print(f"assessment: {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    run_demo(args.out, size=args.size, seed=args.seed, overwrite=True)
    return 0




def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcdi-gapfill", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bcdi-gapfill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="write a dataset of simulated BCDI patterns")
    p.add_argument("--n", type=int, required=True, help="number of patterns")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("train", help="train the patching U-Net from a YAML config (resumes)")
    p.add_argument("--config", required=True)
    p.add_argument("--out-dir", default=None, help="override out_dir of the config")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("inpaint", help="fill the detector gaps of a 3D pattern file")
    add_data_and_gap_arguments(p, "data file (.npy, .npz, .h5, .cxi)")
    p.add_argument("-o", "--output", required=True, help="output file; format from its suffix")
    p.add_argument("--method", default="model", help="model, biharmonic, linear, cubic, nearest or zero")
    p.add_argument("--weights", default=None, help="weights file (default: shipped model)")
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=None,
                   help="windows per forward pass (default 16 on CPU, 128 on GPU; halved on out-of-memory)")
    p.add_argument("--flips", action="store_true", help="test-time flips of the detector axes")
    p.add_argument("--prefill", choices=("global", "window"), default="global",
                   help="what the model corrects: the whole array's log-biharmonic fill (default) or "
                        "each window's own")
    p.add_argument("--uncertainty", action="store_true", help="also write the per-voxel uncertainty")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_inpaint)

    p = sub.add_parser("evaluate", help="held-out evaluation: Table 1, baselines, figures")
    p.add_argument("--out", required=True)
    p.add_argument("--portions", type=int, default=1000)
    p.add_argument("--arrays", type=int, default=4)
    p.add_argument("--weights", default=None)
    p.add_argument("--paper-weights", default=None, help="weights of the paper-architecture reference model")
    p.add_argument("--widths", default="3,6,9,12", help="cross-gap widths of the whole-array table")
    p.add_argument("--stride", type=int, default=None, help="model window stride on whole arrays")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared CPU)")
    p.add_argument("--scans", type=int, default=3, help="cdiutils-simulated Maxipix scans (needs cdiutils)")
    p.add_argument("--peak-arrays", type=int, default=5,
                   help="crystals of our simulator in the peak-position protocol (cross 0-4 and 8-20 px from "
                        "the peak: error reduction against log-biharmonic, photon ratio)")
    p.add_argument("--peak-scans", type=int, default=5,
                   help="cdiutils-simulated crystals in the peak-position protocol (needs cdiutils)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("demo", help="end-to-end demo on a simulated crystal")
    p.add_argument("--out", default="demo_output")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--seed", type=int, default=3)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("validate", help="phase/strain validation of gap treatments, as an HTML report")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--object", help="npz holding 'obj', a complex 3D ground-truth object")
    source.add_argument("--simulate", type=int, metavar="SEED", help="simulate a zero-phase particle")
    p.add_argument("--size", type=int, default=64, help="array size when simulating")
    p.add_argument("--gap", default="cross:9", help="cross:W, vertical:W, horizontal:W or a detector name")
    p.add_argument("--gap-offset", type=int, default=0, help="shift of the gap from the peak centre, pixels")
    p.add_argument("--mode", choices=("pr", "oracle", "both"), default="pr",
                   help="pr (default): phase retrieval of each treatment, free pixels and zero fill among "
                        "them; oracle: the true reciprocal phases, the fill alone (seconds); both. "
                        "The run prints its expected duration first: 1-2 min at the default --size 64, "
                        "about 9 min at --size 128 on a 2-core CPU (7 methods x 4 starts x 800 "
                        "iterations); --starts 2 halves it")
    p.add_argument("--counts", type=float, default=1e6, help="peak photon count of the Poisson noise")
    p.add_argument("--sweep", default=None, help="gap widths to sweep, e.g. 3,6,9,12")
    p.add_argument("--methods", default=None,
                   help="comma-separated (also hybrid, model+gp, biharmonic+gp, gp), default: inpaint, "
                        "inpaint+release, biharmonic, free_pixels, zero_fill, linear_interp, no_gap")
    p.add_argument("--starts", type=int, default=4, help="random starts of phase retrieval")
    p.add_argument("--selfcheck", action="store_true",
                   help="also run `assess` (no truth used) on the same pattern and show its scores beside the "
                        "truth's in the report (about twice the phasing time)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("assess", help="self-check of the gap treatments on this scan: withhold measured bands "
                                      "shaped like the gap, phase with each treatment, score the withheld counts "
                                      "(a diagnostic, not yet a reliable pick: docs/benchmarks.md)")
    add_data_and_gap_arguments(p, "data file (.npy, .npz, .h5, .cxi), Bragg peak near the centre")
    p.add_argument("--treatments", default="free_pixels,zero_fill,inpaint,inpaint+release",
                   help="comma-separated, of free_pixels, zero_fill, inpaint, inpaint+release, biharmonic")
    p.add_argument("--bands", type=int, default=2, help="hidden bands of measured voxels (one phasing each)")
    p.add_argument("--hidden", choices=("free", "treated"), default="free",
                   help="hidden bands left free in every run, their counts withheld (default), or treated like "
                        "the gap")
    p.add_argument("--starts", type=int, default=2, help="random starts per band and treatment")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None, help="weights of the inpaint treatments (default: shipped model)")
    p.add_argument("--device", default=None)
    p.add_argument("-o", "--output", default=None, help="write the scores as JSON")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_assess)

    add_bcdi_parser(sub)
    add_bcdi_preprocess_parser(sub)
    add_batch_parser(sub)
    add_finetune_parser(sub)
    return parser


# Errors a user can act on: bad input, files (missing, existing, a directory, no permission,
# a full disk), a missing optional dependency, memory. Anything else is a bug and keeps its
# traceback.
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(f"bcdi-gapfill {args.command}: error: {error_text(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
