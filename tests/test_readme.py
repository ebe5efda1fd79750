"""The READMEs and the user guide are tested code: every Python block and every shell command a user can run on
simulated data runs here, the way a user runs it (a fresh interpreter, the installed
``bcdi-gapfill`` console script, the current directory holding the files the text names).

How the text is adapted, mechanically and nowhere else:

* **Files.** Commands run from a copy of the clone's ``workflows/``. A block or command that reads a user's file (``S1234_pynx_....npz``,
  ``data.cxi``, ...) finds a small simulated scan of that name and format in its working
  directory, made by :func:`_user_files` (a 32x96x96 crystal on the Maxipix gap layout, as
  bcdi writes it). The files are hashed before and after: the README's code must not modify
  them.
* **Objects.** The Python blocks of a README run in order in one interpreter, as a user
  pastes them, so ``data`` and ``gap_mask`` of the first block serve the later ones. The one
  object no block makes, the cdiutils ``pipeline``, comes from :data:`PREAMBLE`: a real
  ``BcdiPipeline`` on a scan of cdiutils' own simulator.
* **Minutes.** Calls whose defaults take minutes (fine-tuning, calibration on 128^3 arrays,
  a 100-pattern dataset) run with the smaller arguments of :data:`PYTHON_SUBSTITUTIONS` /
  :data:`SHELL_SUBSTITUTIONS`, and a line that needs what this machine lacks (PyNX's GPU
  runner) is replaced by a check of what it would read. Each substitution must match the
  README text exactly once, so a README edit that the test no longer covers fails here.
* **Not run here**, each with its reason and the place that runs it: :data:`SHELL_ELSEWHERE`.
  Every other shell command of the READMEs must be run by this file: a new command fails
  the test until it is.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The documents whose code is tested, in the order a reader meets them.
READMES = [ROOT / "README.md", ROOT / "docs" / "user-guide.md", ROOT / "workflows" / "README.md"]
TIMEOUT = 900

PYTHON_SUBSTITUTIONS = {
    # about 4 min of fine-tuning -> 2 steps on 8 portions
    "result = finetune(data, gap_mask)":
        "result = finetune(data, gap_mask, n_portions=8, steps=2, holdout=4, revert_if_worse=False)",
    # three 128^3 arrays with flips -> one 48^3 array
    "calibrate(seeds=(400000, 400001, 400002))": "calibrate(seeds=(400000,), size=48, n_bins=4)",
    # cdiutils' phase_retrieval runs PyNX's GPU command pynx-cdi-id01: check what it would read
    "pipeline.phase_retrieval()":
        "assert Path(pipeline.pynx_phasing_dir).name == 'pynx_phasing_gapfilled', pipeline.pynx_phasing_dir",
}

# Made before the first block (see the module docstring): the cdiutils pipeline of the cdiutils block.
PREAMBLE = """
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
from cdiutils.pipeline import BcdiPipeline
from bcdi_gapfill.validation.scans import simulate_cdiutils_scan, write_id01_master_file
_params = write_id01_master_file(simulate_cdiutils_scan(3, (32, 64, 64), full_detector=True), "sim.h5")
pipeline = BcdiPipeline({**_params, "dump_dir": str(Path("S1").resolve()), "preprocess_shape": (32, 64, 64),
                         "voxel_reference_methods": ["max"], "show": False})
