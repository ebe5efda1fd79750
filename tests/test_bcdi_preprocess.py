"""bcdi_gapfill.workflow.bcdi_preprocess: bcdi 0.3.1's own preprocessing with the gap-filling stage inserted.

The end-to-end tests write a raw ID01 BLISS HDF5 scan (32 Maxipix frames of 516 x 516 with a
simulated Bragg peak, the chip-gap cross across it), a bcdi YAML with a ``gapfill:`` section,
and run the real bcdi: its loader reads the frames, its ``Detector`` masks the gaps, it saves
its PyNX pair; the stage must write a second pair with the gap filled and nothing else changed.
"""
import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from bcdi_gapfill.workflow import bcdi_preprocess as bp
from bcdi_gapfill.core.geometry import detector_gap_mask

SHAPE = (32, 32, 32)
ROI = [240, 272, 236, 268]          # rows 255-260 and columns 255-260 of the Maxipix cross inside
SEED = 5


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _config(root, report=None, **gapfill):
    extra = {} if report is None else {"report": report}
    return {**extra, 
        "scans": 3, "root_folder": f"{root}/", "data_dir": f"{root}/", "save_dir": f"{root}/pynx/",
        "sample_name": "S", "beamline": "ID01BLISS", "template_imagefile": "scan.h5", "detector": "Maxipix",
        "rocking_angle": "outofplane", "roi_detector": ROI, "flag_interact": False, "backend": "Agg",
        "multiprocessing": True, "use_rawdata": True, "phasing_binning": [1, 1, 1], "center_fft": "skip",
        "normalize_flux": "skip", "energy": 9000, "detector_distance": 0.5, "outofplane_angle": 35.0,
        "inplane_angle": 0.5, "gapfill": gapfill,
    }


# ------------------------------------------------------------------ configuration (no bcdi run)
def test_split_config_strips_gapfill_and_fills_defaults():
    config = {"scans": 1, "detector": "Maxipix", "gapfill": {"stride": 8, "device": "None"}}
    bcdi_parameters, settings = bp.split_config(config)
    assert bcdi_parameters == {"scans": 1, "detector": "Maxipix"}
    assert "gapfill" in config                     # the caller's dict is untouched
    assert settings == {**bp.GAPFILL_DEFAULTS, "stride": 8, "device": None}
    assert bp.split_config({"scans": 1})[1] == bp.GAPFILL_DEFAULTS
    assert bp.split_config({"scans": 1, "gapfill": None})[1] == bp.GAPFILL_DEFAULTS


@pytest.mark.parametrize("config, error, match", [
    ({"gapfill": {"strid": 8}}, ValueError, r"unknown keys in the gapfill section: 'strid' \(did you mean 'stride'\?\)"),
    ({"gap_fill": {"stride": 8}}, ValueError, "misspelt 'gapfill' section"),
    ({"GapFill": {}}, ValueError, "misspelt 'gapfill' section"),
    ({"gapfill": [1, 2]}, TypeError, "gapfill section must be a mapping"),
    ({"gapfill": {"method": "magic"}}, ValueError, "gapfill.method must be one of"),
    ({"gapfill": {"gap_from": "layout"}}, ValueError, "gapfill.gap_from must be 'mask' or 'detector'"),
    ({"gapfill": {"stride": 0}}, ValueError, "gapfill.stride must be a positive integer"),
    ({"gapfill": {"gap_from": "detector", "roi": [0, 1, 2]}}, ValueError, "gapfill.roi must be a list of 4"),
    ({"gapfill": {"detector": "Maxipix"}}, ValueError, "set gapfill.gap_from: detector"),
    ({"gapfill": {"flips": "yes"}}, ValueError, "gapfill.flips must be true or false"),
    ({"gapfill": {"method": "biharmonic", "weights": "w.pt"}}, ValueError, "weights is for method 'model'"),
    ({"gapfill": {"weights": "/nonexistent/w.pt"}}, FileNotFoundError, "no such weights file"),
    ({"gapfill": {"suffix": "a/b"}}, ValueError, "gapfill.suffix must be"),
    ({"save_to_npz": False}, ValueError, "save_to_npz is false"),
    ({"detector_on_goniometer": False}, ValueError, "forward-CDI"),
])
def test_split_config_refuses_bad_settings(config, error, match):
    with pytest.raises(error, match=match):
        bp.split_config({"scans": 1, **config})


