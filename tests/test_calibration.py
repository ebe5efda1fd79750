"""Tests of the uncertainty map and of its calibration (reliability table and plot)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bcdi_gapfill.fill import calibration as C
from bcdi_gapfill.core.geometry import synthetic_gap_mask
from bcdi_gapfill.fill.inpainting import inpaint
from bcdi_gapfill.nn.model import build_model

SMALL = {"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4], "prefill_iterations": 20}


def _model(random_head: bool):
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    if random_head:
        with torch.no_grad():
            model.head.weight.normal_(0, 0.05)
    return model


# ------------------------------------------------------------------------ uncertainty map
def test_uncertainty_zero_where_windows_and_flips_agree():
    """Many overlapping windows and four flipped views that all predict the same value."""
    data = np.full((40, 48, 56), 7.0, np.float32)
    gap = synthetic_gap_mask(data.shape, "vertical", 4)
    # A residual model with a zero head returns its biharmonic prefill, which for a constant
    # window is that constant in every window and every view.
    filled, unc = inpaint(data, gap, model=_model(False), stride=8, flips=True, return_uncertainty=True)
    assert np.all(unc == 0)
    np.testing.assert_allclose(filled[gap], 7.0, rtol=1e-6)


def test_uncertainty_positive_where_flips_disagree():
    data = np.full((32, 32, 32), 7.0, np.float32)
    gap = synthetic_gap_mask(data.shape, "vertical", 4)
    # One window, so only the flipped views can disagree: a network with asymmetric kernels
    # does not return the mirror image of its output for a mirrored (here identical) input.
    _, single = inpaint(data, gap, model=_model(True), return_uncertainty=True)
    _, unc = inpaint(data, gap, model=_model(True), flips=True, return_uncertainty=True)
    assert np.all(single == 0)
    # Where every view saturates at the top of the normalised range they agree again.
    assert np.all(unc[~gap] == 0) and (unc[gap] > 0).mean() > 0.5 and unc[gap].max() > 1e-3


def test_uncertainty_positive_where_windows_disagree():
    data = np.full((40, 48, 56), 7.0, np.float32)
    gap = synthetic_gap_mask(data.shape, "vertical", 4)
    # Overlapping windows see a voxel at different places of the window, where the network's
    # output differs (its zero padding): the windows disagree without any flip.
    _, unc = inpaint(data, gap, model=_model(True), stride=8, return_uncertainty=True)
    assert unc[gap].max() > 1e-3 and np.all(unc[~gap] == 0)


# ------------------------------------------------------------------------- reliability
def test_reliability_table_of_calibrated_errors():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.01, 1.0, 20000)
    errors = rng.normal(0, sigma)
    table = C.reliability_table(errors, sigma, n_bins=5)
    assert table["n_voxels"] == 20000 and table["n_bins"] == 5
    assert [b["count"] for b in table["bins"]] == [4000] * 5
    assert table["spearman"] > 0.4
    for b in table["bins"]:
        assert b["rms_error"] == pytest.approx(b["rms_uncertainty"], rel=0.05)
        assert b["mean_abs_error"] < b["rms_error"]
        assert b["uncertainty_min"] <= b["mean_uncertainty"] <= b["uncertainty_max"]
    means = [b["mean_uncertainty"] for b in table["bins"]]
    assert means == sorted(means)


def test_reliability_table_uninformative_and_tied_uncertainty():
    rng = np.random.default_rng(1)
    errors = rng.normal(0, 1, 1000)
    table = C.reliability_table(errors, np.zeros(1000), n_bins=4)
    assert table["spearman"] is None  # a constant uncertainty ranks nothing
    assert [b["count"] for b in table["bins"]] == [250] * 4
    # Random uncertainty: no correlation.
    assert abs(C.reliability_table(errors, rng.uniform(0, 1, 1000))["spearman"]) < 0.1
    # More bins than voxels: one voxel per bin.
    assert C.reliability_table([0.1, -0.2], [0.3, 0.1], n_bins=10)["n_bins"] == 2


@pytest.mark.parametrize("errors, unc, n_bins, match", [
    (np.zeros(3), np.zeros(4), 2, "does not match"),
    (np.zeros(0), np.zeros(0), 2, "empty"),
    (np.array([np.nan, 0]), np.zeros(2), 2, "finite"),
    (np.zeros(2), -np.ones(2), 2, ">= 0"),
    (np.zeros(2), np.zeros(2), 0, "n_bins"),
])
def test_reliability_table_bad_input(errors, unc, n_bins, match):
    with pytest.raises(ValueError, match=match):
        C.reliability_table(errors, unc, n_bins)


def test_log_errors():
    truth = np.array([[[0.0, 1.0, 3.0]]])
    filled = np.array([[[1.0, 1.0, 0.0]]])
    gap = np.array([[[True, False, True]]])
    np.testing.assert_allclose(C.log_errors(truth, filled, gap), [np.log(2), -np.log(4)])
    with pytest.raises(TypeError, match="boolean"):
        C.log_errors(truth, filled, gap.astype(int))
    with pytest.raises(ValueError, match=">= 0"):
        C.log_errors(-truth - 1, filled, gap)


def test_reliability_figure_draws_every_curve():
    rng = np.random.default_rng(2)
    sigma = rng.uniform(0, 1, 500)
    a = C.reliability_table(rng.normal(0, sigma), sigma, 5)
    b = C.reliability_table(rng.normal(0, 2 * sigma), sigma, 5)
    fig = C.reliability_figure({"one": a, "two": b})
    ax = fig.axes[0]
    assert len(ax.lines) == 6  # two curves per table and the two calibration lines
    assert len(C.reliability_figure(a).axes[0].lines) == 4


# --------------------------------------------------------------------------- calibrate
@pytest.fixture(scope="module")
def small_calibration():
    return C.calibrate((400_000, 400_001), size=48, width=3, model=_model(True), stride=16, n_bins=4)


def test_calibrate_on_held_out_simulations(small_calibration):
    res = small_calibration
    assert [row["seed"] for row in res["arrays"]] == [400_000, 400_001]
    n_gap = sum(row["n_gap"] for row in res["arrays"])
    for key in ("noisy", "expected"):
        assert res["pooled"][key]["n_voxels"] == n_gap
        assert len(res["pooled"][key]["bins"]) == 4
        for row in res["arrays"]:
            assert row[key]["n_voxels"] == row["n_gap"]
    json.dumps(res)  # JSON-serialisable as is


def test_calibrate_refuses_training_seeds():
    with pytest.raises(ValueError, match="not held out"):
        C.calibrate((5, 400_000), size=32)
    with pytest.raises(ValueError, match="empty"):
        C.calibrate((), size=32)


def test_write_calibration(small_calibration, tmp_path):
    from PIL import Image

    paths = C.write_calibration(small_calibration, tmp_path)
    assert json.loads(paths["json"].read_text())["settings"]["seeds"] == [400_000, 400_001]
    assert "Spearman" in paths["markdown"].read_text()
    image = Image.open(paths["png"])
    assert image.format == "PNG" and image.width > 300
    before = paths["json"].read_bytes()
    with pytest.raises(FileExistsError):
        C.write_calibration(small_calibration, tmp_path)
    assert paths["json"].read_bytes() == before
    C.write_calibration(small_calibration, tmp_path, overwrite=True)
    with pytest.raises(ValueError, match="calibrate"):
        C.write_calibration({"a": 1}, tmp_path / "x")
