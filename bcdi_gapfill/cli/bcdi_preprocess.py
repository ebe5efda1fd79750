"""``bcdi-gapfill bcdi-preprocess`` and the workflow script: bcdi's preprocessing with the
gap filled, from a YAML file."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bcdi_gapfill.workflow.bcdi_preprocess import (BCDI_INSTALL_HINT, UnsupportedBcdiError, load_config,
                                                   run_bcdi_preprocessing, write_simulated_id01bliss_scan)

__all__ = ["add_bcdi_preprocess_parser", "cmd_bcdi_preprocess", "main"]


def _print_results(results: list[dict[str, Any]]) -> None:
    for result in results:
        print(f"S{result['scan']}: bcdi wrote {result['bcdi_data'].name}, {result['bcdi_mask'].name}; filled "
              f"{result['gap_voxels_filled']} gap voxels -> {result['data'].name}, {result['mask'].name}, "
              f"record {result['record'].name}")
        if result.get("report_html") is not None:
            print(f"S{result['scan']}: report {result['report_html']}")


def add_bcdi_preprocess_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``bcdi-preprocess`` subcommand to ``bcdi-gapfill``'s subparsers (cli.py calls this)."""
    p = sub.add_parser("bcdi-preprocess", help="run bcdi's preprocessing (bcdi YAML config) with the gap filled "
                       "into a second PyNX pair")
    p.add_argument("config", help="bcdi preprocessing YAML with an optional gapfill: section")
    p.add_argument("--overwrite", action="store_true", help="replace our outputs of an earlier run "
                   "(gapfill.overwrite)")
    p.set_defaults(func=cmd_bcdi_preprocess)
    return p


def cmd_bcdi_preprocess(args: argparse.Namespace) -> int:
    """Handler of ``bcdi-gapfill bcdi-preprocess``; returns the exit status."""
    overrides = {"overwrite": True} if args.overwrite else None
    _print_results(run_bcdi_preprocessing(args.config, gapfill=overrides, progress=True))
    return 0


def main(argv: list[str] | None = None, *, prog: str | None = None,
         default_config: str | os.PathLike | None = None) -> int:
    """``workflows/bcdi_preprocess_gapfill.py``: bcdi's own command line, plus gap filling.

    Takes bcdi's ``bcdi_preprocess_BCDI.py`` options (``--config_file`` and its overrides such
    as ``--scans 11,12``, from ``bcdi.utils.parser.add_cli_parameters``) and ``--overwrite``;
    ``--simulate`` first writes a simulated Maxipix scan where the configuration's
    ``root_folder``/``template_imagefile`` point, for a run without beamline data. Returns
    the exit status: 0, or 2 with a one-line message for a user error.
    """
    import sys

    try:
        from bcdi.utils.parser import add_cli_parameters
        from bcdi.utils.snippets_logging import configure_logging
    except ImportError as exc:
        print(f"{prog or 'bcdi_preprocess_gapfill'}: error: this workflow needs bcdi 0.3.1, which cannot be "
              f"imported ({exc}); install it with: {BCDI_INSTALL_HINT}", file=sys.stderr)
        return 2
    parser = add_cli_parameters(argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0]))
    parser.add_argument("--overwrite", action="store_true", help="replace our outputs of an earlier run")
    parser.add_argument("--simulate", action="store_true", help="first write a simulated Maxipix scan (ID01 "
                        "BLISS file) at root_folder/template_imagefile of the configuration, unless it exists")
    cli_args = vars(parser.parse_args(argv))
    overwrite, simulate = cli_args.pop("overwrite"), cli_args.pop("simulate")
    config_file = cli_args.pop("config_file") or default_config
    if config_file is None:
        parser.error("pass --config_file CONFIG.yml")
    configure_logging()
    try:
        if simulate:
            config = load_config(config_file)
            root = Path(str(cli_args.get("root_folder") or config["root_folder"]))
            raw = root / str(config["template_imagefile"])
            if not raw.exists():
                root.mkdir(parents=True, exist_ok=True)
                scan, sample = config["scans"], config.get("sample_name") or ""
                scan = scan[0] if isinstance(scan, list) else scan
                sample = sample[0] if isinstance(sample, list) else sample
                write_simulated_id01bliss_scan(raw, sample_name=str(sample), scan=int(scan))
                print(f"wrote a simulated scan to {raw}")
        results = run_bcdi_preprocessing(config_file, command_line_args=cli_args,
                                         gapfill={"overwrite": True} if overwrite else None, progress=True)
    except (ValueError, TypeError, OSError, ImportError, KeyError, UnsupportedBcdiError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    _print_results(results)
    return 0
