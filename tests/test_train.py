import csv

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bcdi_gapfill.nn.dataset import GapPortionDataset
from bcdi_gapfill.nn.train import TrainConfig, evaluate_loss, export_weights, gap_loss, load_train_config, train

TINY = {"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4], "prefill": "zero", "head": "sigmoid"}


def test_gap_loss_zero_for_perfect_prediction():
    target = torch.rand(2, 1, 32, 32, 32)
    gap = torch.zeros_like(target, dtype=torch.bool)
    gap[..., 10:16] = True
    loss, parts = gap_loss(target, target, gap, target * ~gap)
    assert float(loss) == pytest.approx(0, abs=1e-5) and parts["ssim"] == pytest.approx(1, abs=1e-5)
    worse, _ = gap_loss(torch.zeros_like(target), target, gap, target * ~gap)
    assert float(worse) > 0.05


def _bank_file(tmp_path, tiny_bank):
    path = tmp_path / "bank.h5"
    tiny_bank.save(path)
    return str(path)


def test_short_training_lowers_the_loss(tmp_path, tiny_bank):
    bank = _bank_file(tmp_path, tiny_bank)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), model=TINY, train_data=[bank], val_data=[bank],
                      batch_size=4, epochs=30, max_steps=40, lr=3e-3, checkpoint_every=1000, cache_dir=None,
                      widths=[6], cross_probability=0.0)
    loader = DataLoader(GapPortionDataset(tiny_bank, (6,), cross_probability=0.0, augment=False, fixed=True),
                        batch_size=8)
    from bcdi_gapfill.nn.model import build_model
    torch.manual_seed(cfg.seed)
    before = evaluate_loss(build_model(TINY), loader, cfg, torch.device("cpu"))["loss"]
    metrics = train(cfg, progress=False)
    assert metrics["step"] == 40
    after = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    from bcdi_gapfill.nn.model import PatchUNet
    model = PatchUNet(after["config"] if isinstance(after["config"], str) else
                      __import__("bcdi_gapfill.nn.model", fromlist=["UNetConfig"]).UNetConfig(**after["config"]))
    model.load_state_dict(after["state_dict"])
    assert evaluate_loss(model, loader, cfg, torch.device("cpu"))["loss"] < before
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert rows and "val_pcc" in rows[0]


def test_training_resumes_from_checkpoint(tmp_path, tiny_bank, capsys):
    bank = _bank_file(tmp_path, tiny_bank)
    base = dict(out_dir=str(tmp_path / "run"), model=TINY, train_data=[bank], batch_size=4, epochs=10,
                checkpoint_every=2, cache_dir=None)
    train(TrainConfig(**base, max_steps=3), progress=False)
    first = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert first["state"]["step"] == 3
    metrics = train(TrainConfig(**base, max_steps=5), progress=False)
    assert "resuming from" in capsys.readouterr().out and metrics["step"] == 5


def test_export_weights_writes_card_with_hash(tmp_path, tiny_bank):
    bank = _bank_file(tmp_path, tiny_bank)
    train(TrainConfig(out_dir=str(tmp_path / "run"), model=TINY, train_data=[bank], batch_size=4, epochs=1,
                      max_steps=2, cache_dir=None), progress=False)
    card = export_weights(tmp_path / "run" / "checkpoint.pt", tmp_path / "w.pt", {"max_gap_width": 12})
    from bcdi_gapfill.fill.inpainting import load_model
    model, info = load_model(tmp_path / "w.pt")
    assert info["sha256"] == card["sha256"] and info["max_gap_width"] == 12
    # A weights file changed after its card was written is refused.
    data = bytearray((tmp_path / "w.pt").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "w2.pt").write_bytes(bytes(data))
    (tmp_path / "w2.json").write_text((tmp_path / "w.json").read_text())
    with pytest.raises(ValueError, match="corrupted or was replaced"):
        load_model(tmp_path / "w2.pt")


