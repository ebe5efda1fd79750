"""Fine-tuning on the measured array (bcdi_gapfill.nn.finetune): tiny arrays, a few steps."""
import json
import warnings

import numpy as np
import pytest
import torch

from bcdi_gapfill.nn import finetune as ft
from bcdi_gapfill.fill.inpainting import DEFAULT_WEIGHTS, inpaint, load_model
from bcdi_gapfill.core.io import file_sha256

# (frames, rows, columns): the columns hold two 32-voxel halves (training, held-out), and a
# 3-pixel vertical gap near their end leaves room for portions in both.
SHAPE = (32, 40, 96)
GAP_COLUMNS = slice(90, 93)


@pytest.fixture(scope="module")
def measured():
    from bcdi_gapfill.core.simulate import simulate_pattern
    pattern = simulate_pattern(SHAPE, 5, peak_counts=1e6)
    gap = np.zeros(SHAPE, bool)
    gap[:, :, GAP_COLUMNS] = True
    return np.where(gap, 0, pattern.counts).astype(np.float32), gap


@pytest.fixture(scope="module")
def tuned(measured):
    data, gap = measured
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return ft.finetune(data, gap, n_portions=4, steps=2, batch_size=2, holdout=4, revert_if_worse=False)


def _params(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("loss", ["poisson", "paper"])
def test_finetune_lowers_the_loss_on_the_arrays_own_portions(measured, loss):
    data, gap = measured
    result = ft.finetune(data, gap, n_portions=4, steps=4, batch_size=2, lr=1e-4, holdout=0, loss=loss)
    assert result.steps == 4 and len(result.losses) == 4 and result.n_portions == 4
    assert result.settings["loss"] == loss
    assert result.widths == (3,)  # the real gap's width
    assert result.train_loss_after < result.train_loss_before
    assert result.improved is None and not result.reverted and np.isnan(result.pcc_before)
    assert "whether it helped was not measured" in result.summary()


def test_holdout_scores_before_and_after(tuned):
    assert tuned.n_holdout == 4 and tuned.n_portions == 4 and tuned.steps == 2
    for value in (tuned.pcc_before, tuned.pcc_after, tuned.holdout_loss_before, tuned.holdout_loss_after):
        assert np.isfinite(value)
    assert tuned.pcc_gain == pytest.approx(tuned.pcc_after - tuned.pcc_before, abs=1e-12)
    assert np.isfinite(tuned.pcc_gain_se) and tuned.pcc_gain_se >= 0
    assert tuned.improved == (tuned.pcc_gain > 0)
    assert "held-out in-gap PCC" in tuned.summary()
    assert not tuned.model.training and not any(p.requires_grad for p in tuned.model.parameters())


def test_no_held_out_voxel_is_trained_on(measured, monkeypatch):
    """Training portions lie in the first half of the longest axis, held-out ones in the second."""
    data, gap = measured
    cuts = []
    real = ft._cut_portions

    def spy(counts, exclude, n, rng, periphery_power):
        cuts.append(exclude.copy())
        return real(counts, exclude, n, rng, periphery_power)

    monkeypatch.setattr(ft, "_cut_portions", spy)
    ft.finetune(data, gap, n_portions=4, steps=1, batch_size=2, holdout=2, revert_if_worse=False)
    train_exclude, holdout_exclude = cuts
    assert train_exclude[:, :, 48:].all() and holdout_exclude[:, :, :48].all()
    assert train_exclude[gap].all() and holdout_exclude[gap].all()
    assert holdout_exclude[:, :, 88:95].all()  # the gap's 2-pixel margin


def test_portions_with_counts_are_the_same_draws_plus_counts_and_scale(measured):
    """Same gaps, flips and swaps as without counts, plus the counts and the scale."""
    from bcdi_gapfill.nn.dataset import MIN_SCALE, GapPortionDataset
    data, gap = measured
    bank = ft._cut_portions(data, gap, 5, np.random.default_rng(0), -0.5)
    for options in ({"augment": True}, {"augment": False, "fixed": True}):
        plain = GapPortionDataset(bank, (3, 6), seed=4, **options)
        scaled = GapPortionDataset(bank, (3, 6), seed=4, with_counts=True, **options)
        for i in range(len(bank)):
            inputs, target, gap_i, counts, scale = scaled[i]
            assert all(torch.equal(a, b) for a, b in zip(plain[i], (inputs, target, gap_i)))
            measured_log = torch.log1p(counts)[~gap_i]
            assert float(scale) == pytest.approx(max(float(measured_log.max()), MIN_SCALE), rel=1e-6)
            assert torch.allclose(torch.log1p(counts)[~gap_i] / scale, inputs[0][~gap_i[0]], atol=1e-5)


def test_poisson_deviance_vanishes_at_the_counts_and_has_finite_gradients():
    counts = torch.tensor([0.0, 1.0, 7.0, 1e4]).reshape(1, 1, 1, 1, 4)
    gap = torch.ones_like(counts, dtype=torch.bool)
    scale = torch.tensor([float(np.log1p(1e4))])
    exact = (torch.log1p(counts) / scale).requires_grad_(True)
    assert float(ft._poisson_deviance(exact, counts, gap, scale).detach()) == pytest.approx(0.0, abs=1e-2)  # float32
    off = (exact.detach() * 0.9).requires_grad_(True)
    value = ft._poisson_deviance(off, counts, gap, scale)
    value.backward()
    assert float(value) > 1.0 and torch.isfinite(off.grad).all()


def test_blocked_corners_match_a_direct_scan():
    rng = np.random.default_rng(3)
    exclude = np.zeros((40, 44, 48), bool)
    exclude[tuple(rng.integers(0, n, 3) for n in exclude.shape)] = True
    direct = np.array([[[exclude[f:f + 32, r:r + 32, c:c + 32].any() for c in range(17)] for r in range(13)]
                       for f in range(9)])
    blocked = ft._blocked_corners(exclude, 32)
    assert 0 < blocked.mean() < 1
    np.testing.assert_array_equal(blocked, direct)


def test_time_budget_stops_training(measured):
    data, gap = measured
    result = ft.finetune(data, gap, n_portions=4, steps=50, batch_size=2, holdout=0, time_budget_s=1e-6)
    assert result.steps == 0 and result.losses == []


def test_shipped_weights_and_cached_model_unchanged(measured, tmp_path):
    data, gap = measured
    sha_before = file_sha256(DEFAULT_WEIGHTS)
    card_before = DEFAULT_WEIGHTS.with_suffix(".json").read_bytes()
    cached, _ = load_model(None, "cpu")
    params_before = _params(cached)
    result = ft.finetune(data, gap, model=None, n_portions=4, steps=2, batch_size=2, lr=1e-3, holdout=0)
    ft.save_finetuned(result, tmp_path / "tuned.pt")
    assert file_sha256(DEFAULT_WEIGHTS) == sha_before
    assert DEFAULT_WEIGHTS.with_suffix(".json").read_bytes() == card_before
    assert all(torch.equal(v, params_before[k]) for k, v in load_model(None, "cpu")[0].state_dict().items())
    changed = [k for k, v in result.model.state_dict().items() if not torch.equal(v, params_before[k])]
    assert changed  # the copy was trained
    assert not cached.training  # the cached model was not left in training mode


def test_not_improved_returns_the_original_model(measured):
    data, gap = measured
    base, _ = load_model(None, "cpu")
    with pytest.warns(RuntimeWarning, match="did not raise the held-out in-gap PCC"):
        # A learning rate this large wrecks the weights: the held-out PCC falls.
        result = ft.finetune(data, gap, n_portions=4, steps=3, batch_size=2, lr=1.0, holdout=2)
    assert result.improved is False and result.reverted
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in result.model.state_dict().items())
    assert result.model is not base  # a copy, never the cached instance
    assert "the original model is returned" in result.summary()


