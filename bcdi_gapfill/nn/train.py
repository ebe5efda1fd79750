"""Training of the patching U-Net on portions with artificial gaps.

Loss = w_mae * MAE + w_ssim * (1 - SSIM_3D) + w_grad * MAE of the finite-difference
gradients (paper section 2.3). The losses compare the *composite* portion (measured voxels
kept, gap voxels predicted) with the composite truth (measured voxels, and the noise-free
expectation inside the gap), so that they measure the gap and how it joins its borders;
the MAE term is taken over gap voxels only. Sigmoid-head models (the paper's) can add
`logit_penalty` and start their output at ``initial_output``: without both, the paper's
network collapsed to a zero output on our portions (docs/benchmarks.md).

Adam (lr 1e-3) with ReduceLROnPlateau on the validation loss, gradient clipping, fixed
seeds, a tqdm progress bar, a CSV metrics log per epoch, checkpoints written atomically
(every ``checkpoint_every`` steps and at each epoch end) and exact resume. Several GPUs are
used through torch's DistributedDataParallel when launched by ``torchrun``.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from bcdi_gapfill.core.config import read_yaml_mapping
from bcdi_gapfill.core.io import atomic_write_text, check_config_keys, load_array
from bcdi_gapfill.nn.dataset import (GapPortionDataset, PortionBank, cached_portion_bank, select_portions,
                                     signal_pcc)
from bcdi_gapfill.nn.model import CONFIGS, UNetConfig, build_model, compute_prefill

__all__ = ["TrainConfig", "gap_loss", "photon_loss", "logit_penalty", "train", "load_train_config", "evaluate_loss"]


@dataclass
class TrainConfig:
    """Everything a training run needs; read from YAML by `load_train_config`."""

    out_dir: str = "runs/train"
    model: str | dict = "gapfill"
    train_data: list[str] = field(default_factory=list)  # PortionBank .h5 files
    val_data: list[str] = field(default_factory=list)
    simulate_train: int = 0  # patterns to simulate (seeds train_first_seed, ...)
    simulate_val: int = 0
    simulate_size: int = 128
    train_first_seed: int = 0
    val_first_seed: int = 100_000
    cache_dir: str | None = "runs/cache"  # simulated portion banks are cached here by seed range
    user_data: list[str] = field(default_factory=list)  # measured arrays to cut portions from
    # Extra simulated patterns (seeds peak_first_seed, ...) cut near the Bragg peak
    # (`dataset.peak_portion_corners`), where whole-array gaps cross the brightest fringes.
    simulate_peak: int = 0
    peak_first_seed: int = 600
    peak_portions_per_pattern: int = 8
    # Extra simulated patterns (seeds centre_first_seed, ...) cut with the peak at the window's
    # centre (`dataset.CENTRE_RADIUS`): the portion's gap band crosses the central lobe or runs
    # beside it, the case where a gap hides most of the photons.
    simulate_centre: int = 0
    centre_first_seed: int = 800
    centre_portions_per_pattern: int = 6
    # Ceiling of the training target in window-normalised log units (1: the window's brightest
    # measured voxel); None takes the model's ``output_cap``. Above 1 the network can learn to
    # raise a peak that the gap hides.
    target_cap: float | None = None
    widths: list[int] = field(default_factory=lambda: [3, 6, 9, 12])
    cross_probability: float = 0.3
    # Most peripheral simulated portions are Poisson-noise dominated: nothing in their gap is
    # predictable beyond a smooth fill, so they teach the network little. With
    # ``min_signal_pcc`` set, training keeps the portions whose log counts correlate at least
    # this well with the noise-free expectation (`dataset.signal_pcc`) and a random
    # ``noise_keep_fraction`` of the others (so it still learns to leave noise alone).
    min_signal_pcc: float | None = None
    noise_keep_fraction: float = 1.0
    # Data-loading worker processes; with a biharmonic-prefill model they also compute the
    # prefill, off the optimisation thread (a third of a CPU training step otherwise).
    loader_workers: int = 0
    batch_size: int = 16
    epochs: int = 10
    max_steps: int | None = None
    time_budget_s: float | None = None
    lr: float = 1e-3
    lr_patience: int = 2
    lr_factor: float = 0.5
    grad_clip: float = 1.0
    w_mae: float = 1.0
    w_ssim: float = 1.0
    w_grad: float = 1.0
    # Weight of `photon_loss` (|log| of the in-gap photon ratio, per portion): the log-domain
    # losses above barely see the few bright voxels that carry most of a near-peak gap's photons.
    w_photon: float = 0.0
    # Sigmoid-head models only (the paper's; refused for others): weight of `logit_penalty`, which keeps the
    # head's logits within +-logit_bound. Without it the paper's network collapsed to a zero
    # output on our data at every learning rate tried (docs/benchmarks.md); 0 turns it off.
    w_logit: float = 0.0
    logit_bound: float = 4.0
    # Sigmoid-head models only: the output at initialisation (the head's bias set to its
    # logit), e.g. the mean in-gap target. None keeps the architecture's init (an output of 0.5,
    # ten times the ~0.05 typical of log-normalised portions).
    initial_output: float | None = None
    checkpoint_every: int = 100
    # Also write the weights of every finished epoch as ``epoch<N>.pt`` (about 3 MB each).
    keep_epoch_weights: bool = False
    init_weights: str | None = None  # start from these weights (best.pt / exported file) when no checkpoint
    seed: int = 0
    num_threads: int | None = None
    device: str | None = None


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a YAML training configuration; unknown keys are an error."""
    raw = read_yaml_mapping(path, "training config")
    check_config_keys(raw, TrainConfig.__dataclass_fields__, f"training config {path}")
    return TrainConfig(**raw)


