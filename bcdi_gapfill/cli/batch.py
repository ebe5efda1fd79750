"""``bcdi-gapfill batch``: a series of scans on Dask (local or SLURM)."""
from __future__ import annotations

import argparse
from typing import Any

from bcdi_gapfill.workflow.batch import (STATUSES, format_summary_table, load_series_config, run_series,
                                         slurm_job_script)

__all__ = ["add_batch_parser", "cmd_batch"]


def add_batch_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``batch`` subcommand to ``bcdi-gapfill``'s subparsers (cli.py calls this)."""
    p = sub.add_parser(
        "batch", help="gap-fill a series of bcdi scans on Dask (local or SLURM), resuming where it stopped",
        description="Gap-fill every S<scan>_pynx*.npz / S<scan>_maskpynx*.npz pair of a series on Dask, one task per "
                    "scan, skipping scans already done with the same inputs and settings. Writes summary.json and "
                    "summary.md in out_dir. Exit status: 0 when every scan is ok or skipped, 1 when any scan failed, "
                    "2 on a bad configuration.")
    p.add_argument("--config", required=True, help="YAML series configuration (see workflows/series.yml)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace outputs whose record differs from this run (default: the config's overwrite)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-job-script", action="store_true",
                   help="print the sbatch script of one SLURM job (cluster kind slurm) and exit without running")
    p.set_defaults(func=cmd_batch)
    return p


def cmd_batch(args: argparse.Namespace) -> int:
    """Handler of ``bcdi-gapfill batch``; 0 when every scan is ok or skipped, 1 when any failed."""
    if args.print_job_script:
        print(slurm_job_script(load_series_config(args.config)["cluster"]), end="")
        return 0
    summary = run_series(args.config, progress=not args.no_progress, overwrite=args.overwrite)
    print(format_summary_table(summary["scans"]), end="")
    counts = summary["counts"]
    print(", ".join(f"{counts[s]} {s}" for s in STATUSES) + f" in {summary['wall_seconds']:.1f} s; summary: "
          f"{summary['summary_files']['md']}")
    return 1 if counts["failed"] else 0
