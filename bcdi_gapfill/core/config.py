"""Configuration files: the one YAML reader, and the one schema of the fill settings.

Every YAML file of the package (training recipes, workflows, scan series, bcdi
preprocessing) is read by `read_yaml_mapping`, so that a missing file, a YAML syntax error or
a file that is not a mapping gets the same message everywhere. The ``gapfill:`` sections of
the workflow, series and bcdi-preprocessing files and the Ewoks tasks share `FILL_SETTINGS`;
each adds only what its own stage needs (an output suffix, where the gap comes from).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from bcdi_gapfill.core.io import as_path

__all__ = ["read_yaml_mapping", "FILL_SETTINGS", "INPAINT_SETTINGS", "LAYOUT_SETTINGS"]

#: The settings of a fill that every ``gapfill:`` section shares, with their defaults:
#: `bcdi_gapfill.inpaint`'s options and the detector layout that gives the gap.
FILL_SETTINGS: dict[str, Any] = {
    "method": "model", "weights": None, "stride": None, "batch_size": None, "device": None, "flips": False,
    "detector": None, "roi": None, "binning": None,
}
#: The detector-layout keys of `FILL_SETTINGS` (the gap from a detector's chip layout).
LAYOUT_SETTINGS = ("detector", "roi", "binning")
#: The keys of `FILL_SETTINGS` that `bcdi_gapfill.inpaint` itself takes.
INPAINT_SETTINGS = tuple(key for key in FILL_SETTINGS if key not in LAYOUT_SETTINGS)


def read_yaml_mapping(path: str | os.PathLike, what: str = "configuration") -> dict[str, Any]:
    """The settings of a YAML file as a dict (an empty file gives ``{}``).

    Parameters
    ----------
    path : str or path-like
        The YAML file; it is only read.
    what : str
        What the file is, for the messages ("training config", "series config", ...).

    Raises FileNotFoundError when there is no such file, IsADirectoryError for a directory,
    and ValueError when it is not YAML
    or not a mapping of settings.
    """
    import yaml

    path = Path(as_path(path, what))
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a {what} file (Is a directory)")
    if not path.is_file():
        raise FileNotFoundError(f"no such {what} file: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path} as YAML: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: a {what} must hold a YAML mapping of settings, got {type(raw).__name__}")
    return dict(raw)
