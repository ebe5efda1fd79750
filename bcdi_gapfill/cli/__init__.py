"""Layer 8, ``cli``: the ``bcdi-gapfill`` command (argparse lives here only; no module of the
package imports this one)."""
from bcdi_gapfill.cli.commands import main

__all__ = ["main"]
