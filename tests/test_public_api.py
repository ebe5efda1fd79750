"""The package-level API as users meet it: every name of ``bcdi_gapfill.__all__`` is the
documented object on every access, with every import style, whatever was imported before.

Each check runs in a fresh interpreter: inside the test process earlier tests have already
imported the submodules, which is exactly the state that once hid the shadowing bug
(``from bcdi_gapfill import inpaint`` returned the module ``bcdi_gapfill/inpaint.py``).
"""
from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bcdi_gapfill

EXPORTED = [name for name in bcdi_gapfill.__all__ if not name.startswith("__")]
ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_no_module_is_named_like_an_exported_name():
    modules = {info.name for info in pkgutil.iter_modules(bcdi_gapfill.__path__)}
    assert modules.isdisjoint(EXPORTED), modules & set(EXPORTED)


@pytest.mark.parametrize("first", ["nothing", "every submodule"])
def test_exported_names_are_functions_with_both_import_styles(tmp_path, first):
    # "every submodule": the state of a pipeline that imported the package's modules itself
    # (``import bcdi_gapfill.fill.inpainting`` binds ``inpainting`` on the package, never ``inpaint``).
    out = _python(f"""
        import importlib, inspect, json, pkgutil
        import bcdi_gapfill
        if {first == "every submodule"!r}:
            for info in pkgutil.iter_modules(bcdi_gapfill.__path__):
                if info.name not in ("cli",):
                    importlib.import_module("bcdi_gapfill." + info.name)
        kinds = {{}}
        for name in {EXPORTED!r}:
            ns = {{}}
            exec(f"from bcdi_gapfill import {{name}} as x", ns)
            objs = [getattr(bcdi_gapfill, name), getattr(bcdi_gapfill, name), ns["x"]]
            kinds[name] = [inspect.isfunction(o) and o.__name__ == name and o is objs[0] for o in objs]
        print(json.dumps(kinds))
    """, tmp_path)
    kinds = json.loads(out)
    assert kinds == {name: [True, True, True] for name in EXPORTED}


def test_the_documented_one_liner(tmp_path):
    out = _python("from bcdi_gapfill import inpaint; import bcdi_gapfill; "
                  "print(inpaint, bcdi_gapfill.inpaint, bcdi_gapfill.validate)", tmp_path)
    assert out.count("<function ") == 3, out
    assert "module" not in out


def test_repeated_calls_and_two_modules_importing_the_same_name(tmp_path):
    # Two user modules import ``inpaint`` in the two styles, one after the other; both work twice.
    (tmp_path / "stage_a.py").write_text("from bcdi_gapfill import inpaint\n"
                                         "def run(d, g):\n    return inpaint(d, g, method='biharmonic')\n")
    (tmp_path / "stage_b.py").write_text("import bcdi_gapfill\n"
                                         "def run(d, g):\n    return bcdi_gapfill.inpaint(d, g, method='linear')\n")
    out = _python("""
        import numpy as np
        import stage_a, stage_b
        from bcdi_gapfill import synthetic_gap_mask, simulate_pattern
        counts = simulate_pattern(32, 1, peak_counts=1e5).counts
        gap = synthetic_gap_mask(counts.shape, "cross", 3)
        results = [stage_a.run(counts, gap), stage_b.run(counts, gap), stage_a.run(counts, gap),
                   stage_b.run(counts, gap)]
        assert np.array_equal(results[0], results[2]) and np.array_equal(results[1], results[3])
        for r in results:
            assert np.array_equal(r[~gap], counts[~gap].astype(np.float32))
        print("ok")
    """, tmp_path)
    assert out.strip() == "ok"


def test_import_stays_light(tmp_path):
    out = _python("""
        import sys
        import bcdi_gapfill
        bcdi_gapfill.detector_gap_mask
        print(sorted(m for m in ("torch", "pynx", "cdiutils", "dask", "ewokscore") if m in sys.modules))
    """, tmp_path)
    assert out.strip() == "[]"


def test_unknown_attribute_names_the_package():
    with pytest.raises(AttributeError, match="bcdi_gapfill.*no_such_name"):
        bcdi_gapfill.no_such_name  # noqa: B018
    assert set(EXPORTED) <= set(dir(bcdi_gapfill))


def test_cli_entry_point_in_a_subprocess(tmp_path):
    exe = Path(sys.executable).with_name("bcdi-gapfill")
    assert exe.is_file(), f"the console script is not installed next to {sys.executable}"
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"bcdi-gapfill {bcdi_gapfill.__version__}"
    proc = subprocess.run([str(exe), "inpaint", str(tmp_path / "missing.npz"), "--gap", "cross:3",
                           "-o", str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "missing.npz" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.npz").exists()