# ----------------------------------------------------------- report: section (no bcdi run)
TINY_PHASING = {"algorithm": "ER**10 * HIO**20", "n_starts": 1}


def test_report_settings_defaults_and_split():
    from bcdi_gapfill.workflow.pipeline import DEFAULT_CONFIG
    settings = bp.check_report_settings({"n_starts": 1, "device": "None", "out_dir": "rep_S{scan}"})
    assert settings == {**DEFAULT_CONFIG["phasing"], "n_starts": 1, "device": None, "out_dir": "rep_S{scan}"}
    assert bp.check_report_settings(None) == bp.REPORT_DEFAULTS
    # bcdi never sees report: (it would ignore it silently)
    bcdi_parameters, _ = bp.split_config({"scans": 1, "report": TINY_PHASING})
    assert bcdi_parameters == {"scans": 1}
    cfg = bp._pipeline_config(settings, bp.GAPFILL_DEFAULTS, data="S1_pynx.npz", mask="S1_maskpynx.npz", scan=1,
                              record={"gap_source": "detector", "detector": "Maxipix", "roi": ROI,
                                      "binning": [1, 1, 1]})
    assert cfg["gapfill"]["roi"] == ROI and cfg["gapfill"]["method"] == "model" and "out_dir" not in cfg["phasing"]


@pytest.mark.parametrize("section, gapfill, error, match", [
    ({"n_start": 1}, None, ValueError, r"unknown keys in the report section: 'n_start' \(did you mean 'n_starts'\?\)"),
    ({"out": "x"}, None, ValueError, r"unknown keys in the report section: 'out' \(did you mean 'out_dir'\?\)"),
    ([1], None, TypeError, "report section must be a mapping"),
    ({"n_starts": 0}, None, ValueError, r"report\.n_starts must be an integer >= 1, got 0"),
    ({"n_starts": 1, "n_average": 2}, None, ValueError, r"report\.n_average \(2\) cannot exceed"),
    ({"baselines": ["zero"]}, None, ValueError, r"report\.baselines must be a list of distinct names"),
    ({"algorithm": "ER**20 * HIOO"}, None, ValueError, "unsupported element 'HIOO'"),
    ({"out_dir": "rep_{sample}"}, None, ValueError, r"report\.out_dir may hold \{scan\}"),
    ({"out_dir": 3}, None, ValueError, r"report\.out_dir must be a directory path or null, got 3"),
    ({}, {"method": "zero"}, ValueError, r"gapfill\.method 'zero' is the zero_fill baseline already"),
])
def test_report_settings_refused(section, gapfill, error, match):
    with pytest.raises(error, match=match):
        bp.check_report_settings(section, bp.check_gapfill_settings(gapfill))


def test_report_errors_come_before_bcdi(tmp_path, monkeypatch):
    """A bad report: stops the run before bcdi is imported; a misspelt section name is refused."""
    monkeypatch.setitem(sys.modules, "bcdi.preprocessing.preprocessing_runner", None)
    monkeypatch.delattr(sys.modules.get("bcdi.preprocessing"), "preprocessing_runner", raising=False)
    with pytest.raises(ValueError, match="unknown keys in the report section: 'n_start'"):
        bp.run_bcdi_preprocessing(_config(tmp_path, report={"n_start": 1}))
    with pytest.raises(ValueError, match="misspelt 'report' section"):
        bp.split_config({"scans": 1, "reports": TINY_PHASING})


