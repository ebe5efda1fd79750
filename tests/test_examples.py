"""The scripts in examples/ run: each in a subprocess with BCDI_GAPFILL_EXAMPLE_FAST=1 (64^3
or smaller arrays, classical fills, so the shipped weights are not needed), exit 0 and print
the line that shows what the example is about."""
import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 300


def _env():
    env = dict(os.environ)
    env["BCDI_GAPFILL_EXAMPLE_FAST"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MPLBACKEND"] = "Agg"
    return env


def _run(args, cwd):
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_env(), cwd=cwd,
                         timeout=TIMEOUT)
    assert out.returncode == 0, f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return out.stdout


def _run_example(name, tmp_path, *extra):
    return _run([str(EXAMPLES / name), *extra], tmp_path)


def _run_without(module, name, tmp_path):
    """Run an example as if ``module`` were not installed (sys.modules[module] = None)."""
    code = (f"import sys, runpy; sys.modules[{module!r}] = None; sys.argv = [{str(EXAMPLES / name)!r}]; "
            f"runpy.run_path({str(EXAMPLES / name)!r}, run_name='__main__')")
    return _run(["-c", code], tmp_path)


@pytest.mark.parametrize("name", ["inpaint_array.py", "inpaint_bcdi_pair.py", "pynx_operator_chain.py",
                                  "validate_own_object.py", "inpaint_cdiutils.py", "finetune_on_array.py"])
def test_example_has_module_docstring(name):
    doc = ast.get_docstring(ast.parse((EXAMPLES / name).read_text()))
    assert doc and "BCDI_GAPFILL_EXAMPLE_FAST" in doc


def test_inpaint_array(tmp_path):
    out = _run_example("inpaint_array.py", tmp_path)
    match = re.search(r"in-gap PCC \(log1p\) vs truth: biharmonic (\S+), linear (\S+)", out)
    assert match, out
    assert 0.5 < float(match.group(1)) <= 1 and 0.5 < float(match.group(2)) <= 1


def test_inpaint_bcdi_pair(tmp_path):
    out = _run_example("inpaint_bcdi_pair.py", tmp_path, str(tmp_path / "out"))
    assert re.search(r"filled \d+ gap voxels with biharmonic", out), out
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "S1_pynx_64_64_64_1_1_1_gapfilled.npz" in written
    assert "S1_maskpynx_64_64_64_1_1_1_gapfilled.npz" in written
    assert "S1_pynx_64_64_64_1_1_1.npz" in written  # the original stays


def test_inpaint_cdiutils(tmp_path):
    out = _run_example("inpaint_cdiutils.py", tmp_path, str(tmp_path / "out"))
    match = re.search(r"filled \d+ gap voxels with biharmonic; in-gap PCC \(log1p\) vs the simulator's counts: "
                      r"biharmonic (\S+), linear (\S+)", out)
    assert match, out
    assert float(match.group(1)) > float(match.group(2)) > 0.5
    assert (tmp_path / "out" / "S1" / "pynx_phasing_gapfilled" / "S1_pynx_input_data.npz").is_file()
    assert (tmp_path / "out" / "S1" / "pynx_phasing" / "S1_pynx_input_data.npz").is_file()   # the original stays


def test_inpaint_cdiutils_without_cdiutils_exits_0(tmp_path):
    out = _run_without("cdiutils", "inpaint_cdiutils.py", tmp_path)
    assert "cdiutils is not installed" in out


def test_finetune_on_array(tmp_path):
    out = _run_example("finetune_on_array.py", tmp_path, str(tmp_path / "out"))
    assert re.search(r"fine-tuned 2 steps on 8 portions of the array", out), out
    assert re.search(r"held-out in-gap PCC \(log1p, 4 portions never trained on\)", out), out
    match = re.search(r"real-gap PCC \(log1p\) vs truth: shipped (\S+), fine-tuned (\S+)", out)
    assert match, out
    assert 0 < float(match.group(1)) <= 1 and 0 < float(match.group(2)) <= 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scan.npy", "scan_finetuned.json",
                                                                    "scan_finetuned.pt"]


@pytest.mark.pynx
def test_pynx_operator_chain(tmp_path):
    out = _run_example("pynx_operator_chain.py", tmp_path)
    if importlib.util.find_spec("pynx") is None:
        assert "PyNX is not installed" in out
    else:
        assert re.search(r"filled \d+ gap voxels \(biharmonic\)", out), out
        assert "PyNX runner input written" in out


@pytest.mark.pynx
def test_pynx_operator_chain_without_pynx_exits_0(tmp_path):
    out = _run_without("pynx", "pynx_operator_chain.py", tmp_path)
    assert "PyNX is not installed" in out


def test_validate_own_object(tmp_path):
    out = _run_example("validate_own_object.py", tmp_path)
    assert "strain RMSE" in out, out
    assert re.search(r"^biharmonic\s+\S+\s+\S+\s+\S+", out, re.M), out