def test_saved_weights_load_and_inpaint(tuned, measured, tmp_path):
    data, gap = measured
    path = tmp_path / "scan_finetuned.pt"
    card = ft.save_finetuned(tuned, path, extra={"data": "scan.npz"})
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk["sha256"] == file_sha256(path) == card["sha256"]
    assert on_disk["finetuned"] and on_disk["data"] == "scan.npz"
    assert on_disk["finetune"]["base_sha256"] == file_sha256(DEFAULT_WEIGHTS)
    shipped_card = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert on_disk["max_gap_width"] == shipped_card["max_gap_width"]
    net, _ = load_model(path, "cpu")
    assert all(torch.equal(v, tuned.model.state_dict()[k]) for k, v in net.state_dict().items())
    filled = inpaint(data, gap, model=path, num_threads=1)
    np.testing.assert_array_equal(filled[~gap], data[~gap])
    assert np.isfinite(filled).all() and (filled >= 0).all()


def test_outputs_refuse_to_overwrite(tuned, tmp_path):
    path = tmp_path / "scan_finetuned.pt"
    ft.save_finetuned(tuned, path)
    weights, card = path.read_bytes(), path.with_suffix(".json").read_text()
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        ft.save_finetuned(tuned, path)
    assert path.read_bytes() == weights and path.with_suffix(".json").read_text() == card
    path.unlink()  # only the card is left: still refused, and nothing is written
    with pytest.raises(FileExistsError, match="scan_finetuned.json exists"):
        ft.save_finetuned(tuned, path)
    assert not path.exists()
    ft.save_finetuned(tuned, path, overwrite=True)
    assert path.is_file()
    with pytest.raises(ValueError, match="the shipped model"):
        ft.save_finetuned(tuned, DEFAULT_WEIGHTS, overwrite=True)
    data_file = tmp_path / "scan.pt"
    data_file.write_bytes(b"input")
    with pytest.raises(ValueError, match="a protected input"):
        ft.save_finetuned(tuned, data_file, overwrite=True, protect=[data_file])
    assert data_file.read_bytes() == b"input"
    with pytest.raises(ValueError, match="as a .pt file"):
        ft.save_finetuned(tuned, tmp_path / "w.npz")


