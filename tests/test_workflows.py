"""The ready workflows of workflows/ (issue 6): bcdi pair -> gap filling -> phasing -> report.

Both scripts run end to end in a subprocess on tiny settings given as overrides (a 32x48x48
simulated scan, 40 phasing iterations, one start); the library side (bcdi_gapfill.workflow.pipeline)
is tested in-process on a measured-like pair (no truth), for its configuration errors and
for refusing existing outputs before computing.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bcdi_gapfill.core import geometry
from bcdi_gapfill.cli.workflow import main
from bcdi_gapfill.workflow.pipeline import (BASELINES, load_workflow_config, run_workflow, simulate_bcdi_pair,
                                            workflow_outputs)

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
FAST_PHASING = ["phasing.algorithm=ER**20 * HIO**20", "phasing.n_starts=1"]


def _run_script(name, out, *overrides, cwd):
    args = [sys.executable, str(WORKFLOWS / f"{name}.py"), "--config", str(WORKFLOWS / f"{name}.yml"),
            "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def _check_filled_pair(out, report):
    """The bcdi stage's outputs: gap filled and released, other masked voxels kept, inputs untouched."""
    settings = report["settings"]
    data = np.load(settings["inputs"]["data"])["data"]
    mask = np.load(settings["inputs"]["mask"])["mask"]
    filled = np.load(settings["outputs"]["data"])["data"]
    new_mask = np.load(settings["outputs"]["mask"])["mask"]
    gap = (mask != 0) & (new_mask == 0)
    assert gap.sum() == settings["gap_voxels"] == settings["gapfill_record"]["gap_voxels_filled"]
    assert np.array_equal(filled[~gap], data[~gap]) and np.isfinite(filled).all() and (filled[gap] >= 0).all()
    assert new_mask.sum() == settings["masked_voxels_not_gap"] > 0  # the hot pixels stay masked
    return gap


def _check_report(out, report, names, simulated):
    assert report["schema"] == "bcdi_gapfill.workflow.pipeline/1"
    assert list(report["methods"]) == names
    for name, entry in report["methods"].items():
        assert np.isfinite(entry["llk_measured"]) and np.isfinite(entry["llk"]), name
        assert entry["support_voxels"] > 0 and entry["phasing_time_s"] >= 0
        assert (entry.get("strain_rmse") is not None) == simulated and ("phase_std" in entry) == simulated
        with np.load(out / f"reconstruction_{name}.npz") as rec:
            assert rec["obj"].shape == tuple(report["settings"]["shape"]) and rec["support"].sum() > 0
    assert report["methods"][names[0]]["gap_voxels_filled"] == report["settings"]["gap_voxels"]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["methods"].keys() == report["methods"].keys()
    page = (out / "report.html").read_text()
    assert page.count("<img ") == (2 if simulated else 0) and "Settings" in page


def test_id01_maxipix_workflow_end_to_end(tmp_path):
    out = tmp_path / "maxipix"
    stdout = _run_script("id01_maxipix", out, "simulate.size=[32,48,48]", "simulate.roi_origin=[236,230]",
                         *FAST_PHASING, cwd=tmp_path)
    assert re.search(r"\[2/4\] filled \d+ gap voxels with model", stdout), stdout
    assert "report: " in stdout and "LLK on the measured voxels: inpaint" in stdout
    report = json.loads((out / "report.json").read_text())
    _check_report(out, report, ["inpaint", "free_pixels", "zero_fill", "no_gap"], simulated=True)
    gap = _check_filled_pair(out, report)
    # the gap is the Maxipix cross in the ROI [236, 284, 230, 278], in every frame
    expected = geometry.detector_gap_mask("Maxipix", 32, roi=(236, 284, 230, 278))
    assert np.array_equal(gap, expected)
    settings = report["settings"]
    assert settings["simulation"]["detector"] == "Maxipix" and settings["gapfill_record"]["method"] == "model"
    assert settings["gapfill_record"]["weights_sha256"]
    assert 0 < report["methods"]["no_gap"]["overlap"] <= 1


