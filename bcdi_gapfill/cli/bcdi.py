"""``bcdi-gapfill bcdi``: fill the gap of a bcdi/PyNX file pair (the file stage)."""
from __future__ import annotations

import argparse
import json
from typing import Any

from bcdi_gapfill.integrations.bcdi import fill_bcdi_files

__all__ = ["add_bcdi_parser", "cmd_bcdi"]


def add_bcdi_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``bcdi`` subcommand to ``bcdi-gapfill``'s subparsers (cli.py calls this)."""
    p = sub.add_parser("bcdi", help="fill the chip gaps of a bcdi S*_pynx*.npz / S*_maskpynx*.npz pair")
    p.add_argument("data", help="bcdi data file, e.g. S1_pynx_64_64_64_1_1_1.npz")
    p.add_argument("mask", nargs="?", default=None, help="bcdi mask file, e.g. S1_maskpynx_64_64_64_1_1_1.npz")
    p.add_argument("--detector", default=None, help="take the gap from this detector's layout (e.g. Maxipix); "
                   "default: from the mask")
    p.add_argument("--roi", type=int, nargs=4, default=None, metavar=("R0", "R1", "C0", "C1"),
                   help="bcdi ROI of the data in unbinned detector pixels (with --detector)")
    p.add_argument("--binning", type=int, nargs=3, default=None, metavar=("BF", "BR", "BC"),
                   help="binning of the data (frames rows columns) (with --detector)")
    p.add_argument("--method", default="model", help="model, biharmonic, linear, cubic, nearest or zero")
    p.add_argument("--weights", default=None, help="weights file (default: shipped model)")
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--flips", action="store_true", help="test-time flips of the detector axes")
    p.add_argument("--out-dir", default=None, help="output directory (default: next to the data file)")
    p.add_argument("--suffix", default="_gapfilled", help="appended to the output file names")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_bcdi)
    return p


def cmd_bcdi(args: argparse.Namespace) -> int:
    """Handler of ``bcdi-gapfill bcdi``; returns the exit status."""
    kwargs: dict[str, Any] = {}
    if getattr(args, "device", None) is not None:
        kwargs["device"] = args.device
    if getattr(args, "flips", False):
        kwargs["flips"] = True
    if args.method == "model":
        kwargs["progress"] = True
    paths = fill_bcdi_files(args.data, args.mask, out_dir=args.out_dir, suffix=getattr(args, "suffix", "_gapfilled"),
                            overwrite=args.overwrite, detector=args.detector, roi=args.roi, binning=args.binning,
                            method=args.method, model=args.weights, stride=args.stride, **kwargs)
    record = json.loads(paths["record"].read_text())
    print(f"filled {record['gap_voxels_filled']} gap voxels ({record['method']}, gap from "
          f"{record['gap_source']}) -> {paths['data']}, {paths['mask'].name}, record {paths['record'].name}")
    return 0
