"""Command line of the ready workflow scripts (``workflows/*.py``): one YAML file, one run."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from bcdi_gapfill.core.errors import error_text, is_user_error
from bcdi_gapfill.workflow.pipeline import load_workflow_config, run_workflow

__all__ = ["main"]


def main(argv: Sequence[str] | None = None, *, prog: str | None = None,
         default_config: str | os.PathLike | None = None, description: str | None = None) -> int:
    """Command line of the workflow scripts; returns the exit status (2 on a user error)."""
    parser = argparse.ArgumentParser(prog=prog, description=description or __doc__.splitlines()[0])
    parser.add_argument("--config", default=None if default_config is None else str(default_config),
                        required=default_config is None, help="workflow YAML configuration"
                        + (f" (default: {default_config})" if default_config is not None else ""))
    parser.add_argument("--out", default=None, help="output directory (default: out_dir of the configuration)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set phasing.n_starts=1 --set simulate.size=[32,48,48]")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run")
    parser.add_argument("--quiet", action="store_true", help="print only the final line")
    args = parser.parse_args(argv)
    name = parser.prog
    try:
        cfg = load_workflow_config(args.config, args.overrides)
        result = run_workflow(cfg, args.out, overwrite=True if args.overwrite else None, progress=not args.quiet)
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(f"{name}: error: {error_text(exc)}", file=sys.stderr)
        return 2
    methods = result["report"]["methods"]
    llks = ", ".join(f"{n} {m['llk_measured']:.4g}" for n, m in methods.items() if m["llk_measured"] is not None)
    print(f"report: {result['paths']['report_html']} (LLK on the measured voxels: {llks})")
    return 0