def test_eiger2m_highres_workflow_end_to_end(tmp_path):
    out = tmp_path / "eiger"
    _run_script("eiger2m_highres", out, "simulate.size=[32,48,48]", "simulate.roi_origin=[232,236]",
                "gapfill.method=biharmonic", "phasing.baselines=[free_pixels]", *FAST_PHASING, cwd=tmp_path)
    report = json.loads((out / "report.json").read_text())
    _check_report(out, report, ["biharmonic", "free_pixels", "no_gap"], simulated=True)
    gap = _check_filled_pair(out, report)
    assert np.array_equal(gap, geometry.detector_gap_mask("Eiger2M", 32, roi=(232, 280, 236, 284)))
    assert report["settings"]["simulation"]["detector"] == "Eiger2M"
    assert not (out / "reconstruction_zero_fill.npz").exists()


@pytest.mark.parametrize("name, detector, size", [("id01_maxipix", "Maxipix", [64, 96, 96]),
                                                  ("eiger2m_highres", "Eiger2M", [96, 160, 160])])
def test_shipped_configurations(name, detector, size):
    """The shipped configs load, simulate on their detector, and their ROI holds only gaps the model serves."""
    from bcdi_gapfill.fill.inpainting import DEFAULT_WEIGHTS
    cfg = load_workflow_config(WORKFLOWS / f"{name}.yml")
    sim = cfg["simulate"]
    assert cfg["name"] == name and cfg["data"] is None and sim["detector"] == detector and sim["size"] == size
    assert cfg["gapfill"]["method"] == "model" and cfg["phasing"]["baselines"] == list(BASELINES)
    row0, col0 = sim["roi_origin"]
    gap = geometry.detector_gap_mask(detector, 1, roi=(row0, row0 + size[1], col0, col0 + size[2]))
    served = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())["max_gap_width"]
    assert gap.any() and 0 < geometry.gap_width(gap) <= served
    # the gap passes near the Bragg peak (array centre), not through it
    rows, cols = np.flatnonzero(gap[0].all(axis=1)), np.flatnonzero(gap[0].all(axis=0))
    assert 2 <= np.abs(rows - size[1] // 2).min() <= 12 and 2 <= np.abs(cols - size[2] // 2).min() <= 12


def test_workflow_on_a_measured_pair(tmp_path):
    """Measured data: no truth, so no strain metrics and no figures; the inputs are only read."""
    source = tmp_path / "beamline"
    source.mkdir()
    pair = simulate_bcdi_pair(source, scan=7, seed=3, size=(32, 40, 40), detector="Maxipix",
                              roi_origin=(240, 238), hot_pixels=2, peak_counts=1e5, phase="zero")
    before = {p: p.read_bytes() for p in (pair.data_path, pair.mask_path)}
    cfg = {"name": "measured", "data": str(pair.data_path), "mask": str(pair.mask_path),
           "gapfill": {"method": "biharmonic"},
           "phasing": {"algorithm": "ER**10 * HIO**10", "n_starts": 2, "n_average": 2}}
    result = run_workflow(cfg, tmp_path / "out")
    report, out = result["report"], tmp_path / "out"
    _check_report(out, report, ["biharmonic", "free_pixels", "zero_fill"], simulated=False)
    assert report["settings"]["source"] == "measured" and report["settings"]["simulation"] is None
    assert report["methods"]["biharmonic"]["llk_starts"] and len(report["methods"]["biharmonic"]["llk_starts"]) == 2
    assert np.array_equal(_check_filled_pair(out, report), pair.gap)
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in source.iterdir()) == sorted(p.name for p in before)


def test_workflow_releases_the_filled_gap_when_asked(tmp_path):
    source = tmp_path / "beamline"
    source.mkdir()
    pair = simulate_bcdi_pair(source, scan=7, seed=3, size=(32, 40, 40), detector="Maxipix",
                              roi_origin=(240, 238), hot_pixels=2, peak_counts=1e5, phase="zero")
    reports = {}
    for release in (None, 0.75):
        cfg = {"name": "measured", "data": str(pair.data_path), "mask": str(pair.mask_path),
               "gapfill": {"method": "biharmonic"},
               "phasing": {"algorithm": "ER**10 * HIO**10", "n_starts": 1, "baselines": [], "release": release}}
        reports[release] = run_workflow(cfg, tmp_path / f"out{release}")["report"]
    given, released = (reports[k]["methods"]["biharmonic"] for k in (None, 0.75))
    assert reports[0.75]["settings"]["release"] == 0.75 and reports[None]["settings"]["release"] is None
    # Released, the gap is not data: the LLK it is ranked on is the measured voxels' one.
    assert released["llk"] == pytest.approx(released["llk_measured"], rel=1e-4)
    assert given["llk"] != pytest.approx(given["llk_measured"], rel=1e-4)