def test_report_dir_of_several_scans_needs_scan_placeholder(tmp_path):
    import bcdi.utils.parser  # noqa: F401  (a test extra: missing fails the suite)
    config = {**_config(tmp_path, report={**TINY_PHASING, "out_dir": str(tmp_path / "rep")}), "scans": [1, 2]}
    with pytest.raises(ValueError, match=r"report\.out_dir .*rep' would hold the reports of 2 scans: put \{scan\}"):
        bp.run_bcdi_preprocessing(config)
    assert bp._report_dir(bp.check_report_settings({"out_dir": "r/S{scan}"}), tmp_path / "S4_pynx.npz", 4) == \
        Path("r/S4")
    assert not (tmp_path / "pynx").exists()                         # bcdi did not run


def test_workflow_phases_an_already_filled_pair(tmp_path):
    """pipeline.run_workflow(filled_pair=...) phases the given pair and refuses one not made from its data."""
    from bcdi_gapfill.integrations.bcdi import fill_bcdi_files
    from bcdi_gapfill.workflow.pipeline import run_workflow, simulate_bcdi_pair
    pair = simulate_bcdi_pair(tmp_path, scan=2, seed=1, size=(16, 24, 24), roi_origin=(246, 246), hot_pixels=1,
                              peak_counts=1e4, phase="zero")
    filled = fill_bcdi_files(pair.data_path, pair.mask_path, method="biharmonic")
    before = {path: _sha256(path) for path in filled.values()}
    cfg = {"data": str(pair.data_path), "mask": str(pair.mask_path), "gapfill": {"method": "biharmonic"},
           "phasing": {"algorithm": "ER**5", "n_starts": 1}}
    out = tmp_path / "report"
    done = run_workflow(cfg, out, filled_pair=filled)
    assert list(done["report"]["methods"]) == ["biharmonic", "free_pixels", "zero_fill"]
    assert {role: done["paths"][f"filled_{role}"] for role in filled} == filled
    assert not list(out.glob("*_gapfilled*"))                         # not filled a second time
    assert {path: _sha256(path) for path in filled.values()} == before
    assert done["report"]["settings"]["gap_voxels"] == int(pair.gap.sum())
    with pytest.raises(ValueError, match="made with method 'biharmonic', but gapfill.method is 'linear'"):
        run_workflow({**cfg, "gapfill": {"method": "linear"}}, tmp_path / "r2", filled_pair=filled)
    with pytest.raises(ValueError, match="filled_pair must map 'data', 'mask' and 'record'"):
        run_workflow(cfg, tmp_path / "r2", filled_pair={"data": filled["data"]})
    with pytest.raises(ValueError, match="not a simulate section"):
        run_workflow({"simulate": {"size": [16, 24, 24]}}, tmp_path / "r2", filled_pair=filled)
    other = simulate_bcdi_pair(tmp_path / "report", scan=2, seed=2, size=(16, 24, 24), roi_origin=(246, 246))
    with pytest.raises(ValueError, match=r"was not made from .*S2_pynx.*data_sha256 differs"):
        run_workflow({**cfg, "data": str(other.data_path), "mask": str(other.mask_path)}, tmp_path / "r2",
                     filled_pair=filled)
    assert not (tmp_path / "r2").exists()


def test_load_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such configuration file"):
        bp.load_config(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("scans: [1, 2\ngapfill: {")
    with pytest.raises(ValueError, match="cannot read .*bad.yml as YAML"):
        bp.load_config(bad)
    listing = tmp_path / "list.yml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="YAML mapping of settings, got list"):
        bp.load_config(listing)
    other = tmp_path / "config.json"
    other.write_text("{}")
    with pytest.raises(ValueError, match="got suffix '.json'"):
        bp.load_config(other)


def test_missing_bcdi_gives_install_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "bcdi.preprocessing.preprocessing_runner", None)
    # an earlier test may have imported it: `from bcdi.preprocessing import ...` reads the attribute first
    monkeypatch.delattr(sys.modules.get("bcdi.preprocessing"), "preprocessing_runner", raising=False)
    with pytest.raises(ImportError, match=r"needs bcdi 0\.3\.1.*pip install --no-deps"):
        bp.run_bcdi_preprocessing(_config(tmp_path))