def test_config_unknown_key(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("epochs: 2\nbogus: 1\n")
    with pytest.raises(ValueError, match="bogus"):
        load_train_config(path)


def test_signal_subset_keeps_signal_portions_and_a_share_of_noise(tiny_bank, capsys):
    from bcdi_gapfill.nn.dataset import signal_pcc
    from bcdi_gapfill.nn.train import _signal_subset
    pcc = signal_pcc(tiny_bank)
    assert pcc.shape == (len(tiny_bank),) and np.all(np.abs(pcc) <= 1 + 1e-9)
    threshold = float(np.median(pcc))
    only_signal = _signal_subset(tiny_bank, threshold, 0.0, 0, 0)
    assert len(only_signal) == int((pcc >= threshold).sum())
    assert np.all(signal_pcc(only_signal) >= threshold - 1e-9)
    assert len(_signal_subset(tiny_bank, threshold, 1.0, 0, 0)) == len(tiny_bank)
    with pytest.raises(ValueError, match="keeps no training portion"):
        _signal_subset(tiny_bank, 2.0, 0.0, 0, 0)


def test_prefill_computed_by_the_dataset_matches_the_model(tiny_bank):
    from functools import partial
    from bcdi_gapfill.nn.model import build_model, compute_prefill
    model = build_model({"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4], "prefill_iterations": 20}).eval()
    data = GapPortionDataset(tiny_bank, (6,), augment=False, fixed=True,
                             prefill=partial(compute_prefill, config=model.config))
    inputs, _, gap, base = next(iter(DataLoader(data, batch_size=3)))
    torch.testing.assert_close(base, model.prefill(inputs[:, :1], gap))
    torch.testing.assert_close(model(inputs, gap, base), model(inputs, gap))


def test_training_with_prefill_worker_and_signal_subset(tmp_path, tiny_bank):
    bank = _bank_file(tmp_path, tiny_bank)
    model = {"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4], "prefill_iterations": 10}
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), model=model, train_data=[bank], val_data=[bank],
                      batch_size=4, epochs=1, max_steps=2, checkpoint_every=1000, cache_dir=None,
                      min_signal_pcc=0.5, noise_keep_fraction=0.5, loader_workers=1)
    metrics = train(cfg, progress=False)
    assert metrics["step"] == 2 and "val_pcc_prefill" in metrics


def test_near_peak_portions_join_the_training_bank(tmp_path, tiny_bank, capsys):
    bank = _bank_file(tmp_path, tiny_bank)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), model=TINY, train_data=[bank], batch_size=4, epochs=1,
                      max_steps=1, cache_dir=str(tmp_path / "cache"), simulate_size=64, simulate_peak=1,
                      peak_first_seed=3, peak_portions_per_pattern=4, min_signal_pcc=-1.0)
    train(cfg, progress=False)
    assert (tmp_path / "cache" / "sim_64_3_1_peak4.h5").exists()
    # 16 portions of the file and 4 cut near the peak, all kept by a signal threshold of -1.
    assert f"training on {len(tiny_bank) + 4} of {len(tiny_bank) + 4} portions" in capsys.readouterr().out


def test_photon_loss_is_the_log_photon_ratio_in_the_gap():
    from bcdi_gapfill.nn.train import photon_loss
    gap = torch.zeros((2, 1, 4, 4, 4), dtype=torch.bool)
    gap[:, :, :, :, 1:3] = True
    scale = torch.tensor([2.0, 3.0])
    target = torch.full((2, 1, 4, 4, 4), 0.5)
    assert float(photon_loss(target.clone(), target, gap, scale)) == pytest.approx(0.0, abs=1e-6)
    # Outside the gap the prediction does not count.
    pred = torch.where(gap, target, torch.zeros_like(target))
    assert float(photon_loss(pred, target, gap, scale)) == pytest.approx(0.0, abs=1e-6)
    # A prediction with no photons in the gap costs log1p of the hidden photons.
    pred = torch.zeros_like(target).requires_grad_()
    hidden = 32 * np.expm1(0.5 * np.array([2.0, 3.0]))
    loss = photon_loss(pred, target, gap, scale)
    assert float(loss) == pytest.approx(np.log1p(hidden).mean(), rel=1e-5)
    loss.backward()
    assert float(pred.grad[gap].min()) < 0 and float(pred.grad[~gap].abs().max()) == 0
    # An exploding prediction (the untrained head, far above the window) stays finite.
    band = torch.zeros((1, 1, 32, 32, 32), dtype=torch.bool)
    band[..., 12:21] = True   # a 9-px band of a 32^3 portion: 9216 voxels
    wild = torch.full((1, 1, 32, 32, 32), 50.0).requires_grad_()
    loss = photon_loss(wild, torch.full((1, 1, 32, 32, 32), 0.5), band, torch.tensor([3.0]))
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(wild.grad).all())


def test_peak_centred_portions_photon_loss_and_epoch_weights(tmp_path, tiny_bank, capsys):
    bank = _bank_file(tmp_path, tiny_bank)
    model = {**TINY, "output_cap": 1.5}
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), model=model, train_data=[bank], batch_size=4, epochs=1,
                      cache_dir=str(tmp_path / "cache"), simulate_size=64, simulate_centre=1,
                      centre_first_seed=3, centre_portions_per_pattern=4, min_signal_pcc=-1.0,
                      w_photon=0.1, keep_epoch_weights=True)
    metrics = train(cfg, progress=False)
    assert (tmp_path / "cache" / "sim_64_3_1_centre4.h5").exists()
    assert f"training on {len(tiny_bank) + 4} of {len(tiny_bank) + 4} portions" in capsys.readouterr().out
    saved = torch.load(tmp_path / "run" / "epoch1.pt", weights_only=False)
    assert saved["config"]["output_cap"] == 1.5 and metrics["epoch"] == 1
    with pytest.raises(ValueError, match="w_photon"):
        train(TrainConfig(out_dir=str(tmp_path / "bad"), model=TINY, train_data=[bank], w_photon=-1.0),
              progress=False)


