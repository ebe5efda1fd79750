"""Tests of the real-space validation (paper section 2.6 / Supp. S7) and its HTML report."""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

from bcdi_gapfill.validation import core as V

CLASSICAL = ("biharmonic", "zero_fill", "linear_interp", "no_gap")
FAST_PR = "ER**20 * (Sup * HIO**20)**3"


def _inpaint_module():
    from bcdi_gapfill.fill import inpainting
    return inpainting


def _numbers(obj, path=""):
    """Every number of a JSON tree with its path (None values are reported as None)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif obj is None or (isinstance(obj, (int, float)) and not isinstance(obj, bool)):
        yield path, obj


@pytest.fixture(scope="module")
def oracle_report():
    """Oracle mode, classical methods, a 2-width sweep (48^3, a few seconds)."""
    return V.validate(seed=0, size=48, gap="cross:5", mode="oracle", widths=[3, 5],
                      methods=CLASSICAL, progress=False)


@pytest.fixture(scope="module")
def pr_report():
    """Both modes end to end on 48^3 with a short phase retrieval, free pixels included."""
    return V.validate(seed=2, size=48, gap="cross:3", gap_offset=4, mode="both", algorithm=FAST_PR,
                      n_starts=2, seed_pr=5,
                      methods=("biharmonic", "free_pixels", "zero_fill", "no_gap"), progress=False)


@pytest.fixture(scope="module")
def written(pr_report, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    paths = V.write_report(pr_report, out)
    return out, paths


# ------------------------------------------------------------------------------ oracle
@pytest.mark.parametrize("offset", [0, 6])
def test_oracle_classical_at_width_9(offset):
    rep = V.validate(seed=0, size=64, gap="cross:9", gap_offset=offset, mode="oracle",
                     methods=CLASSICAL, progress=False)
    m = rep["methods"]
    # Noisy reference: only the Poisson noise of the complete pattern remains.
    assert m["no_gap"]["phase_std"] < 0.01
    assert m["no_gap"]["strain_rmse"] < 5e-5
    assert m["no_gap"]["pcc_gap"] == pytest.approx(1.0)
    # Zero fill is worse than the biharmonic fill on every real-space metric.
    for key in ("strain_rmse", "phase_std"):
        assert m["zero_fill"][key] > 2 * m["biharmonic"][key], key
    assert m["zero_fill"]["spurious_modulus"] > 1.3 * m["biharmonic"]["spurious_modulus"]
    assert m["zero_fill"]["overlap"] < m["biharmonic"]["overlap"]
    assert m["zero_fill"]["pcc_gap"] is None  # a constant fill has no correlation
    assert 0.8 < m["biharmonic"]["pcc_gap"] <= 1
    assert m["zero_fill"]["gap_intensity_ratio"] == 0


def test_oracle_noiseless_no_gap_is_exact():
    rep = V.validate(seed=3, size=32, gap="vertical:4", mode="oracle", counts=None,
                     methods=("zero_fill", "no_gap"), progress=False)
    ref = rep["methods"]["no_gap"]
    assert ref["phase_std"] < 1e-4
    assert ref["strain_rmse"] < 1e-6
    assert ref["overlap"] > 0.9999
    assert rep["settings"]["noiseless"] is True
    assert rep["settings"]["peak_photons"] == V.NOISELESS_PEAK
    assert rep["methods"]["zero_fill"]["phase_std"] > 10 * ref["phase_std"]


def test_oracle_skips_free_pixels_and_says_why():
    rep = V.validate(seed=0, size=32, gap="cross:3", mode="oracle", methods=("free_pixels", "no_gap"),
                     progress=False)
    assert "free_pixels" not in rep["methods"]
    assert "zero_fill" in rep["settings"]["skipped_methods"]["oracle"]["free_pixels"]


def test_user_object_and_detector_gap():
    n = 48
    z, y, x = np.meshgrid(*[np.arange(n) - n // 2] * 3, indexing="ij")
    obj = ((z ** 2 + y ** 2 + x ** 2) < 10 ** 2).astype(np.complex64)
    rep = V.validate(obj, seed=1, gap="Maxipix", mode="oracle", methods=("biharmonic", "no_gap"),
                     progress=False)
    s = rep["settings"]
    assert s["source"] == "user object" and s["shape"] == [n, n, n]
    assert s["gap"] == "Maxipix" and s["gap_voxels"] > 0
    assert s["detector_roi"] == [234, 282, 234, 282]
    assert rep["methods"]["no_gap"]["phase_std"] < 0.01


def test_gap_offset_moves_the_bands():
    from bcdi_gapfill.validation.core import _gap_mask

    centred, _ = _gap_mask("cross:4", (8, 32, 32))
    moved, _ = _gap_mask("cross:4", (8, 32, 32), (3, -2))
    assert np.flatnonzero(centred[0].all(axis=0)).tolist() == [14, 15, 16, 17]
    assert np.flatnonzero(moved[0].all(axis=0)).tolist() == [12, 13, 14, 15]  # columns
    assert np.flatnonzero(moved[0].all(axis=1)).tolist() == [17, 18, 19, 20]  # rows


@pytest.mark.parametrize("kwargs, err", [
    ({"mode": "fast"}, ValueError),
    ({"methods": ("magic",)}, ValueError),
    ({"methods": ()}, ValueError),
    ({"counts": -5}, ValueError),
    ({"gap": "Maxipix", "widths": [3, 5]}, ValueError),
    ({"gap": "cross:3", "widths": [3, 3]}, ValueError),
    ({"gap": 12}, TypeError),
    ({"n_starts": 0, "mode": "pr"}, ValueError),
])
def test_bad_arguments(kwargs, err):
    args = {"seed": 0, "size": 32, "progress": False, "methods": ("no_gap",), **kwargs}
    with pytest.raises(err):
        V.validate(**args)


def test_sweep_schema(oracle_report):
    sw = oracle_report["sweep"]
    assert sw["widths"] == [3, 5] and sw["kind"] == "cross" and sw["mode"] == "oracle"
    assert set(sw["methods"]) == set(CLASSICAL)
    for name, vals in sw["methods"].items():
        for key in ("strain_rmse", "mean_strain", "strain_std", "phase_std", "spurious_modulus"):
            assert len(vals[key]) == 2 and all(math.isfinite(v) for v in vals[key]), (name, key)
    # the main gap (cross:5) is one of the widths: its sweep entry is the main result
    main = oracle_report["methods"]["biharmonic"]["strain_rmse"]
    assert sw["methods"]["biharmonic"]["strain_rmse"][1] == main
    # wider zero-filled gaps hurt more
    assert sw["methods"]["zero_fill"]["phase_std"][1] > sw["methods"]["zero_fill"]["phase_std"][0]


# ---------------------------------------------------------------------------------- pr
def test_pr_end_to_end(pr_report):
    assert pr_report["primary_mode"] == "pr" and set(pr_report["results"]) == {"oracle", "pr"}
    pr = pr_report["methods"]
    assert set(pr) == {"biharmonic", "free_pixels", "zero_fill", "no_gap"}
    for name, m in pr.items():
        for key in V.METRIC_KEYS + V.PR_METRIC_KEYS:
            if name == "zero_fill" and key == "pcc_gap":
                continue
            assert m[key] is not None and math.isfinite(m[key]), (name, key)
        assert len(m["llk_starts"]) == 2  # same number of starts for every method
    # free pixels: its in-gap intensity is the reconstruction's
    assert pr["free_pixels"]["pcc_gap"] == pr["free_pixels"]["pcc_gap_reconstructed"]
    # the complete pattern phases well even with this short algorithm
    assert pr["no_gap"]["overlap"] > 0.9
    s = pr_report["settings"]
    assert s["algorithm"] == FAST_PR and s["n_starts"] == 2 and s["seed_pr"] == 5
    assert "free_pixels" not in pr_report["results"]["oracle"]


def test_pr_is_reproducible():
    kw = dict(seed=4, size=32, gap="vertical:3", mode="pr", algorithm="ER**5 * HIO**10", n_starts=1,
              methods=("biharmonic",), progress=False)
    a, b = V.validate(**kw), V.validate(**kw)
    assert a["methods"]["biharmonic"]["llk"] == b["methods"]["biharmonic"]["llk"]
    assert a["methods"]["biharmonic"]["strain_rmse"] == b["methods"]["biharmonic"]["strain_rmse"]


# ----------------------------------------------------------------------------- inpaint
def test_inpaint_method_with_a_given_model():
    _inpaint_module()
    from bcdi_gapfill.nn.model import build_model

    net = build_model("gapfill")  # untrained: this checks the plumbing, not the accuracy
    rep = V.validate(seed=1, size=32, gap="cross:3", mode="oracle", methods=("inpaint", "no_gap"),
                     model=net, inpaint_options={"stride": 16}, progress=False)
    m = rep["methods"]["inpaint"]
    assert all(math.isfinite(m[k]) for k in ("strain_rmse", "phase_std", "pcc_gap"))
    assert len(rep["settings"]["model"]["state_dict_sha256"]) == 64


def test_inpaint_released_in_phase_retrieval():
    _inpaint_module()
    from bcdi_gapfill.nn.model import build_model

    net = build_model("gapfill")  # untrained: a poor fill, which the release must not force
    rep = V.validate(seed=2, size=32, gap="cross:3", gap_offset=4, mode="both", algorithm=FAST_PR, n_starts=2,
                     methods=("inpaint", "inpaint+release", "free_pixels"), model=net,
                     inpaint_options={"stride": 16}, progress=False)
    pr = rep["results"]["pr"]
    assert "inpaint+release" not in rep["results"]["oracle"]
    assert "inpaint's" in rep["settings"]["skipped_methods"]["oracle"]["inpaint+release"]
    released = pr["inpaint+release"]
    assert released["pcc_gap"] == released["pcc_gap_reconstructed"]  # the gap it ends with
    # Ranked on the measured voxels only: its LLK is the measured-voxel LLK, as for free pixels.
    assert released["llk"] == pytest.approx(released["llk_measured"], rel=1e-4)
    assert pr["free_pixels"]["llk"] == pytest.approx(pr["free_pixels"]["llk_measured"], rel=1e-4)
    assert all(math.isfinite(released[k]) for k in ("strain_rmse", "phase_std", "overlap"))


def test_inpaint_skipped_only_when_defaulted(monkeypatch):
    inp = _inpaint_module()

    def missing():
        raise FileNotFoundError("model weights not found: test")

    monkeypatch.setattr(inp, "default_model_info", missing)
    with pytest.warns(RuntimeWarning, match="inpaint method was skipped"):
        rep = V.validate(seed=0, size=32, gap="cross:3", mode="oracle", progress=False)
    assert "inpaint" not in rep["methods"] and "inpaint" in rep["settings"]["skipped_methods"]
    assert rep["settings"]["model"] is None
    with pytest.raises(FileNotFoundError):
        V.validate(seed=0, size=32, gap="cross:3", methods=("inpaint",), mode="oracle", progress=False)


def test_model_info_recorded_when_available(monkeypatch):
    inp = _inpaint_module()
    monkeypatch.setattr(inp, "default_model_info", lambda: {"sha256": "ab" * 32, "weights": "w.pt"})
    monkeypatch.setattr(inp, "inpaint", lambda data, gap, **kw: V._fill("biharmonic", data, gap, None))
    rep = V.validate(seed=0, size=32, gap="cross:3", methods=("inpaint",), mode="oracle", progress=False)
    assert rep["settings"]["model"]["sha256"] == "ab" * 32
    assert math.isfinite(rep["methods"]["inpaint"]["phase_std"])


def test_default_is_phase_retrieval_with_the_baselines(capsys):
    rep = V.validate(seed=0, size=32, gap="cross:3", algorithm=FAST_PR, n_starts=1)
    assert rep["mode"] == "pr" and rep["primary_mode"] == "pr"
    for name in ("free_pixels", "zero_fill", "inpaint", "inpaint+release", "biharmonic", "no_gap"):
        assert math.isfinite(rep["methods"][name]["strain_rmse"]), name
    assert re.search(r"validate: 7 phase retrievals of 1 starts on 32x32x32, expected about \d+ s",
                     capsys.readouterr().err)


def test_cli_validate_default_holds_free_pixels_and_zero_fill(tmp_path, capsys):
    from bcdi_gapfill.cli.commands import main

    out = tmp_path / "rep"
    assert main(["validate", "--simulate", "1", "--size", "32", "--starts", "1", "--gap", "cross:3",
                 "--methods", "free_pixels,zero_fill,biharmonic", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "pr"
    assert {"free_pixels", "zero_fill", "biharmonic"} <= set(report["methods"])
    assert "expected about" in capsys.readouterr().err


# ------------------------------------------------------------------------------ report
def test_report_json_schema(written, pr_report):
    out, paths = written
    assert paths == {"json": out / "report.json", "html": out / "report.html"}
    data = json.loads((out / "report.json").read_text())
    assert data == json.loads(json.dumps(pr_report))  # the dict itself is the JSON
    assert set(data) >= {"methods", "settings", "results", "mode", "primary_mode", "schema"}
    for name, m in data["methods"].items():
        assert {"strain_rmse", "phase_std", "mean_strain", "spurious_modulus", "pcc_gap", "llk"} <= set(m)
    for path, value in _numbers(data):
        if value is None:
            # documented nulls: undefined PCC of the zero fill, absent settings
            assert path.endswith("zero_fill/pcc_gap") or path.startswith("/settings/"), path
        else:
            assert math.isfinite(value), path
    s = data["settings"]
    for key in ("versions", "seed", "seed_pr", "gap", "counts", "algorithm", "n_starts", "noise_seed",
                "shape", "voxel_size_m", "q_vector_inv_m"):
        assert key in s, key
    assert {"bcdi_gapfill", "numpy", "torch"} <= set(s["versions"])


def test_report_with_sweep_json(oracle_report, tmp_path):
    V.write_report(oracle_report, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["sweep"]["widths"] == [3, 5]
    assert set(data["sweep"]["methods"]["biharmonic"]) >= {"strain_rmse", "mean_strain"}
    html = (tmp_path / "report.html").read_text()
    assert "Gap-width sweep" in html


def test_report_refuses_existing_and_is_atomic(pr_report, tmp_path):
    out = tmp_path / "new" / "dir"
    V.write_report(pr_report, out)  # creates the directory
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="report.html, report.json"):
        V.write_report(pr_report, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched, no temp files
    # one existing file is enough to refuse, and nothing else gets written
    (out / "report.json").unlink()
    with pytest.raises(FileExistsError):
        V.write_report(pr_report, out)
    assert not (out / "report.json").exists()
    paths = V.write_report(pr_report, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]
    assert paths["json"].stat().st_size > 0


def test_report_from_loaded_json_renders_tables_only(written, tmp_path):
    out, _ = written
    data = json.loads((out / "report.json").read_text())
    V.write_report(data, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "Metrics &mdash; pr mode" in page and "<img" not in page


def test_report_rejects_non_reports(tmp_path):
    with pytest.raises(ValueError):
        V.write_report({"a": 1}, tmp_path)


def _embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def test_embedded_images_decode(written):
    from PIL import Image

    out, _ = written
    page = (out / "report.html").read_text()
    pngs = _embedded_pngs(page)
    # real space (oracle, pr), reciprocal space (oracle, pr)
    assert len(pngs) == page.count("<img") == 4
    for raw in pngs:
        im = Image.open(io.BytesIO(raw))
        im.load()
        assert im.format == "PNG" and im.width > 300 and im.height > 200
        assert np.asarray(im.convert("L")).std() > 10  # not a blank canvas
    assert "http://" not in page and "https://" not in page  # self-contained


# --------------------------------------------------------------------------- chromium
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def _chromium_run(binary: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(written, tmp_path):
    from PIL import Image

    binary = _chromium()
    if binary is None:
        # CI installs Debian's chromium (.ci/run): there a missing browser is a failure.
        message = "no chromium binary found (Debian/Ubuntu: apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run this test")
        pytest.skip(message)
    out, _ = written
    url = (out / "report.html").resolve().as_uri()
    shot = tmp_path / "shot.png"
    _chromium_run(binary, f"--screenshot={shot}", "--window-size=1200,2000", url)
    assert shot.is_file() and shot.stat().st_size > 10_000
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1200)
    grey = pixels.mean(axis=2)
    assert grey.std() > 20  # text, tables and figures, not a blank page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # colour maps were drawn
    dom = _chromium_run(binary, "--dump-dom", url).stdout
    assert "Real-space validation of detector-gap treatments" in dom
    assert dom.count("<img") == 4
    assert dom.count("<tr") >= 10


# ------------------------------------------------- uncertainty, hybrid and band-limit refinement
def _random_head_model():
    import torch

    from bcdi_gapfill.nn.model import build_model

    torch.manual_seed(0)
    net = build_model({"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4], "prefill_iterations": 20}).eval()
    with torch.no_grad():
        net.head.weight.normal_(0, 0.05)  # a non-zero correction, so views and windows disagree
    return net


@pytest.fixture(scope="module")
def hybrid_report():
    """pr mode with hybrid and the band-limit methods, a small random-head model (40^3)."""
    return V.validate(seed=2, size=40, gap="cross:3", gap_offset=2, mode="pr", algorithm=FAST_PR,
                      n_starts=1, model=_random_head_model(), inpaint_options={"stride": 16},
                      hybrid_quantile=0.25, refine_options={"n_iter": 20},
                      methods=("inpaint", "hybrid", "model+gp", "biharmonic+gp", "gp", "no_gap"), progress=False)


def test_hybrid_frees_the_least_confident_voxels(hybrid_report):
    rep = hybrid_report
    n_gap = rep["settings"]["gap_voxels"]
    pr = rep["results"]["pr"]
    assert pr["hybrid"]["freed_voxels"] == round(0.25 * n_gap)
    for key in ("strain_rmse", "phase_std", "pcc_gap", "llk_measured"):
        assert math.isfinite(pr["hybrid"][key]), key
    assert rep["settings"]["hybrid_quantile"] == 0.25
    assert rep["settings"]["model"]["state_dict_sha256"]


def test_hybrid_has_no_oracle_counterpart():
    rep = V.validate(seed=1, size=32, gap="cross:3", mode="oracle", methods=("hybrid", "no_gap"),
                     model=_random_head_model(), inpaint_options={"stride": 16}, progress=False)
    assert "hybrid" not in rep["methods"]
    assert "free" in rep["settings"]["skipped_methods"]["oracle"]["hybrid"]
    assert rep["uncertainty"]["reliability"]["n_voxels"] == rep["settings"]["gap_voxels"]


def test_least_confident_selection():
    unc = np.zeros((2, 3, 4), np.float32)
    gap = np.zeros(unc.shape, bool)
    gap[:, :, 1] = True  # 6 gap voxels
    unc[0, 0, 1], unc[1, 2, 1], unc[0, 0, 0] = 3.0, 2.0, 9.0  # the last is not in the gap
    free = V._least_confident(unc, gap, 1 / 3)
    assert free.sum() == 2 and free[0, 0, 1] and free[1, 2, 1]
    assert not V._least_confident(unc, gap, 0.0).any()
    assert np.array_equal(V._least_confident(unc, gap, 1.0), gap)


def test_uncertainty_reliability_in_the_report(hybrid_report, tmp_path):
    rel = hybrid_report["uncertainty"]["reliability"]
    assert rel["n_voxels"] == hybrid_report["settings"]["gap_voxels"]
    assert len(rel["bins"]) == 10 and sum(b["count"] for b in rel["bins"]) == rel["n_voxels"]
    assert rel["spearman"] is None or -1 <= rel["spearman"] <= 1
    paths = V.write_report(hybrid_report, tmp_path)
    page = paths["html"].read_text()
    assert "Uncertainty of the model and its reliability" in page and "Uncertainty map in the gap" in page
    pngs = _embedded_pngs(page)
    assert len(pngs) == page.count("<img") == 4  # real, reciprocal, reliability, uncertainty map
    # A report loaded back from JSON still draws the reliability plot (it is in the data).
    again = tmp_path / "again"
    V.write_report(json.loads(paths["json"].read_text()), again)
    assert (again / "report.html").read_text().count("<img") == 1


def test_band_limit_methods_run_in_both_modes(hybrid_report):
    res = hybrid_report["results"]["pr"]
    for name in ("model+gp", "biharmonic+gp", "gp"):
        assert math.isfinite(res[name]["strain_rmse"]) and math.isfinite(res[name]["pcc_gap"]), name
    # the model's fill is shared: the refinement's time includes it
    assert res["model+gp"]["fill_time_s"] >= res["inpaint"]["fill_time_s"]
    assert hybrid_report["settings"]["refine_options"] == {"n_iter": 20}


def test_band_limit_fill_keeps_measured_voxels():
    ctx = V._Context(np.ones((4, 4, 4), complex), None, None, None, None, None, None, 1, 0, None, None, None,
                     0.3, refine_options={"n_iter": 5})
    rng = np.random.default_rng(0)
    noisy = rng.poisson(50, (32, 32, 32)).astype(np.float32)
    gap, _ = V._gap_mask("cross:3", noisy.shape)
    for name in ("biharmonic+gp", "gp"):
        out = V._fill(name, noisy, gap, ctx)
        assert np.array_equal(out[~gap], noisy[~gap]) and (out >= 0).all()


@pytest.mark.parametrize("kwargs, err", [
    ({"hybrid_quantile": 1.5}, ValueError),
    ({"hybrid_quantile": -0.1}, ValueError),
    ({"hybrid_quantile": True}, ValueError),
    ({"refine_options": [("n_iter", 3)]}, TypeError),
])
def test_bad_hybrid_and_refine_arguments(kwargs, err):
    with pytest.raises(err):
        V.validate(seed=0, size=32, progress=False, methods=("no_gap",), **kwargs)


def test_verdict_names_the_winner_and_its_margin():
    report = {"primary_mode": "pr", "methods": {
        "inpaint": {"strain_rmse": 6e-4}, "free_pixels": {"strain_rmse": 2e-4}, "zero_fill": {"strain_rmse": None},
        "no_gap": {"strain_rmse": 1e-4}}}
    assert V.verdict(report) == ("free_pixels gave the lowest strain RMSE (0.0002), 3x below the next, inpaint "
                                 "(0.0006); without the gap: 0.0001 (phase retrieval).")
    assert V.verdict({"primary_mode": "oracle", "methods": {"no_gap": {"strain_rmse": 1e-4}}}) == \
        "No treatment gave a finite strain error."


def test_report_opens_with_the_verdict(written):
    out, _ = written
    report = json.loads((out / "report.json").read_text())
    page = (out / "report.html").read_text()
    assert report["verdict"] and "gave the lowest strain RMSE" in report["verdict"]
    assert page.index("class='verdict'") < page.index("<h2>")
    assert html.escape(report["verdict"]) in page


def test_selfcheck_beside_the_truth(tmp_path):
    rep = V.validate(seed=3, size=32, gap="cross:3", gap_offset=4, algorithm=FAST_PR, n_starts=1,
                     methods=("free_pixels", "zero_fill", "linear_interp", "no_gap"), selfcheck=True,
                     progress=False)
    check = rep["selfcheck"]
    assert set(check["scores"]) == {"free_pixels", "zero_fill"}        # the treatments it knows
    assert check["truth_best"] in ("free_pixels", "zero_fill")
    assert check["agrees_with_truth"] == (check["recommended"] == check["truth_best"])
    paths = V.write_report(rep, tmp_path / "r")
    page = paths["html"].read_text()
    assert "Self-check (no truth used)" in page and "the truth's pick" in page
    with pytest.raises(ValueError, match="selfcheck needs at least two"):
        V.validate(seed=3, size=32, gap="cross:3", algorithm=FAST_PR, n_starts=1,
                   methods=("free_pixels", "no_gap"), selfcheck=True, progress=False)