def _gradients(x: torch.Tensor) -> list[torch.Tensor]:
    return [torch.diff(x, dim=d) for d in (-3, -2, -1)]


def gap_loss(pred: torch.Tensor, target: torch.Tensor, gap: torch.Tensor, measured: torch.Tensor,
             w_mae: float = 1.0, w_ssim: float = 1.0, w_grad: float = 1.0) -> tuple[torch.Tensor, dict]:
    """MAE + SSIM + gradient-MAE loss on composite portions.

    Parameters
    ----------
    pred, target : (N, 1, D, H, W) float
        Network output and noise-free normalised truth.
    gap : (N, 1, D, H, W) bool
    measured : (N, 1, D, H, W) float
        The measured (noisy) normalised input, used outside the gap in both composites.
    """
    from pytorch_msssim import ssim
    gapf = gap.float()
    comp_pred = measured + gapf * (pred - measured)
    comp_true = measured + gapf * (target - measured)
    n_gap = gapf.sum().clamp_min(1.0)
    mae = (gapf * (pred - target).abs()).sum() / n_gap
    # 3D SSIM with a 7-voxel Gaussian window (pytorch-msssim handles 5D input).
    ssim_val = ssim(comp_pred, comp_true, data_range=1.0, size_average=True, win_size=7)
    grad = sum((gp - gt).abs().mean() for gp, gt in zip(_gradients(comp_pred), _gradients(comp_true))) / 3
    total = w_mae * mae + w_ssim * (1 - ssim_val) + w_grad * grad
    return total, {"mae": float(mae.detach()), "ssim": float(ssim_val.detach()), "grad": float(grad.detach())}


