"""Compare two runs' JSON results number by number, ignoring timings, paths and versions.

    .venv/bin/python benchmarks/compare_runs.py OLD_DIR NEW_DIR

For each ``*.json`` found under OLD_DIR (and at the same place under NEW_DIR), prints the
differing entries; exit status 1 when any number or string differs. Used to check that a
refactoring changed no figure (docs/benchmarks.md, "The redesign into layers").
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

#: Keys whose values legitimately differ between two runs of the same code.
IGNORED = ("seconds", "time", "versions", "created", "date", "elapsed", "duration", "timing", "command", "path",
           "weights", "out", "machine", "loadavg", "ms_per")


def differences(old, new, where: str = "") -> list[str]:
    """Entries of two JSON values that differ (NaN equals NaN), skipping the `IGNORED` keys."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            if any(part in key.lower() for part in IGNORED):
                continue
            if key not in old or key not in new:
                out.append(f"{where}/{key}: only in {'new' if key not in old else 'old'}")
            else:
                out += differences(old[key], new[key], f"{where}/{key}")
        return out
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{where}: {len(old)} items against {len(new)}"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{where}[{i}]")]
    if isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new):
        return []
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__)
        return 2
    old_dir, new_dir = map(Path, args)
    found = 0
    for old_file in sorted(old_dir.rglob("*.json")):
        new_file = new_dir / old_file.relative_to(old_dir)
        if not new_file.is_file():
            print(f"{new_file}: missing")
            found += 1
            continue
        diffs = differences(json.loads(old_file.read_text()), json.loads(new_file.read_text()))
        print(f"{old_file.relative_to(old_dir)}: {len(diffs)} differences")
        for line in diffs[:50]:
            print("  " + line)
        found += len(diffs)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