def test_weights_path_next_to_the_data(tmp_path):
    expected = tmp_path / "S12_pynx_norm_finetuned.pt"
    assert ft.finetuned_weights_path(tmp_path / "S12_pynx_norm.npz") == expected


def test_inpaint_finetune_keyword(measured):
    data, gap = measured
    filled = inpaint(data, gap, finetune={"n_portions": 4, "steps": 1, "batch_size": 2, "holdout": 0},
                     num_threads=1)
    np.testing.assert_array_equal(filled[~gap], data[~gap])
    assert np.isfinite(filled[gap]).all()
    with pytest.raises(ValueError, match="finetune applies to method='model'"):
        inpaint(data, gap, method="biharmonic", finetune=True)
    with pytest.raises(TypeError, match="unknown finetune option 'bogus'"):
        inpaint(data, gap, finetune={"bogus": 1})
    with pytest.raises(TypeError, match="finetune must be a bool or a dict"):
        inpaint(data, gap, finetune="yes")


def test_bad_input_is_named(measured):
    data, gap = measured
    speckle = np.zeros(SHAPE, bool)
    speckle[3, 5, 7] = True  # a dead voxel in one frame: no band to copy the width of
    with pytest.raises(ValueError, match="holds no gap band"):
        ft.finetune(data, speckle)
    narrow_gap = np.zeros((32, 40, 60), bool)
    narrow_gap[:, :, 50:53] = True
    with pytest.raises(ValueError, match="pass holdout=0"):
        ft.finetune(data[:, :, :60], narrow_gap)
    with pytest.raises(ValueError, match="n_portions must be >= 1, got 0"):
        ft.finetune(data, gap, n_portions=0)
    with pytest.raises(TypeError, match="steps must be an integer"):
        ft.finetune(data, gap, steps=2.5)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        ft.finetune(data, gap, lr=-1.0)
    with pytest.raises(ValueError, match="unknown loss 'mse'"):
        ft.finetune(data, gap, loss="mse")
    with pytest.raises(TypeError, match="model must be None, a weights path or a PatchUNet"):
        ft.finetune(data, gap, model=3, holdout=0, steps=1, n_portions=1)
    with pytest.raises(ValueError, match="too wide"):
        ft.finetune(data, gap, widths=(30,))
    with pytest.raises(ValueError, match="smaller than the 32"):
        ft.finetune(data[:16], gap[:16])
    with pytest.raises(ValueError, match="NaN"):
        ft.finetune(np.full(SHAPE, np.nan, np.float32), gap)


def test_cli_finetune_then_inpaint_with_the_weights(measured, tmp_path, capsys):
    from bcdi_gapfill.cli.commands import main
    data, gap = measured
    data_file, mask_file = tmp_path / "scan.npy", tmp_path / "scan_mask.npy"
    np.save(data_file, data)
    np.save(mask_file, gap.astype(np.int8))
    args = ["finetune", str(data_file), "--mask", str(mask_file), "--portions", "4", "--steps", "1",
            "--batch-size", "2", "--holdout", "0"]
    assert main(args) == 0
    weights = tmp_path / "scan_finetuned.pt"
    out = capsys.readouterr().out
    assert f"wrote {weights}" in out and "--weights" in out
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["data"] == str(data_file) and card["sha256"] == file_sha256(weights)
    before = weights.read_bytes()
    assert main(args) == 2  # refused before any training
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert weights.read_bytes() == before
    assert main(["inpaint", str(data_file), "--mask", str(mask_file), "--weights", str(weights),
                 "-o", str(tmp_path / "filled.npz")]) == 0
    assert (tmp_path / "filled.npz").is_file()
    np.testing.assert_array_equal(np.load(data_file), data)  # the input is untouched