def photon_loss(pred: torch.Tensor, target: torch.Tensor, gap: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mean over portions of the absolute log of the in-gap photon ratio (predicted / true).

    Parameters
    ----------
    pred, target : (N, 1, D, H, W) float
        Normalised log1p intensities (``log1p(counts) / scale``).
    gap : (N, 1, D, H, W) bool
    scale : (N,) float
        Each portion's normalisation scale (`bcdi_gapfill.nn.dataset.log_normalise`).
    """
    s = scale.reshape(-1, 1, 1, 1, 1)
    gapf = gap.float()
    # Bounded so that a window's sum stays finite in float32: exp(30) ~ 1e13 counts a voxel,
    # far above any measured peak; exp(80) per voxel overflowed the sum (NaN gradients).
    predicted = (gapf * torch.expm1((pred * s).clamp_max(30.0))).sum(dim=(1, 2, 3, 4))
    true = (gapf * torch.expm1(target * s)).sum(dim=(1, 2, 3, 4))
    return (torch.log1p(predicted) - torch.log1p(true)).abs().mean()


def logit_penalty(logits: torch.Tensor, bound: float = 4.0) -> torch.Tensor:
    """Mean squared excess of the head's logits beyond +-``bound`` (0 inside).

    Most in-gap targets of log-normalised portions are near 0, the conditional median that
    MAE pulls towards; a sigmoid reaches it only at logits of -infinity. Unchecked, the whole
    output slides there within a few Adam steps, the sigmoid saturates, and no gradient ever
    brings it back (the paper architecture's collapse here). Inside +-bound the loss is the
    paper's; the output can still approach sigmoid(slope * -bound), 0.0025 with the paper's
    slope 1.5 and bound 4.
    """
    return (F.relu(logits.abs() - bound) ** 2).mean()


def _check_logit_options(cfg: TrainConfig, head: str) -> None:
    """Refuse logit options that would do nothing, before any data is simulated."""
    if not (math.isfinite(cfg.w_logit) and cfg.w_logit >= 0):
        raise ValueError(f"w_logit must be a finite number >= 0, got {cfg.w_logit}")
    if not (math.isfinite(cfg.logit_bound) and cfg.logit_bound > 0):
        raise ValueError(f"logit_bound must be a finite number > 0, got {cfg.logit_bound}")
    if head != "sigmoid":
        for name, used in (("w_logit", cfg.w_logit > 0), ("initial_output", cfg.initial_output is not None)):
            if used:
                raise ValueError(f"{name} needs a sigmoid head; model {cfg.model!r} has a {head!r} head")


def _set_initial_output(model: torch.nn.Module, value: float) -> None:
    """Set a sigmoid head's bias so that its output starts at ``value`` where the features
    under it are zero (the usual init of an output layer for a skewed target)."""
    cfg = model.config
    if cfg.head != "sigmoid":
        raise ValueError(f"initial_output needs a sigmoid head; model {cfg.name!r} has a {cfg.head!r} head")
    if not 0 < value < 1:
        raise ValueError(f"initial_output must lie strictly between 0 and 1, got {value}")
    with torch.no_grad():
        model.head.bias.fill_(math.log(value / (1 - value)) / cfg.sigmoid_slope)


def _batch_pcc(pred: torch.Tensor, target: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    """In-gap Pearson correlation per portion, on the normalised log scale (paper eq. 1)."""
    g = gap.flatten(1).float()
    n = g.sum(1).clamp_min(1)
    p, t = pred.flatten(1), target.flatten(1)
    pm, tm = (p * g).sum(1) / n, (t * g).sum(1) / n
    dp, dt = (p - pm[:, None]) * g, (t - tm[:, None]) * g
    return (dp * dt).sum(1) / ((dp.pow(2).sum(1) * dt.pow(2).sum(1)).sqrt() + 1e-12)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, loader: DataLoader, cfg: TrainConfig, device: torch.device) -> dict:
    """Mean loss terms and mean in-gap PCC over a loader."""
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    plain = getattr(model, "module", model)  # unwrap DistributedDataParallel
    for batch in loader:
        inputs, target, gap = (t.to(device) for t in batch[:3])
        base = batch[3].to(device) if len(batch) > 3 else plain.prefill(inputs[:, :1], gap)
        pred = model(inputs, gap, base)
        loss, parts = gap_loss(pred, target, gap, inputs[:, :1], cfg.w_mae, cfg.w_ssim, cfg.w_grad)
        parts["loss"] = float(loss)
        parts["pcc"] = float(_batch_pcc(pred, target, gap).mean())
        if plain.config.prefill != "zero":
            # The classical fill the residual head starts from: what the network must beat.
            parts["pcc_prefill"] = float(_batch_pcc(base, target, gap).mean())
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * len(inputs)
        n += len(inputs)
    model.train()
    return {k: v / max(n, 1) for k, v in sums.items()}


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _banks(paths: list[str], n_sim: int, first_seed: int, size: int, cache_dir: str | None,
           peak: tuple[int, int, int] = (0, 0, 0), centre: tuple[int, int, int] = (0, 0, 0),
           window: int = 32) -> PortionBank:
    """Files, then the near-peak and peak-centred simulated banks (``peak``, ``centre`` =
    patterns, first seed, portions per pattern), then the simulated bank, in this order (the
    order fixes the shuffles)."""
    banks = [PortionBank.load(p) for p in paths]
    for (n, seed, per), placement in ((peak, "peak"), (centre, "centre")):
        if n:
            banks.append(cached_portion_bank(n, seed, size, cache_dir, portions_per_pattern=per,
                                             placement=placement, window=window))
    if n_sim:
        banks.append(cached_portion_bank(n_sim, first_seed, size, cache_dir, window=window))
    if not banks:
        raise ValueError("no training data: give train_data files or simulate_train > 0")
    return PortionBank.concatenate(banks)


def _signal_subset(bank: PortionBank, min_pcc: float, noise_keep: float, seed: int, rank: int) -> PortionBank:
    pcc = signal_pcc(bank)
    rng = np.random.default_rng(seed)
    keep = (pcc >= min_pcc) | (rng.random(len(pcc)) < noise_keep)
    if not keep.any():
        raise ValueError(f"min_signal_pcc={min_pcc} keeps no training portion (largest signal PCC "
                         f"{np.nanmax(pcc):.3f}); lower it")
    if rank == 0:
        print(f"training on {int(keep.sum())} of {len(pcc)} portions: {int((pcc >= min_pcc).sum())} with "
              f"signal PCC >= {min_pcc} and {int((keep & (pcc < min_pcc)).sum())} noise-dominated ones")
    return select_portions(bank, np.flatnonzero(keep))


def train(cfg: TrainConfig, *, progress: bool = True) -> dict:
    """Train (or resume) a model; returns the final validation metrics.

    Writes in ``cfg.out_dir``: ``checkpoint.pt`` (model, optimiser, scheduler, step, RNG
    states; replaced atomically), ``best.pt`` (weights with the lowest validation loss),
    ``metrics.csv`` (one row per epoch) and ``config.json``. Rerunning the same command
    resumes from ``checkpoint.pt``.
    """
    from tqdm import tqdm

    model_cfg = CONFIGS[cfg.model] if isinstance(cfg.model, str) else UNetConfig(**cfg.model)
    _check_logit_options(cfg, model_cfg.head)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank = torch.distributed.get_rank()
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    else:
        rank = 0
        device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    train_bank = _banks(cfg.train_data, cfg.simulate_train, cfg.train_first_seed, cfg.simulate_size, cfg.cache_dir,
                        (cfg.simulate_peak, cfg.peak_first_seed, cfg.peak_portions_per_pattern),
                        (cfg.simulate_centre, cfg.centre_first_seed, cfg.centre_portions_per_pattern),
                        window=model_cfg.window)
    if cfg.user_data:
        from bcdi_gapfill.nn.dataset import portions_from_array
        rng = np.random.default_rng(cfg.seed)
        user = [portions_from_array(load_array(p), None, 10, rng, window=model_cfg.window) for p in cfg.user_data]
        train_bank = PortionBank.concatenate([train_bank, *user])
    val_bank = _banks(cfg.val_data, cfg.simulate_val, cfg.val_first_seed, cfg.simulate_size, cfg.cache_dir,
                      window=model_cfg.window) \
        if (cfg.val_data or cfg.simulate_val) else None
    if cfg.min_signal_pcc is not None:
        # Validation follows the training distribution, so that best.pt is chosen on it.
        train_bank = _signal_subset(train_bank, cfg.min_signal_pcc, cfg.noise_keep_fraction, cfg.seed, rank)
        if val_bank is not None:
            val_bank = _signal_subset(val_bank, cfg.min_signal_pcc, cfg.noise_keep_fraction, cfg.seed + 1, rank)

    prefill = partial(compute_prefill, config=model_cfg) \
        if cfg.loader_workers and model_cfg.prefill != "zero" else None
    target_cap = model_cfg.output_cap if cfg.target_cap is None else cfg.target_cap
    if not (math.isfinite(cfg.w_photon) and cfg.w_photon >= 0):
        raise ValueError(f"w_photon must be a finite number >= 0, got {cfg.w_photon}")
    with_scale = cfg.w_photon > 0
    train_set = GapPortionDataset(train_bank, cfg.widths, cross_probability=cfg.cross_probability,
                                  augment=True, seed=cfg.seed, prefill=prefill, with_counts=with_scale,
                                  target_cap=target_cap)
    sampler = torch.utils.data.DistributedSampler(train_set, seed=cfg.seed) if distributed else None
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=sampler is None,
                              sampler=sampler, drop_last=True, generator=generator,
                              num_workers=cfg.loader_workers, persistent_workers=cfg.loader_workers > 0)
    val_loader = DataLoader(GapPortionDataset(val_bank, cfg.widths, cross_probability=cfg.cross_probability,
                                              augment=False, fixed=True, seed=cfg.seed + 1,
                                              target_cap=target_cap),
                            batch_size=cfg.batch_size) if val_bank is not None else None

    # channels-last 3D puts CPU convolutions on oneDNN's fast path (3x faster backward here).
    model = build_model(model_cfg).to(device, memory_format=torch.channels_last_3d)
    if cfg.initial_output is not None:
        _set_initial_output(model, cfg.initial_output)
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, factor=cfg.lr_factor,
                                                           patience=cfg.lr_patience)
    state = {"step": 0, "epoch": 0, "best_val": math.inf, "elapsed_s": 0.0}
    ckpt_path = out / "checkpoint.pt"
    if cfg.init_weights and not ckpt_path.exists():
        init = torch.load(cfg.init_weights, map_location=device, weights_only=False)
        model.load_state_dict(init.get("state_dict") or init["model"])
        if rank == 0:
            print(f"initialised from {cfg.init_weights}")
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimiser"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state.update(ckpt["state"])
        torch.set_rng_state(ckpt["torch_rng"])
        generator.set_state(ckpt["loader_rng"])
        train_set._rng = np.random.default_rng(cfg.seed + 1000 * state["epoch"] + state["step"])
        if rank == 0:
            print(f"resuming from {ckpt_path} at step {state['step']} (epoch {state['epoch']})")
    if rank == 0:
        (out / "config.json").write_text(json.dumps({"train": asdict(cfg), "model": model_cfg.to_dict()},
                                                    indent=2, default=str))

    def save_checkpoint() -> None:
        if rank == 0:
            _atomic_torch_save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                                "scheduler": scheduler.state_dict(), "state": dict(state),
                                "torch_rng": torch.get_rng_state(), "loader_rng": generator.get_state(),
                                "model_config": model_cfg.to_dict()}, ckpt_path)

    penalise_logits = cfg.w_logit > 0
    start = time.time() - state["elapsed_s"]
    steps_per_epoch = len(train_loader)
    metrics: dict = {}
    stop = False
    model.train()
    while state["epoch"] < cfg.epochs and not stop:
        if sampler is not None:
            sampler.set_epoch(state["epoch"])
        skip = state["step"] - state["epoch"] * steps_per_epoch  # resume inside an epoch
        bar = tqdm(total=steps_per_epoch, initial=max(skip, 0), disable=not progress or rank != 0,
                   desc=f"epoch {state['epoch'] + 1}/{cfg.epochs}")
        running = []
        for i, batch in enumerate(train_loader):
            if i < skip:
                continue
            inputs, target, gap = (t.to(device) for t in batch[:3])
            base = batch[3].to(device) if prefill is not None else None
            pred, logits = net(inputs.to(memory_format=torch.channels_last_3d), gap, base, return_logits=True)
            loss, parts = gap_loss(pred, target, gap, inputs[:, :1], cfg.w_mae, cfg.w_ssim, cfg.w_grad)
            if with_scale:
                photons = photon_loss(pred, target, gap, batch[-1].to(device))
                loss = loss + cfg.w_photon * photons
                parts["photon"] = float(photons.detach())
            if penalise_logits:
                penalty = logit_penalty(logits, cfg.logit_bound)
                loss = loss + cfg.w_logit * penalty
                parts["logit"] = float(penalty.detach())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimiser.step()
            state["step"] += 1
            state["elapsed_s"] = time.time() - start
            running.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(running[-50:]):.4f}", mae=f"{parts['mae']:.4f}")
            if state["step"] % cfg.checkpoint_every == 0:
                save_checkpoint()
            if (cfg.max_steps and state["step"] >= cfg.max_steps) or \
                    (cfg.time_budget_s and state["elapsed_s"] >= cfg.time_budget_s):
                stop = True
                break
        bar.close()
        epoch_done = not stop or state["step"] % steps_per_epoch == 0
        val = evaluate_loss(model, val_loader, cfg, device) if val_loader is not None else {}
        val_loss = val.get("loss", float(np.mean(running)) if running else math.inf)
        if epoch_done:
            state["epoch"] += 1
            scheduler.step(val_loss)
        metrics = {"epoch": state["epoch"], "step": state["step"], "elapsed_s": round(state["elapsed_s"], 1),
                   "lr": optimiser.param_groups[0]["lr"], "train_loss": float(np.mean(running)) if running else None,
                   **{f"val_{k}": v for k, v in val.items()}}
        if rank == 0:
            log = out / "metrics.csv"
            new = not log.exists()
            with open(log, "a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(metrics))
                if new:
                    writer.writeheader()
                writer.writerow(metrics)
            if cfg.keep_epoch_weights and epoch_done:
                # Whole-array model selection scores every epoch, not the portion loss's best.
                _atomic_torch_save({"config": model_cfg.to_dict(), "state_dict": model.state_dict(),
                                    "metrics": metrics}, out / f"epoch{state['epoch']}.pt")
            if val_loss < state["best_val"]:
                state["best_val"] = val_loss
                _atomic_torch_save({"config": model_cfg.to_dict(), "state_dict": model.state_dict(),
                                    "metrics": metrics}, out / "best.pt")
            print(json.dumps(metrics), flush=True)
        save_checkpoint()
    if distributed:
        torch.distributed.destroy_process_group()
    return metrics


def export_weights(checkpoint: str | Path, out_path: str | Path, card: dict | None = None) -> dict:
    """Write the weights of a training checkpoint (``best.pt`` or ``checkpoint.pt``) as a
    shippable file plus its model card ``<out>.json`` holding the SHA-256 that loading checks.

    Only the configuration and the weights are kept (no optimiser state), so the file is small.
    """
    import hashlib

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = ckpt.get("config") or ckpt["model_config"]
    state_dict = ckpt.get("state_dict") or ckpt["model"]
    out_path = Path(out_path)
    _atomic_torch_save({"config": config, "state_dict": state_dict}, out_path)
    sha = hashlib.sha256(out_path.read_bytes()).hexdigest()
    full_card = {"name": out_path.stem, "sha256": sha, "architecture": config,
                 "parameters": int(sum(v.numel() for v in state_dict.values())), **(card or {})}
    atomic_write_text(out_path.with_suffix(".json"), json.dumps(full_card, indent=2, default=str), overwrite=True)
    return full_card