def test_bcdi_parses_the_shipped_config_without_gapfill(monkeypatch, tmp_path):
    """The shipped YAML passes bcdi's own ConfigParser once gapfill: is split off."""
    import bcdi.utils.parser  # noqa: F401  (a test extra: missing fails the suite)
    shipped = Path(__file__).parents[1] / "workflows" / "bcdi_preprocess_gapfill.yml"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bcdi_gapfill_scan").mkdir()      # bcdi checks that root_folder exists
    config = bp.load_config(shipped)
    bcdi_parameters, settings = bp.split_config(config)
    config_parser, _, _, parameter_error = bp._import_bcdi()
    args = bp._parse_with_bcdi(config_parser, bcdi_parameters, {"scans": [1]})
    assert "gapfill" not in args and "report" not in args
    assert args["detector"] == "Maxipix" and args["beamline"] == "ID01BLISS"
    assert settings["method"] == "model" and settings["gap_from"] == "mask"
    report = bp.check_report_settings(config["report"], settings)
    assert report["baselines"] == ["free_pixels", "zero_fill"] and report["out_dir"] is None
    # bcdi's own rejection of a value comes back as a ValueError naming it
    with pytest.raises(ValueError, match="bcdi rejected the configuration.*normalize_flux"):
        bp.run_bcdi_preprocessing({**bcdi_parameters, "normalize_flux": "sometimes"})


def test_simulated_scan_writer_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="does not fit on the 516 x 516 Maxipix"):
        bp.write_simulated_id01bliss_scan(tmp_path / "s.h5", roi_origin=(500, 0))
    existing = tmp_path / "e.h5"
    existing.write_bytes(b"x")
    with pytest.raises(FileExistsError, match="exists"):
        bp.write_simulated_id01bliss_scan(existing)
    assert existing.read_bytes() == b"x"


# ----------------------------------------------------------------------- the real bcdi run
@pytest.fixture(scope="module")
def bcdi_run(tmp_path_factory):
    import bcdi.preprocessing.preprocessing_runner  # noqa: F401  (a test extra: missing fails the suite)
    import matplotlib
    matplotlib.use("Agg")
    root = tmp_path_factory.mktemp("bcdi_raw")
    raw = bp.write_simulated_id01bliss_scan(root / "scan.h5", shape=SHAPE, roi_origin=(ROI[0], ROI[2]),
                                            seed=SEED, peak_counts=1e5, sample_name="S", scan=3)
    raw_hash = _sha256(raw)
    config_path = root / "scan3.yml"
    config_path.write_text(yaml.safe_dump(_config(root, method="model", stride=16)))
    results = bp.run_bcdi_preprocessing(config_path)
    return root, raw, raw_hash, config_path, results