"""

SHELL_SUBSTITUTIONS = {
    "bcdi-gapfill simulate --n 100 --size 128 --out sims/": "bcdi-gapfill simulate --n 2 --size 32 --out sims/",
    # 7 treatments x 4 starts of phase retrieval on 64^3 (1-2 min) -> 1 start on 32^3
    "--gap cross:9 --out val/": "--gap cross:9 --out val/ --size 32 --starts 1",
    # 16 phase retrievals (minutes) -> 2
    "-o S1234_assess.json": "-o S1234_assess.json --treatments free_pixels,zero_fill --bands 1 --starts 1",
    # the user's whole 516x516 Maxipix frames -> a 96x96 ROI around its chip cross
    "--roi 0 516 0 516": "--roi 210 306 210 306",
    # about 4 min of fine-tuning -> 2 steps on 8 portions
    "bcdi-gapfill finetune S1234_pynx.npz --mask S1234_maskpynx.npz":
        "bcdi-gapfill finetune S1234_pynx.npz --mask S1234_maskpynx.npz --portions 8 --steps 2 --holdout 4 "
        "--keep-worse",
}

SHELL_ELSEWHERE = {
    "make demo": "the README's first command: CI's .ci/run and tests/test_cli.py::test_demo_end_to_end run it",
    "make test": "the README's second command: it is what runs this file",
    "bcdi-gapfill demo": "what `make demo` runs (tests/test_cli.py::test_demo_end_to_end)",
    "bcdi-gapfill train --config workflows/train_default.yml":
        "hours of training; tests/test_train.py loads that recipe (test_shipped_training_recipes_load) and "
        "trains and resumes tiny models (test_training_resumes_from_checkpoint)",
    "bcdi-gapfill evaluate --out eval/":
        "simulates 100 held-out 128^3 patterns (about an hour here); "
        "tests/test_evaluate.py::test_run_evaluation_small runs the same function on 48^3",
    "python workflows/bcdi_preprocess_gapfill.py --config_file my_scan.yml":
        "needs the user's YAML and raw frames; the --simulate line of workflows/README.md runs the same script here",
    "python workflows/bcdi_preprocess_gapfill.py --config_file my_scan.yml [--scans 11,12] [--overwrite]":
        "a synopsis with optional arguments; the --simulate line beside it runs here",
    "bcdi-gapfill bcdi-preprocess my_scan.yml [--overwrite]":
        "a synopsis; tests/test_bcdi_preprocess.py runs the subcommand on a simulated scan",
    "python workflows/id01_maxipix.py --config workflows/id01_maxipix.yml --out maxipix_run":
        "phase retrieval of 4 treatments at the shipped size (minutes); tests/test_workflows.py runs the script "
        "end to end with small overrides",
    "python workflows/eiger2m_highres.py --config workflows/eiger2m_highres.yml --out eiger_run":
        "as id01_maxipix.py (tests/test_workflows.py)",
    "bcdi-gapfill batch --config workflows/series.yml":
        "needs a series of scans in the YAML's input glob; tests/test_batch.py runs `batch` on a simulated series",
}


# ----------------------------------------------------------------------------- parsing

def code_blocks(path: Path, languages: tuple[str, ...]) -> list[tuple[int, str]]:
    """``(first line number, text)`` of each fenced block of ``path`` in one of ``languages``."""
    blocks, current, start, lang = [], None, 0, None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"^```(\w*)\s*$", line)
        if fence and current is None:
            current, start, lang = [], number + 1, fence.group(1)
        elif fence:
            if lang in languages:
                blocks.append((start, "\n".join(current) + "\n"))
            current = None
        elif current is not None:
            current.append(line)
    assert current is None, f"{path}: unclosed code fence"
    return blocks


def shell_commands(path: Path) -> list[str]:
    """The commands of the bash blocks of ``path``, comments stripped."""
    commands = []
    for _, block in code_blocks(path, ("bash", "sh", "shell")):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def _substitute_once(text: str, substitutions: dict[str, str], where: str) -> str:
    for old, new in substitutions.items():
        assert text.count(old) == 1, f"{where}: the test's substitution {old!r} must match exactly once"
        text = text.replace(old, new)
    return text


# ----------------------------------------------------------------------------- the user's files

def _user_files(directory: Path) -> list[Path]:
    """The files the READMEs read, as small simulated scans in the formats the text names."""
    from bcdi_gapfill.core import io
    from bcdi_gapfill.workflow.pipeline import simulate_bcdi_pair

    pair = simulate_bcdi_pair(directory, scan=1234, seed=5, size=(32, 96, 96), peak_counts=1e6)
    names = {"S1234_pynx_align-q-y_norm_256_300_300_1_1_1.npz": pair.data_path,
             "S1234_maskpynx_align-q-y_norm_256_300_300_1_1_1.npz": pair.mask_path,
             "S1234_pynx.npz": pair.data_path, "S1234_maskpynx.npz": pair.mask_path}
    for name, source in names.items():
        shutil.copyfile(source, directory / name)
    pair.data_path.unlink()
    pair.mask_path.unlink()
    # A PyNX .cxi of the frames' 96x96 ROI (210:306 on Maxipix) that SHELL_SUBSTITUTIONS names.
    with np.load(directory / "S1234_pynx.npz") as data:
        io.save_array(directory / "data.cxi", data["data"])
    return [directory / name for name in [*names, "data.cxi"]]


def _hashes(paths: list[Path]) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)   # `python` and the `bcdi-gapfill` console script
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "MPLBACKEND": "Agg",
            "OMP_NUM_THREADS": "1"}


@pytest.fixture
def workdir(tmp_path):
    directory = tmp_path / "user"
    directory.mkdir()
    files = _user_files(directory)
    # The READMEs' commands run from the root of a clone: workflows/ is where they say.
    shutil.copytree(ROOT / "workflows", directory / "workflows")
    before = _hashes(files)
    yield directory
    assert _hashes(files) == before, "README code modified the user's input files"


# ----------------------------------------------------------------------------- tests

def test_readme_python_blocks_run_in_order(workdir):
    """Every Python block of the documents, in reading order, in one interpreter (the guide's
    blocks use what the README's quick start made, as a reader's session would)."""
    sections = [f"# --- {readme.relative_to(ROOT)}:{line}\n{block}"
                for readme in READMES for line, block in code_blocks(readme, ("python",))]
    assert sections, "no Python blocks found: the parser broke"
    script = PREAMBLE + _substitute_once("\n".join(sections), PYTHON_SUBSTITUTIONS, "the documents")
    (workdir / "documents_blocks.py").write_text(script)
    proc = subprocess.run([sys.executable, "documents_blocks.py"], cwd=workdir, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"a Python block failed\n{proc.stdout}\n{proc.stderr[-6000:]}"
    # What the blocks say they make.
    assert (workdir / "S1234_pynx_finetuned.pt").is_file()
    assert (workdir / "calib" / "calibration.json").is_file()
    assert (workdir / "S1" / "pynx_phasing_gapfilled").is_dir()
    assert "held-out" in proc.stdout   # result.summary()


def test_every_readme_shell_command_runs_or_says_where():
    commands = [c for readme in READMES for c in shell_commands(readme)]
    assert commands, "no shell commands found: the parser broke"
    for command in dict.fromkeys(commands):
        if command in SHELL_ELSEWHERE:
            continue
        runnable = _substitute_shell(command)
        assert runnable is not None, (f"README command {command!r} is neither run by tests/test_readme.py nor "
                                      "listed in SHELL_ELSEWHERE with the test that runs it")


def _substitute_shell(command: str) -> str | None:
    for old, new in SHELL_SUBSTITUTIONS.items():
        if old in command:
            command = command.replace(old, new)
    if command.startswith(("bcdi-gapfill ", "python workflows/")):
        return command
    return None


def test_shell_substitutions_each_match_once():
    commands = list(dict.fromkeys(c for readme in READMES for c in shell_commands(readme)))
    text = "\n".join(c for c in commands if c not in SHELL_ELSEWHERE)
    for old in SHELL_SUBSTITUTIONS:
        assert text.count(old) == 1, f"substitution {old!r} must match one README command exactly once"
    for command in SHELL_ELSEWHERE:
        assert command in commands, f"SHELL_ELSEWHERE names {command!r}, which no README has any more"


def test_readme_shell_commands(workdir):
    """Run them in README order in one directory, as a user would (the finetuned weights of one
    line are read by the next)."""
    done = []
    commands = [c for readme in READMES for c in shell_commands(readme)]
    for command in dict.fromkeys(commands):
        if command in SHELL_ELSEWHERE:
            continue
        runnable = _substitute_shell(command)
        proc = subprocess.run(runnable, shell=True, cwd=workdir, env=_env(), capture_output=True, text=True,
                              timeout=TIMEOUT)
        assert proc.returncode == 0, f"{command!r} (run as {runnable!r}) failed\n{proc.stdout}\n{proc.stderr[-6000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr
        done.append(command)
    assert len(done) >= 6, done
    for output in ("S1234_gapfilled.npz", "filled.h5", "S1234_pynx_finetuned.pt", "S1234_assess.json"):
        assert (workdir / output).is_file(), output
    assert len(list((workdir / "sims").iterdir())) >= 2
    assert (workdir / "val" / "report.html").is_file()


def test_code_blocks_parser(tmp_path):
    text = textwrap.dedent("""\
        ```python
        a = 1
        ```
        text
        ```bash
        bcdi-gapfill demo   # comment
        # only a comment
        ```
        ```
        plain
        ```
        """)
    path = tmp_path / "case.md"
    path.write_text(text)
    assert code_blocks(path, ("python",)) == [(2, "a = 1\n")]
    assert shell_commands(path) == ["bcdi-gapfill demo"]
