"""Options shared by several ``bcdi-gapfill`` subcommands."""
from __future__ import annotations

import argparse

import numpy as np

from bcdi_gapfill.core import geometry

__all__ = ["add_data_and_gap_arguments", "gap_from_args"]


def gap_from_args(args: argparse.Namespace, data: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The gap mask that ``--detector``/``--roi``/``--binning``, ``--gap`` or the mask file give, in
    this order of precedence; (frames, rows, columns) bool, True in the gap."""
    if args.detector:
        gap = geometry.detector_gap_mask(args.detector, data.shape[0] * args.binning[0], roi=args.roi,
                                         binning=args.binning)
        if gap.shape != data.shape:
            raise ValueError(f"the {args.detector} gap layout with roi={args.roi} and binning={args.binning} "
                             f"gives shape {gap.shape}, but the data has shape {data.shape}")
        return gap
    if args.gap:
        kind, width = geometry.parse_gap_spec(args.gap)
        return geometry.synthetic_gap_mask(data.shape, kind, width)
    if mask is None:
        raise ValueError("no gap given: pass --mask FILE (or a data file holding a mask), --detector NAME, "
                         "or --gap cross:W")
    gap = geometry.gap_mask_from_mask(np.asarray(mask))
    if not gap.any():
        raise ValueError("the mask holds no detector gap (no line of pixels masked in every frame)")
    return gap


def add_data_and_gap_arguments(p: argparse.ArgumentParser, input_help: str) -> None:
    """The input file and where its gap comes from (read by `gap_from_args`)."""
    p.add_argument("input", help=input_help)
    p.add_argument("--key", default=None, help="dataset key/path in the input file")
    p.add_argument("--mask", default=None, help="mask file (bcdi/PyNX: nonzero = masked)")
    p.add_argument("--detector", default=None, help="detector whose chip gaps are the gap (e.g. Maxipix)")
    p.add_argument("--roi", type=int, nargs=4, default=None, metavar=("R0", "R1", "C0", "C1"),
                   help="bcdi ROI in unbinned detector pixels")
    p.add_argument("--binning", type=int, nargs=3, default=(1, 1, 1))
    p.add_argument("--gap", default=None, help="synthetic gap, e.g. cross:6 or vertical:3")