def test_bcdi_run_writes_bcdi_pair_and_gapfilled_pair(bcdi_run):
    from bcdi_gapfill.core.simulate import simulate_pattern
    root, raw, raw_hash, config_path, results = bcdi_run
    assert len(results) == 1 and results[0]["scan"] == 3
    result = results[0]
    # bcdi's own pair, in bcdi's save_dir, as bcdi names it
    assert result["bcdi_data"].parent == root / "pynx"
    assert result["bcdi_data"].name.startswith("S3_pynx") and result["bcdi_mask"].name.startswith("S3_maskpynx")
    bcdi_data = np.load(result["bcdi_data"])["data"]
    bcdi_mask = np.load(result["bcdi_mask"])["mask"]
    assert bcdi_data.shape == SHAPE
    # bcdi masked the Maxipix cross in every frame and zeroed it; elsewhere it kept the counts
    gap = detector_gap_mask("Maxipix", SHAPE[0], roi=ROI)
    assert gap.sum() == SHAPE[0] * (2 * 6 * 32 - 36)
    assert np.all(bcdi_mask[gap] == 1) and np.all(bcdi_data[gap] == 0)
    truth = np.rint(simulate_pattern(SHAPE, SEED, peak_counts=1e5).counts)
    measured = bcdi_mask == 0
    assert np.array_equal(bcdi_data[measured], truth[measured])

    # ours: next to bcdi's, gap filled, everything else bit-identical
    assert result["data"] == result["bcdi_data"].with_name(result["bcdi_data"].stem + "_gapfilled.npz")
    with np.load(result["data"]) as npz:
        assert npz.files == ["data"]
        filled = npz["data"]
    with np.load(result["mask"]) as npz:
        assert npz.files == ["mask"]
        new_mask = npz["mask"]
    assert filled.dtype == bcdi_data.dtype and new_mask.dtype == bcdi_mask.dtype
    assert np.all(np.isfinite(filled[gap])) and np.all(filled[gap] >= 0) and filled[gap].sum() > 0
    assert np.array_equal(filled[~gap], bcdi_data[~gap])
    assert np.all(new_mask[gap] == 0) and np.array_equal(new_mask[~gap], bcdi_mask[~gap])
    # nearer the truth than bcdi's zeros (the peak runs into the gap)
    err_fill = np.abs(np.log1p(filled[gap]) - np.log1p(truth[gap])).mean()
    err_zero = np.abs(np.log1p(truth[gap])).mean()
    assert err_fill < 0.5 * err_zero, (err_fill, err_zero)

    record = json.loads(result["record"].read_text())
    assert record["gap_voxels_filled"] == result["gap_voxels_filled"] == int(gap.sum())
    assert record["stage"] == "bcdi-preprocess" and record["gap_source"] == "mask"
    assert record["bcdi"]["bcdi_version"] == "0.3.1" and record["bcdi"]["roi"] == ROI
    assert record["bcdi"]["config"] == str(config_path.resolve())
    assert record["inputs"]["data_sha256"] == _sha256(result["bcdi_data"])
    assert record["inputs"]["mask_sha256"] == _sha256(result["bcdi_mask"])
    assert len(record["weights_sha256"]) == 64 and record["gapfill_settings"]["stride"] == 16
    # the raw detector file was only read
    assert _sha256(raw) == raw_hash


def test_bcdi_run_restores_bcdi_and_logging(bcdi_run):
    from bcdi.preprocessing import process_scan as ps
    from bcdi.preprocessing.analysis import create_analysis
    assert ps.create_analysis is create_analysis
    assert not any(isinstance(h, logging.FileHandler) for h in ps.logger.handlers)


