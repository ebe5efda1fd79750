"""``bcdi-gapfill finetune``: fine-tune the model on portions of a measured array."""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bcdi_gapfill.cli.options import add_data_and_gap_arguments, gap_from_args
from bcdi_gapfill.core import io
from bcdi_gapfill.nn.finetune import FINETUNE_DEFAULTS, finetune, finetuned_weights_path, save_finetuned

__all__ = ["add_finetune_parser", "cmd_finetune"]


def add_finetune_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``finetune`` subcommand to ``bcdi-gapfill``'s subparsers (`bcdi_gapfill.cli.commands` calls this)."""
    p = sub.add_parser("finetune",
                       help="fine-tune the model on portions of a measured array, away from its gap")
    add_data_and_gap_arguments(p, "data file (.npy, .npz, .h5, .cxi)")
    p.add_argument("-o", "--output", default=None,
                   help="weights file to write (default: <input stem>_finetuned.pt next to the input)")
    p.add_argument("--weights", default=None, help="weights to start from (default: shipped model)")
    p.add_argument("--portions", type=int, default=FINETUNE_DEFAULTS["n_portions"],
                   help="training portions cut from the array")
    p.add_argument("--steps", type=int, default=FINETUNE_DEFAULTS["steps"], help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=FINETUNE_DEFAULTS["batch_size"])
    p.add_argument("--lr", type=float, default=FINETUNE_DEFAULTS["lr"])
    p.add_argument("--loss", choices=("poisson", "paper"), default=FINETUNE_DEFAULTS["loss"],
                   help="Poisson deviance of the counts (default) or the first training's loss")
    p.add_argument("--time-budget", type=float, default=FINETUNE_DEFAULTS["time_budget_s"],
                   help="seconds (0: no limit)")
    p.add_argument("--holdout", type=int, default=FINETUNE_DEFAULTS["holdout"],
                   help="held-out portions (0: do not measure)")
    p.add_argument("--threads", type=int, default=FINETUNE_DEFAULTS["num_threads"],
                   help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-worse", action="store_true",
                   help="write the tuned weights even when the held-out PCC did not rise")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_finetune)
    return p


def cmd_finetune(args: argparse.Namespace) -> int:
    """Handler of ``bcdi-gapfill finetune``; returns the exit status."""
    output = Path(args.output) if args.output else finetuned_weights_path(args.input)
    protect = [args.input] + ([args.mask] if args.mask else [])
    # Refuse an existing output before spending minutes on training.
    save_check = [output, output.with_suffix(".json")]
    if not args.overwrite:
        for target in save_check:
            if target.exists():
                raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    data, mask = io.load_data_and_mask(args.input, args.mask, data_key=args.key)
    gap = gap_from_args(args, data, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the summary below says it in words
        others = None if mask is None else (np.asarray(mask) != 0)
        result = finetune(data, gap, model=args.weights, exclude_mask=others, n_portions=args.portions,
                          steps=args.steps,
                          batch_size=args.batch_size, lr=args.lr, loss=args.loss,
                          time_budget_s=args.time_budget or None,
                          holdout=args.holdout, revert_if_worse=not args.keep_worse, seed=args.seed,
                          num_threads=args.threads, progress=True)
    print(result.summary())
    if result.reverted:
        print(f"no weights written: fine-tuning did not help; keep using "
              f"{args.weights or 'the shipped model'} (or rerun with --keep-worse)")
        return 0
    save_finetuned(result, output, overwrite=args.overwrite, protect=protect,
                   extra={"data": str(args.input), "mask": str(args.mask) if args.mask else None,
                          "gap": args.gap or args.detector or "from the mask"})
    print(f"wrote {output} (model card {output.with_suffix('.json').name}); use it with: "
          f"bcdi-gapfill inpaint {args.input} ... --weights {output}")
    return 0