def test_simulated_pair_is_what_bcdi_writes(tmp_path):
    pair = simulate_bcdi_pair(tmp_path, scan=3, seed=1, size=(32, 36, 40), detector="Eiger2M",
                              roi_origin=(240, 240), hot_pixels=4, peak_counts=1e4)
    assert pair.data_path.name == "S3_pynx_sim_32_36_40_1_1_1.npz"
    assert pair.mask_path.name == "S3_maskpynx_sim_32_36_40_1_1_1.npz"
    with np.load(pair.data_path) as d, np.load(pair.mask_path) as m:
        assert d.files == ["data"] and m.files == ["mask"]
        data, mask = d["data"], m["mask"]
    assert mask.dtype == np.int8 and data.shape == mask.shape == (32, 36, 40)
    assert np.array_equal(mask != 0, pair.gap | pair.hot) and (data[mask != 0] == 0).all()
    assert pair.hot[0].sum() == 4 and not (pair.hot & pair.gap).any()
    assert np.array_equal(pair.gap, geometry.detector_gap_mask("Eiger2M", 32, roi=pair.roi))
    assert np.array_equal(geometry.gap_mask_from_mask(mask), pair.gap)  # what the bcdi stage finds
    assert np.array_equal(data[mask == 0], pair.counts[mask == 0])
    photons = float(pair.counts.astype(np.float64).sum())
    assert abs(float((np.abs(pair.obj.astype(np.complex128)) ** 2).sum()) / photons - 1) < 0.05
    with pytest.raises(ValueError, match=r"holds no chip gap"):
        simulate_bcdi_pair(tmp_path, size=(16, 32, 32), roi_origin=(0, 0), overwrite=True)
    with pytest.raises(ValueError, match=r"roi .*outside the Maxipix detector"):
        simulate_bcdi_pair(tmp_path, size=(16, 32, 32), roi_origin=(500, 0), overwrite=True)
    with pytest.raises(FileExistsError, match=r"S3_pynx_sim_32_36_40_1_1_1\.npz exists"):
        simulate_bcdi_pair(tmp_path, scan=3, seed=1, size=(32, 36, 40), detector="Eiger2M", roi_origin=(240, 240))


_SIM = {"simulate": {"size": [32, 48, 48]}}


@pytest.mark.parametrize("config, overrides, match", [
    ({}, [], r"give either data \(and mask\).*not neither"),
    ({"data": "S1_pynx.npz", **_SIM}, [], r"not both"),
    ({"mask": "m.npz", **_SIM}, [], r"mask is given without data"),
    ({"datta": "x", **_SIM}, [], r"unknown keys in the workflow configuration: 'datta' \(did you mean 'data'\?\)"),
    ({"phasing": {"n_start": 1}, **_SIM}, [], r"unknown keys in the phasing section.*'n_start' \(did you mean 'n_starts'\?\)"),
    ({"simulate": {"sise": 3}}, [], r"unknown keys in the simulate section.*'sise' \(did you mean 'size'\?\)"),
    ({"gapfill": "model", **_SIM}, [], r"gapfill .*must be a section"),
    (_SIM, ["phasing.baselines=[free_pixels, zero]"], r"phasing\.baselines must be .*\['free_pixels', 'zero'\]"),
    (_SIM, ["phasing.algorithm=ER**20 * HIOO"], r"unsupported element 'HIOO'"),
    (_SIM, ["phasing.n_starts=0"], r"phasing\.n_starts must be an integer >= 1, got 0"),
    (_SIM, ["phasing.n_average=3", "phasing.n_starts=2"], r"n_average \(3\) cannot exceed .*n_starts \(2\)"),
    (_SIM, ["gapfill.method=zero"], r"'zero' is the zero_fill baseline"),
    (_SIM, ["phasing.release=0"], r"phasing\.release must be null or a number in \(0, 1\], got 0"),
    (_SIM, ["phasing.release=1", "phasing.backend=pynx"], r"phasing\.release needs phasing\.backend torch"),
    (_SIM, ["simulate.size=[32, 48]"], r"simulate\.size must be 3 integers >= 8.*\[32, 48\]"),
    (_SIM, ["simulate.roi_origin=5"], r"simulate\.roi_origin must be \[row, column\]"),
    (_SIM, ["phasing.n_starts"], r"an override must look like key\.sub=value, got 'phasing\.n_starts'"),
    ({"scan": 3, **_SIM}, ["scan.x=1"], r"cannot set scan\.x: scan is not a section"),
    (_SIM, ["simulate.roi_origin=[1.5, 2]"], r"simulate\.roi_origin must be \[row, column\]"),
])
def test_configuration_errors(config, overrides, match):
    with pytest.raises(ValueError, match=match):
        load_workflow_config(config, overrides)