@pytest.mark.parametrize("name", ["train_default", "train_paper", "train_peak_finetune", "train_peak_aware",
                                  "train_peak_aware_w48"])
def test_shipped_training_recipes_load(name):
    from pathlib import Path

    from bcdi_gapfill.nn.model import CONFIGS, UNetConfig, build_model
    cfg = load_train_config(Path(__file__).resolve().parents[1] / "workflows" / f"{name}.yml")
    model_cfg = CONFIGS[cfg.model] if isinstance(cfg.model, str) else UNetConfig(**cfg.model)
    assert build_model(model_cfg) is not None and cfg.simulate_train > 0
    if cfg.init_weights:  # a starting point every clone has
        assert (Path(__file__).resolve().parents[1] / cfg.init_weights).is_file()


def test_logit_penalty_is_zero_inside_the_bound_and_pulls_back_outside():
    from bcdi_gapfill.nn.train import logit_penalty
    inside = torch.tensor([-3.9, 0.0, 2.0, 3.9])
    assert float(logit_penalty(inside, 4.0)) == 0.0
    outside = torch.tensor([-6.0, 0.0, 5.0, 0.0], requires_grad=True)
    penalty = logit_penalty(outside, 4.0)
    assert float(penalty.detach()) == pytest.approx((2.0 ** 2 + 1.0 ** 2) / 4)
    penalty.backward()
    # The gradient moves a too-negative logit up, a too-positive one down, the others not at all.
    assert outside.grad[0] < 0 < outside.grad[2] and outside.grad[1] == 0 == outside.grad[3]


def _sigmoid_training(tmp_path, tiny_bank, name, **extra):
    """TINY sigmoid model, Adam at a learning rate that makes its output run away; returns the
    head's logits on the training portions afterwards."""
    from bcdi_gapfill.nn.model import PatchUNet, UNetConfig
    bank = _bank_file(tmp_path, tiny_bank)
    cfg = TrainConfig(out_dir=str(tmp_path / name), model=TINY, train_data=[bank], batch_size=4, epochs=40,
                      max_steps=20, lr=1e-2, checkpoint_every=1000, cache_dir=None, widths=[6], **extra)
    train(cfg, progress=False)
    ckpt = torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)
    model = PatchUNet(UNetConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    inputs, _, gap = next(iter(DataLoader(GapPortionDataset(tiny_bank, (6,), augment=False, fixed=True),
                                          batch_size=len(tiny_bank))))
    with torch.no_grad():
        _, logits = model.eval()(inputs[:, :model.config.in_channels], gap, return_logits=True)
    return logits


def test_logit_penalty_keeps_a_sigmoid_head_out_of_saturation(tmp_path, tiny_bank):
    free = _sigmoid_training(tmp_path, tiny_bank, "free")
    bounded = _sigmoid_training(tmp_path, tiny_bank, "bounded", w_logit=1.0, logit_bound=4.0,
                                initial_output=0.05)
    # Without the penalty the logits run far past the sigmoid's live range (its gradient is
    # then ~0 and nothing brings them back); with it they stay near +-4.
    assert float(free.abs().max()) > 20
    assert float(bounded.abs().max()) < 8


def test_initial_output_sets_the_sigmoid_head_bias(tmp_path, tiny_bank):
    from bcdi_gapfill.nn.model import build_model
    from bcdi_gapfill.nn.train import _set_initial_output
    model = build_model(TINY)
    _set_initial_output(model, 0.05)
    features = torch.zeros(1, model.head.in_channels, 1, 1, 1)
    out = torch.sigmoid(model.config.sigmoid_slope * model.head(features))
    assert float(out) == pytest.approx(0.05, rel=1e-5)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        _set_initial_output(model, 1.0)
    with pytest.raises(ValueError, match="needs a sigmoid head"):
        _set_initial_output(build_model({"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4]}), 0.05)


@pytest.mark.parametrize("extra, message", [
    ({"w_logit": 1.0}, "w_logit needs a sigmoid head"),
    ({"initial_output": 0.05}, "initial_output needs a sigmoid head"),
    ({"w_logit": -1.0}, "w_logit must be"),
    ({"logit_bound": 0.0}, "logit_bound must be"),
])
def test_logit_options_refused_where_they_would_do_nothing(tmp_path, extra, message):
    # The default model has a residual head: the penalty would be skipped silently.
    cfg = TrainConfig(out_dir=str(tmp_path / "never"), train_data=[str(tmp_path / "missing.h5")], **extra)
    with pytest.raises(ValueError, match=message):
        train(cfg, progress=False)
    assert not (tmp_path / "never").exists()
