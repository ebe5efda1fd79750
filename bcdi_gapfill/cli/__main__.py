"""``python -m bcdi_gapfill.cli``: the ``bcdi-gapfill`` command without its console script."""
import sys

from bcdi_gapfill.cli.commands import main

sys.exit(main())