@pytest.mark.slow
def test_rerun_detector_gap_refusal_and_commands(bcdi_run, capsys):
    """Second runs: gap from bcdi's detector object, refusal of existing outputs, CLI and script."""
    import subprocess

    from bcdi_gapfill.cli import commands as cli
    root, raw, raw_hash, config_path, results = bcdi_run
    first = results[0]
    ours_before = _sha256(first["data"])

    # gap from the Detector bcdi built (its ROI and binning), another suffix: same gap voxels
    det = bp.run_bcdi_preprocessing(config_path, gapfill={"gap_from": "detector", "method": "biharmonic",
                                                          "suffix": "_det", "stride": None})[0]
    record = json.loads(det["record"].read_text())
    assert record["gap_source"] == "detector" and record["detector"] == "Maxipix" and record["roi"] == ROI
    assert record["gap_voxels_filled"] == first["gap_voxels_filled"]

    # our earlier outputs exist: refused, and left as they were
    with pytest.raises(FileExistsError, match="set gapfill.overwrite: true"):
        bp.run_bcdi_preprocessing(config_path)
    assert _sha256(first["data"]) == ours_before

    # the bcdi-gapfill subcommand: the same refusal as a one-line error, then --overwrite
    assert cli.main(["bcdi-preprocess", str(config_path)]) == 2
    assert "bcdi-gapfill bcdi-preprocess: error: outputs exist" in capsys.readouterr().err
    assert cli.main(["bcdi-preprocess", str(config_path), "--overwrite"]) == 0
    assert "filled 11136 gap voxels" in capsys.readouterr().out

    # the workflow script, with bcdi's own command-line override of the scan number
    script = Path(__file__).parents[1] / "workflows" / "bcdi_preprocess_gapfill.py"
    done = subprocess.run([sys.executable, str(script), "--config_file", str(config_path), "--overwrite",
                           "--scans", "3"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "S3: bcdi wrote S3_pynx" in done.stdout
    assert _sha256(raw) == raw_hash


def test_raw_frames_to_report_in_one_run(tmp_path):
    """report: runs phasing with both baselines and the report on bcdi's pair and the filled pair."""
    import bcdi.preprocessing.preprocessing_runner  # noqa: F401  (a test extra: missing fails the suite)
    import matplotlib
    matplotlib.use("Agg")
    bp.write_simulated_id01bliss_scan(tmp_path / "scan.h5", shape=SHAPE, roi_origin=(ROI[0], ROI[2]), seed=SEED,
                                      peak_counts=1e5, sample_name="S", scan=3)
    config = _config(tmp_path, report=TINY_PHASING, method="model", stride=16)
    [result] = bp.run_bcdi_preprocessing(config)
    assert result["report_dir"] == tmp_path / "pynx" / "gapfill_report_S3"
    assert result["report_html"].is_file() and result["report_json"] == result["report_dir"] / "report.json"
    report = json.loads(result["report_json"].read_text())
    assert list(report["methods"]) == ["inpaint", "free_pixels", "zero_fill"]
    for name, entry in report["methods"].items():
        assert np.isfinite(entry["llk_measured"]) and entry["support_voxels"] > 0, name
        assert (result["report_dir"] / f"reconstruction_{name}.npz").is_file()
    settings = report["settings"]
    # phased: bcdi's own pair and the pair filled at bcdi's save, not a second fill
    assert settings["inputs"] == {"data": str(result["bcdi_data"]), "mask": str(result["bcdi_mask"])}
    assert settings["outputs"] == {role: str(result[role]) for role in ("data", "mask", "record")}
    assert not list(result["report_dir"].glob("*_gapfilled*"))
    assert settings["gap_voxels"] == result["gap_voxels_filled"] == SHAPE[0] * (2 * 6 * 32 - 36)
    assert report["methods"]["inpaint"]["fill_time_s"] > 0 and settings["gapfill_record"]["stage"] == "bcdi-preprocess"
    assert settings["algorithm"] == TINY_PHASING["algorithm"] and settings["n_starts"] == 1

    # a second run: the report outputs exist, refused before the fill (our pair stays as it was)
    filled_before = _sha256(result["data"])
    with pytest.raises(FileExistsError, match=r"report outputs exist: .*gapfill_report_S3.*gapfill\.overwrite"):
        bp.run_bcdi_preprocessing(config)
    assert _sha256(result["data"]) == filled_before


def test_command_reports_config_errors_in_one_line(tmp_path, capsys):
    from bcdi_gapfill.cli import commands as cli
    assert cli.main(["bcdi-preprocess", str(tmp_path / "missing.yml")]) == 2
    assert "bcdi-gapfill bcdi-preprocess: error: no such configuration file" in capsys.readouterr().err
    config = tmp_path / "scan.yml"
    config.write_text(yaml.safe_dump({"scans": 1, "gapfill": {"batchsize": 4}}))
    assert cli.main(["bcdi-preprocess", str(config)]) == 2
    assert "did you mean 'batch_size'?" in capsys.readouterr().err


def test_unsupported_bcdi_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from bcdi_gapfill.cli import bcdi_preprocess
    from bcdi_gapfill.cli import commands as cli

    def unsupported(*args, **kwargs):
        raise bcdi_preprocess.UnsupportedBcdiError("bcdi saved a mask before its data: this bcdi version is "
                                                   "not supported")
    monkeypatch.setattr(bcdi_preprocess, "run_bcdi_preprocessing", unsupported)
    config = tmp_path / "scan.yml"
    config.write_text(yaml.safe_dump({"scans": 1}))
    assert cli.main(["bcdi-preprocess", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bcdi-gapfill bcdi-preprocess: error: bcdi saved a mask") and "Traceback" not in err
    assert bcdi_preprocess.main(["--config_file", str(config)], prog="wf") == 2
    assert capsys.readouterr().err.startswith("wf: error: bcdi saved a mask")