def test_overrides_and_yaml(tmp_path):
    path = tmp_path / "w.yml"
    path.write_text("name: w\nsimulate:\n  seed: 4\nphasing:\n  n_starts: 3\n")
    cfg = load_workflow_config(path, ["simulate.size=40", "phasing.algorithm=ER**5", "gapfill.stride=4"])
    assert cfg["simulate"]["seed"] == 4 and cfg["simulate"]["size"] == [40, 40, 40]
    assert cfg["simulate"]["detector"] == "Maxipix" and cfg["phasing"]["n_starts"] == 3
    assert cfg["phasing"]["algorithm"] == "ER**5" and cfg["gapfill"]["stride"] == 4
    assert load_workflow_config(cfg) == cfg  # idempotent
    swapped = load_workflow_config(path, ["simulate=null", "data=S1_pynx.npz"])
    assert swapped["simulate"] is None and swapped["data"] == "S1_pynx.npz"
    (tmp_path / "list.yml").write_text("- 1\n")
    with pytest.raises(ValueError, match=r"must hold a YAML mapping of settings, got list"):
        load_workflow_config(tmp_path / "list.yml")


def test_existing_outputs_are_refused_before_computing(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("an earlier report")
    argv = ["--config", str(WORKFLOWS / "id01_maxipix.yml"), "--out", str(out), "--set", "simulate.size=[32,48,48]"]
    assert main(argv, prog="id01_maxipix.py") == 2
    err = capsys.readouterr().err
    assert err == f"id01_maxipix.py: error: outputs exist: {out / 'report.html'}; pass overwrite=True " \
                  "(--overwrite) to replace them\n"
    assert [p.name for p in out.iterdir()] == ["report.html"]  # nothing simulated, filled or phased
    cfg = load_workflow_config(WORKFLOWS / "id01_maxipix.yml", ["simulate.size=[32,48,48]"])
    roles = workflow_outputs(cfg, out)
    assert set(roles) >= {"input_data", "input_mask", "filled_data", "filled_mask", "filled_record",
                          "reconstruction_inpaint", "reconstruction_free_pixels", "reconstruction_zero_fill",
                          "reconstruction_no_gap", "report_json", "report_html"}
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(argv[:3] + [str(blocker)], prog="id01_maxipix.py") == 2
    assert capsys.readouterr().err == f"id01_maxipix.py: error: {blocker} exists and is not a directory\n"
    assert main(["--config", str(tmp_path / "none.yml")], prog="w") == 2
    assert "none.yml" in capsys.readouterr().err
    missing = ["--config", str(WORKFLOWS / "id01_maxipix.yml"), "--out", str(tmp_path / "o2"), "--set",
               "simulate=null", "--set", f"data={tmp_path / 'S1_pynx.npz'}"]
    assert main(missing, prog="w") == 2
    assert re.search(r"no such file: .*S1_pynx\.npz \(data of the workflow configuration\)", capsys.readouterr().err)
