"""Fine-tuning the patching U-Net on the measured array itself (paper section 2.7).

Simulated training data never looks exactly like a given experiment. The paper's remedy is a
short second training on portions cut from the measured array, away from its real gap,
with artificial gaps of the same kind. :func:`finetune` does this on a CPU in minutes:

1. the real gap (dilated by 2 detector pixels) and any other masked voxel are excluded, and
   the array is split in two halves along its longest axis: training portions are cut from
   the first half, held-out portions from the second, so no held-out voxel is ever seen in
   training. Brighter portions are preferred (``periphery_power``): in a 128^3 array most
   of the dim periphery is empty, and the real gap usually crosses the bright peak;
2. training portions get random artificial gaps of the real gap's width (random flips and
   swaps of the detector axes, as in the first training), the target being the noisy counts
   themselves (a measurement has no noise-free expectation);
3. a copy of the model is trained with Adam for ``steps`` batches (or until
   ``time_budget_s``) on the Poisson deviance of the counts in the artificial gaps (or, with
   ``loss="paper"``, on `bcdi_gapfill.nn.train.gap_loss`); the shipped model is never modified;
4. the in-gap Pearson correlation (log scale) on the held-out portions, with fixed artificial
   gaps of the real gap's width, is measured before and after, so the user sees whether
   fine-tuning helped. When it did not, the original model is returned (``revert_if_worse``).

:func:`save_finetuned` writes the tuned weights next to the data (``<data stem>_finetuned.pt``
and its model card ``.json`` holding the SHA-256 that loading checks); they are used with
``inpaint(data, gap, model=path)`` or ``bcdi-gapfill inpaint ... --weights path``. The
command ``bcdi-gapfill finetune`` does both steps. Measured portions/steps trade-offs:
docs/benchmarks.md, section "Fine-tuning".

Arrays are (frames, rows, columns) photon counts.
"""
from __future__ import annotations

import copy
import inspect
import io as _io
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bcdi_gapfill import __version__
from bcdi_gapfill.core.checks import check_pattern
from bcdi_gapfill.core.geometry import gap_width
from bcdi_gapfill.core.io import atomic_write_bytes, atomic_write_text
from bcdi_gapfill.core.metrics import pcc_gap
from bcdi_gapfill.nn.weights import DEFAULT_WEIGHTS, clear_model_cache, load_model

__all__ = ["FinetuneResult", "finetune", "save_finetuned", "finetuned_weights_path", "evaluate_portions",
           "finetuned_for_inpaint", "FINETUNE_OPTIONS"]

# Detector pixels around the real gap that no portion may contain: the pixels at chip edges
# are often larger or less reliable, and the portions should not learn from them.
_GAP_MARGIN = 2
# Training portions on which the loss is reported before and after (a fixed subset).
_TRAIN_EVAL_PORTIONS = 32


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes
    ----------
    model : PatchUNet
        The fine-tuned model (in eval mode, on the CPU), or a copy of the original one when
        fine-tuning lowered the held-out PCC and ``revert_if_worse`` was set.
    pcc_before, pcc_after : float
        Mean in-gap Pearson correlation of log1p(counts) on the held-out portions, with the
        original and the tuned model (NaN without held-out portions).
    pcc_gain, pcc_gain_se : float
        Mean per-portion change of that PCC and its standard error: a gain within about two
        standard errors is no clear change.
    holdout_loss_before, holdout_loss_after : float
        Mean training loss (Poisson deviance or `gap_loss`, as ``loss`` says) on the
        held-out portions (NaN without held-out portions).
    train_loss_before, train_loss_after : float
        The same on (up to 32 of) the training portions, with fixed artificial gaps.
    improved : bool or None
        ``pcc_gain > 0``; None without held-out portions.
    reverted : bool
        True when ``model`` is the original model because fine-tuning did not help.
    losses : list of float
        Training loss of every step.
    steps : int
        Steps run (fewer than asked when the time budget ran out).
    n_portions, n_holdout : int
        Training and held-out portions actually cut from the array.
    widths : tuple of int
        Widths of the artificial gaps (pixels).
    seconds, cpu_seconds : float
        Wall time of the whole call, and the CPU time of this process (all threads) during
        it: on a CPU shared with other jobs the wall time can be several times the CPU time.
    settings : dict
        The options of the call and the base model's identity, for the model card.
    history : list of dict
        With ``eval_every``: ``step``, ``seconds`` and ``cpu_seconds`` (since the call
        began, the periodic evaluations and callbacks left out), mean training ``loss``
        since the previous entry, and ``holdout_pcc``, ``holdout_loss``.
    """

    model: Any
    pcc_before: float
    pcc_after: float
    pcc_gain: float
    pcc_gain_se: float
    holdout_loss_before: float
    holdout_loss_after: float
    train_loss_before: float
    train_loss_after: float
    improved: bool | None
    reverted: bool
    losses: list[float]
    steps: int
    n_portions: int
    n_holdout: int
    widths: tuple[int, ...]
    seconds: float
    cpu_seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> str:
        """One-paragraph account of the fine-tuning, for logs and the command line."""
        lines = [f"fine-tuned {self.steps} steps on {self.n_portions} portions of the array "
                 f"(artificial gaps {'/'.join(map(str, self.widths))} px) in {self.seconds:.0f} s "
                 f"({self.cpu_seconds:.0f} s CPU); "
                 f"loss on training portions {self.train_loss_before:.4f} -> {self.train_loss_after:.4f}"]
        if self.n_holdout:
            if not np.isfinite(self.pcc_gain_se) or abs(self.pcc_gain) <= 2 * self.pcc_gain_se:
                verdict = "no clear change: within two standard errors"
            else:
                verdict = "it helped" if self.pcc_gain > 0 else "it made it worse"
            lines.append(f"held-out in-gap PCC (log1p, {self.n_holdout} portions never trained on): "
                         f"{self.pcc_before:.5f} -> {self.pcc_after:.5f} "
                         f"(gain {self.pcc_gain:+.1e} +- {self.pcc_gain_se:.1e}, "
                         f"{verdict}); held-out loss {self.holdout_loss_before:.4f} -> "
                         f"{self.holdout_loss_after:.4f}")
            if self.reverted:
                lines.append("the original model is returned")
        else:
            lines.append("no held-out portions (holdout=0): whether it helped was not measured")
        return "\n".join(lines)


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_float(value: Any, name: str, *, positive: bool = True, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(float(value)) or (positive and value <= 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def _base_model(model: Any):
    """(a private trainable copy of the model, its identity for the card)."""
    import torch

    from bcdi_gapfill.nn.model import PatchUNet

    if model is None or isinstance(model, (str, Path)):
        net, info = load_model(model, "cpu")  # the cached instance: copied below, never trained
    elif isinstance(model, PatchUNet):
        net, info = model, dict(getattr(model, "gapfill_info", None) or {})  # set by load_model
    else:
        raise TypeError(f"model must be None, a weights path or a PatchUNet, got {type(model).__name__}")
    identity = {"base_weights": info.get("weights"), "base_sha256": info.get("sha256")}
    if "max_gap_width" in info:
        identity["max_gap_width"] = info["max_gap_width"]
    tuned = copy.deepcopy(net).to("cpu", memory_format=torch.channels_last_3d)
    for param in tuned.parameters():
        param.requires_grad_(True)
    return tuned, identity


def _dilated_gap(gap: np.ndarray, margin: int) -> np.ndarray:
    from scipy import ndimage
    if margin == 0:
        return gap.copy()
    # Dilate in the detector plane only: a chip gap is the same in every frame.
    structure = np.zeros((1, 2 * margin + 1, 2 * margin + 1), bool)
    structure[0] = True
    return ndimage.binary_dilation(gap, structure=structure)


def _blocked_corners(exclude: np.ndarray, window: int) -> np.ndarray:
    """bool (F-w+1, R-w+1, C-w+1): True at the corners whose window holds an excluded voxel."""
    from scipy import ndimage
    blocked = exclude
    for axis in range(3):
        # origin -(w // 2) puts the window of output i at input[i:i + w] (separable max = any).
        blocked = ndimage.maximum_filter1d(blocked, window, axis=axis, origin=-(window // 2), mode="constant")
    return blocked[tuple(slice(0, n - window + 1) for n in exclude.shape)]


def _cut_portions(counts: np.ndarray, exclude: np.ndarray, n: int, rng: np.random.Generator,
                  periphery_power: float, min_occupancy: float = 0.02):
    """Up to ``n`` distinct portions of ``counts`` that hold no voxel of ``exclude``.

    The choice of `bcdi_gapfill.nn.dataset.choose_portions` (8n candidate corners, those with
    at least ``min_occupancy`` of voxels holding photons kept, drawn with a probability
    falling as their mean count to ``periphery_power``), but with the candidates drawn among
    the allowed corners only: with most of the array excluded (the gap and half the array),
    drawing among all corners and rejecting would waste most draws.
    """
    from bcdi_gapfill.nn.dataset import WINDOW, PortionBank

    w = WINDOW
    allowed = np.flatnonzero(~_blocked_corners(exclude, w))
    corners: list[tuple[int, int, int]] = []
    if allowed.size:
        grid = tuple(s - w + 1 for s in counts.shape)
        candidates = rng.choice(allowed, size=min(allowed.size, max(8 * n, 64)), replace=False)
        candidates = np.stack(np.unravel_index(candidates, grid), axis=1)
        stats = np.array([(np.count_nonzero(block) / block.size, block.mean()) for block in
                          (counts[f:f + w, r:r + w, c:c + w] for f, r, c in candidates)]).reshape(-1, 2)
        ok = stats[:, 0] >= min_occupancy
        if ok.any():
            weights = np.where(ok, 1.0 / np.maximum(stats[:, 1], 1e-3) ** periphery_power, 0.0)
            pick = rng.choice(len(candidates), size=min(n, int(ok.sum())), replace=False,
                              p=weights / weights.sum())
            corners = [tuple(int(v) for v in candidates[i]) for i in pick]
    if not corners:
        empty = np.zeros((0, w, w, w), np.float16)
        return PortionBank(empty, empty, np.zeros(0, np.float32), np.zeros(0, np.float32))
    log_counts = np.stack([np.log1p(counts[f:f + w, r:r + w, c:c + w])
                           for f, r, c in corners]).astype(np.float16)
    means = np.array([counts[f:f + w, r:r + w, c:c + w].mean() for f, r, c in corners], np.float32)
    # A measurement has no noise-free expectation: the counts are their own target.
    return PortionBank(log_counts, log_counts, means, np.full(len(corners), np.nan, np.float32))


def _batches(dataset, indices, batch_size: int):
    import torch
    for start in range(0, len(indices), batch_size):
        items = [dataset[int(i)] for i in indices[start:start + batch_size]]
        yield tuple(torch.stack(parts) for parts in zip(*items))


def _poisson_deviance(pred, counts, gap, scale):
    """Mean Poisson deviance of the counts over the gap voxels of a batch.

    ``pred`` (N, 1, D, H, W) is the network's normalised log1p output, so the predicted
    expectation is ``expm1(pred * scale)`` (``scale`` (N,)). The deviance is minimised by the
    expectation of the counts, so noisy counts are an unbiased target for it, unlike for the
    log-scale MAE of `gap_loss`, which pulls the prediction towards the median of
    log1p(counts), below log1p(expectation) where counts are low. Each voxel contributes
    about 1 at the optimum, whatever its brightness.
    """
    import torch

    # The clamp keeps exp() finite for a wild prediction early in training (the output is
    # clamped to 0..1 at inference anyway).
    expected = torch.expm1(pred.clamp(0.0, 1.5) * scale.reshape(-1, 1, 1, 1, 1)).clamp_min(1e-4)
    # xlogy(k, k) is 0 at k = 0; k * log(k / mu) would give a 0/0 gradient there.
    deviance = 2.0 * (torch.xlogy(counts, counts) - counts * torch.log(expected) - (counts - expected))
    return deviance[gap].mean()


def evaluate_portions(model: Any, bank: Any, widths: tuple[int, ...] | list[int], *, seed: int = 0,
                      cross_probability: float = 0.3, batch_size: int = 16) -> dict[str, Any]:
    """Losses and in-gap PCC of a model on portions with fixed artificial gaps.

    Parameters
    ----------
    model : PatchUNet
    bank : `bcdi_gapfill.nn.dataset.PortionBank`
        Portions (N, 32, 32, 32); their ``log_expected`` is the target (for measured data,
        the counts themselves).
    widths : sequence of int
        Artificial gap widths, pixels; item i gets the same gap at every call (``seed``).

    Returns
    -------
    dict
        ``loss`` (mean `gap_loss`), ``deviance`` (mean Poisson deviance of the counts in
        the gap), ``pcc`` (mean in-gap Pearson correlation of the 0..1 normalised log1p
        values, NaN portions ignored), ``pccs`` (ndarray (N,), per portion), ``n``.
    """
    import torch

    from bcdi_gapfill.nn.dataset import GapPortionDataset
    from bcdi_gapfill.nn.train import gap_loss

    if len(bank) == 0:
        return {"loss": float("nan"), "deviance": float("nan"), "pcc": float("nan"), "pccs": np.zeros(0),
                "n": 0}
    dataset = GapPortionDataset(bank, widths, cross_probability=cross_probability, augment=False, fixed=True,
                                seed=seed, with_counts=True)
    was_training = model.training
    model.eval()
    loss_sum, deviance_sum, pccs = 0.0, 0.0, []
    try:
        with torch.no_grad():
            for inputs, target, gap, counts, scale in _batches(dataset, np.arange(len(dataset)), batch_size):
                pred = model(inputs.contiguous(memory_format=torch.channels_last_3d), gap)
                loss, _ = gap_loss(pred, target, gap, inputs[:, :1])
                loss_sum += float(loss) * len(inputs)
                deviance_sum += float(_poisson_deviance(pred, counts, gap, scale)) * len(inputs)
                pccs.append(pcc_gap(target[:, 0].numpy(), pred[:, 0].numpy(), gap[:, 0].numpy(), log=False,
                                    batched=True))
    finally:
        model.train(was_training)
    pcc = np.concatenate(pccs)
    mean_pcc = float(np.nanmean(pcc)) if np.isfinite(pcc).any() else float("nan")
    return {"loss": loss_sum / len(dataset), "deviance": deviance_sum / len(dataset), "pcc": mean_pcc,
            "pccs": pcc, "n": len(dataset)}


def _paired_gain(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """Mean per-portion PCC gain and its standard error (NaN portions left out)."""
    diff = (after - before)[np.isfinite(after - before)]
    if diff.size == 0:
        return float("nan"), float("nan")
    se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("nan")
    return float(diff.mean()), se


def finetune(counts: np.ndarray, gap_mask: np.ndarray, *, model: Any = None, n_portions: int = 200,
             steps: int = 200, batch_size: int = 8, lr: float = 1e-4, loss: str = "poisson",
             time_budget_s: float | None = 300.0,
             holdout: int = 32, widths: tuple[int, ...] | list[int] | None = None,
             cross_probability: float = 0.3, periphery_power: float = -0.5, revert_if_worse: bool = True,
             seed: int = 0,
             exclude_mask: np.ndarray | None = None, num_threads: int | None = 1, progress: bool = False,
             eval_every: int | None = None,
             callback: Callable[[int, Any], None] | None = None) -> FinetuneResult:
    """Fine-tune the gap-filling model on portions of the measured array itself.

    Parameters
    ----------
    counts : ndarray, shape (frames, rows, columns)
        Photon counts, finite and >= 0 (`bcdi_gapfill.core.checks.check_pattern`).
    gap_mask : bool ndarray, same shape
        True where the detector measured nothing. Its widest band sets the width of the
        artificial gaps (`bcdi_gapfill.core.geometry.gap_width`).
    model : path, `PatchUNet` or None
        The model to start from; None is the shipped default. It is deep-copied: neither the
        given model nor the cached shipped one is modified.
    n_portions : int
        Training portions (32^3) cut from the first half of the array (along its longest
        axis), away from the gap (and its 2-pixel margin). Fewer are used when the
        array does not hold that many, with a warning. 200 by default: on an array unlike the
        training set, 200 portions and 200 steps gained more held-out PCC than 400 or 800
        (docs/benchmarks.md, "Fine-tuning").
    steps : int
        Optimiser steps (batches); about 1.1 s each on one core of this 2-core CPU.
    batch_size : int
        Portions per step.
    lr : float
        Adam learning rate. 1e-4 by default: with the shipped weights (SHA-256 867c5e3b...),
        4 steps at 1e-3 tripled the loss on the array's own portions where 1e-4 lowered it
        (tests/test_finetune.py), and 3e-3 wrecked the model (docs/benchmarks.md).
    loss : {"poisson", "paper"}
        ``"poisson"``: the Poisson deviance of the counts in the artificial gap (the noisy
        counts are an unbiased target for it). ``"paper"``: `bcdi_gapfill.nn.train.gap_loss`
        (log-scale MAE + SSIM + gradient) against the noisy counts, the first training's
        loss; measured to lower the held-out PCC of the shipped model (docs/benchmarks.md).
    time_budget_s : float or None
        Stop training once this many seconds have passed since the call began (the held-out
        evaluation after training adds a few seconds). None: no limit.
    holdout : int
        Held-out portions cut from the second half of the array, never trained on, scored
        before and after with fixed artificial gaps. 0 skips the comparison (and the split:
        training portions then come from the whole array).
    widths : sequence of int, optional
        Artificial gap widths, pixels (default: the real gap's width).
    cross_probability : float
        Fraction of portions that also get a perpendicular band (as in the first training).
    periphery_power : float
        Portions are drawn with a probability falling as their mean count to this power
        (`bcdi_gapfill.nn.dataset.choose_portions`). The default -0.5 prefers the brighter
        regions, where the real gap usually crosses the peak and where the held-out score is
        less dominated by Poisson noise; 0.5, as in the first training, prefers the dim
        periphery (85% empty voxels in a 128^3 array of 1e6 photons at the peak).
    revert_if_worse : bool
        Return a copy of the original model when the held-out PCC did not rise.
    seed : int
        Seed of the portion choice, the artificial gaps and the batch order.
    exclude_mask : bool ndarray, same shape, optional
        Other voxels no portion may contain: the rest of the detector mask (hot pixels,
        aliens), whose values are not measurements.
    num_threads : int or None
        torch CPU threads during the call (restored afterwards). 1 by default: on a 2-core
        machine shared with other jobs, torch's default of 2 threads is several times slower.
        None keeps torch's setting.
    progress : bool
        Show a tqdm progress bar over the steps.
    eval_every : int, optional
        Also score the held-out portions every this many steps (``result.history``), to see
        how many steps are worth their time.
    callback : callable, optional
        ``callback(step, model)`` after each of those evaluations, the model in eval mode
        (e.g. to inpaint the real gap with it); it must not modify the model.

    Returns
    -------
    FinetuneResult
        The tuned model, the held-out PCC and loss before and after, the loss curve, the
        time taken. ``result.summary()`` says in words whether it helped.

    Raises
    ------
    ValueError
        Bad shapes or values, no gap band to copy the width of, an array too small to
        hold training (and held-out) portions away from the gap.
    """
    import torch

    from bcdi_gapfill.nn.dataset import WINDOW, GapPortionDataset
    from bcdi_gapfill.nn.train import gap_loss

    t_start = time.perf_counter()
    cpu_start = time.process_time()
    counts, gap = check_pattern(counts, gap_mask)
    n_portions = _check_int(n_portions, "n_portions", 1)
    steps = _check_int(steps, "steps", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    holdout = _check_int(holdout, "holdout", 0)
    seed = _check_int(seed, "seed", 0)
    lr = _check_float(lr, "lr")
    if loss not in ("poisson", "paper"):
        raise ValueError(f"unknown loss {loss!r}; choose 'poisson' or 'paper'")
    loss_key = "deviance" if loss == "poisson" else "loss"
    time_budget_s = _check_float(time_budget_s, "time_budget_s", allow_none=True)
    cross_probability = _check_float(cross_probability, "cross_probability", positive=False)
    periphery_power = _check_float(periphery_power, "periphery_power", positive=False)
    if not 0.0 <= cross_probability <= 1.0:
        raise ValueError(f"cross_probability must be in 0..1, got {cross_probability}")
    if num_threads is not None:
        num_threads = _check_int(num_threads, "num_threads", 1)
    if eval_every is not None:
        eval_every = _check_int(eval_every, "eval_every", 1)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    if any(n < WINDOW for n in counts.shape):
        raise ValueError(f"array shape {counts.shape} is smaller than the {WINDOW}^3 portion on some axis; "
                         "fine-tuning needs portions of the array")
    if widths is None:
        real_width = gap_width(gap)
        if real_width == 0:
            raise ValueError("the gap mask holds no gap band (no pixel masked in every frame) to copy the "
                             "width of; pass widths=(W,) for the artificial gaps")
        widths = (real_width,)
    widths = tuple(_check_int(w, "widths entry", 1) for w in widths) if not np.isscalar(widths) else \
        (_check_int(widths, "widths", 1),)
    if not widths:
        raise ValueError("widths must hold at least one gap width")
    if max(widths) > WINDOW - 8:
        raise ValueError(f"gap width {max(widths)} is too wide for the {WINDOW}^3 portions of the model "
                         f"(at most {WINDOW - 8} pixels)")

    # Separate streams: the held-out set does not depend on n_portions, so that runs with
    # different settings are scored on the same portions.
    rng, holdout_rng = np.random.default_rng((seed, 0)), np.random.default_rng((seed, 1))
    exclude = _dilated_gap(gap, _GAP_MARGIN)
    if exclude_mask is not None:
        extra = np.asarray(exclude_mask)
        if extra.dtype != bool:
            raise TypeError(f"exclude_mask must be a boolean array, got dtype {extra.dtype}")
        if extra.shape != counts.shape:
            raise ValueError(f"exclude_mask shape {extra.shape} does not match data shape {counts.shape}")
        exclude |= extra
    if holdout:
        split_axis = int(np.argmax(counts.shape))
        length = counts.shape[split_axis]
        if length < 2 * WINDOW:
            raise ValueError(f"array shape {counts.shape}: the longest axis must hold two {WINDOW}-voxel "
                             "portions to keep held-out portions apart from training ones "
                             f"(>= {2 * WINDOW}); pass holdout=0")
        shape = [1, 1, 1]
        shape[split_axis] = length
        second_half = np.broadcast_to((np.arange(length) >= length // 2).reshape(shape), counts.shape)
        train_bank = _cut_portions(counts, exclude | second_half, n_portions, rng, periphery_power)
        holdout_bank = _cut_portions(counts, exclude | ~second_half, holdout, holdout_rng, periphery_power)
        if len(holdout_bank) == 0:
            raise ValueError("no held-out portion fits in the second half of the array away from the gap "
                             f"(array {counts.shape}); pass holdout=0")
    else:
        train_bank = _cut_portions(counts, exclude, n_portions, rng, periphery_power)
        holdout_bank = None
    if len(train_bank) == 0:
        raise ValueError(f"no {WINDOW}^3 portion of the array {counts.shape} avoids the gap (and its "
                         f"{_GAP_MARGIN}-pixel margin){' in the first half' if holdout else ''}; "
                         "the array is too small to fine-tune on" + ("; try holdout=0" if holdout else ""))
    if len(train_bank) < n_portions:
        warnings.warn(f"only {len(train_bank)} training portions fit away from the gap (asked {n_portions})",
                      RuntimeWarning, stacklevel=2)

    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        base, identity = _base_model(model)
        tuned = copy.deepcopy(base)
        # The copy is no longer the file `load_model` read: keep only the card's gap limit.
        tuned.gapfill_info = {"name": "finetuned", "finetuned_from": identity.get("base_sha256")}
        if "max_gap_width" in identity:
            tuned.gapfill_info["max_gap_width"] = identity["max_gap_width"]
        eval_kw = {"cross_probability": cross_probability}
        train_eval_bank = _subset(train_bank, _TRAIN_EVAL_PORTIONS)
        train_before = evaluate_portions(base, train_eval_bank, widths, seed=seed + 2, **eval_kw)
        held_before = evaluate_portions(base, holdout_bank, widths, seed=seed + 1, **eval_kw) \
            if holdout_bank is not None else None

        dataset = GapPortionDataset(train_bank, widths, cross_probability=cross_probability, augment=True,
                                seed=seed, with_counts=True)
        optimiser = torch.optim.Adam(tuned.parameters(), lr=lr)
        losses: list[float] = []
        history: list[dict[str, float]] = []
        aside = aside_cpu = 0.0  # seconds spent in the periodic evaluations and callbacks
        tuned.train()
        order = np.empty(0, int)
        from tqdm import tqdm
        bar = tqdm(total=steps, disable=not progress, desc="fine-tuning", unit="step")
        for _ in range(steps):
            if time_budget_s is not None and time.perf_counter() - t_start - aside >= time_budget_s:
                break
            if len(order) < batch_size:
                order = np.concatenate([order, rng.permutation(len(dataset))])
            idx, order = order[:batch_size], order[batch_size:]
            inputs, target, gap_t, counts_t, scale_t = next(_batches(dataset, idx, batch_size))
            pred = tuned(inputs.contiguous(memory_format=torch.channels_last_3d), gap_t)
            if loss == "poisson":
                value = _poisson_deviance(pred, counts_t, gap_t, scale_t)
            else:
                value, _ = gap_loss(pred, target, gap_t, inputs[:, :1])
            optimiser.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(tuned.parameters(), 1.0)
            optimiser.step()
            losses.append(float(value.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if eval_every and len(losses) % eval_every == 0:
                t_aside, cpu_aside = time.perf_counter(), time.process_time()
                entry = {"step": len(losses), "seconds": t_aside - t_start - aside,
                         "cpu_seconds": cpu_aside - cpu_start - aside_cpu,
                         "loss": float(np.mean(losses[-eval_every:]))}
                if holdout_bank is not None:
                    held = evaluate_portions(tuned, holdout_bank, widths, seed=seed + 1, **eval_kw)
                    gain, gain_se = _paired_gain(held_before["pccs"], held["pccs"])
                    entry.update(holdout_pcc=held["pcc"], holdout_loss=held[loss_key], holdout_pcc_gain=gain,
                                 holdout_pcc_gain_se=gain_se)
                history.append(entry)
                if callback is not None:
                    tuned.eval()
                    callback(len(losses), tuned)
                    tuned.train()
                aside += time.perf_counter() - t_aside
                aside_cpu += time.process_time() - cpu_aside
        bar.close()
        tuned.eval()
        for param in tuned.parameters():
            param.requires_grad_(False)
        train_after = evaluate_portions(tuned, train_eval_bank, widths, seed=seed + 2, **eval_kw)
        held_after = evaluate_portions(tuned, holdout_bank, widths, seed=seed + 1, **eval_kw) \
            if holdout_bank is not None else None
    finally:
        torch.set_num_threads(threads_before)

    nan = float("nan")
    gain, gain_se = _paired_gain(held_before["pccs"], held_after["pccs"]) if held_before else (nan, nan)
    improved = None if held_before is None else bool(gain > 0)
    reverted = bool(improved is False and revert_if_worse)
    base.eval()
    for param in base.parameters():
        param.requires_grad_(False)
    settings = {"n_portions": n_portions, "steps": steps, "batch_size": batch_size, "lr": lr, "loss": loss,
                "time_budget_s": time_budget_s, "holdout": holdout, "widths": list(widths),
                "cross_probability": cross_probability, "periphery_power": periphery_power, "seed": seed,
                "gap_margin": _GAP_MARGIN, **identity}
    result = FinetuneResult(
        model=base if reverted else tuned,
        pcc_before=held_before["pcc"] if held_before else nan,
        pcc_after=held_after["pcc"] if held_after else nan, pcc_gain=gain, pcc_gain_se=gain_se,
        holdout_loss_before=held_before[loss_key] if held_before else nan,
        holdout_loss_after=held_after[loss_key] if held_after else nan,
        train_loss_before=train_before[loss_key], train_loss_after=train_after[loss_key],
        improved=improved, reverted=reverted, losses=losses, steps=len(losses), n_portions=len(train_bank),
        n_holdout=len(holdout_bank) if holdout_bank is not None else 0, widths=widths,
        seconds=time.perf_counter() - t_start, cpu_seconds=time.process_time() - cpu_start, settings=settings,
        history=history)
    if improved is False:
        warnings.warn(f"fine-tuning did not raise the held-out in-gap PCC ({result.pcc_before:.5f} -> "
                      f"{result.pcc_after:.5f}); "
                      + ("the original model is returned" if reverted
                         else "the tuned model is returned anyway (revert_if_worse=False)"),
                      RuntimeWarning, stacklevel=2)
    return result


def _subset(bank, n: int):
    from bcdi_gapfill.nn.dataset import PortionBank
    return PortionBank(bank.log_counts[:n], bank.log_expected[:n], bank.mean_counts[:n],
                       bank.oversampling[:n])


# Keywords of `finetune` that `inpaint(..., finetune={...})` passes on, and their defaults
# (the command line's too).
FINETUNE_DEFAULTS = {name: p.default for name, p in inspect.signature(finetune).parameters.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY}
FINETUNE_OPTIONS = tuple(name for name in FINETUNE_DEFAULTS if name != "model")


def finetuned_for_inpaint(data: np.ndarray, gap: np.ndarray, model: Any, options: bool | dict,
                          method: str) -> Any:
    """The model `inpaint(..., finetune=options)` uses: ``model`` fine-tuned on ``data``.

    ``options`` is True (the defaults of `finetune`) or a dict of its keyword options.
    Returns ``model`` unchanged for ``finetune=False`` or an array without gap voxels.
    """
    if options is False:
        return model
    if method != "model":
        raise ValueError(f"finetune applies to method='model', got method={method!r}")
    if options is True:
        options = {}
    elif not isinstance(options, dict):
        raise TypeError(f"finetune must be a bool or a dict of options, got {type(options).__name__}")
    unknown = sorted(set(options) - set(FINETUNE_OPTIONS))
    if unknown:
        raise TypeError(f"unknown finetune option {unknown[0]!r}; known: {', '.join(FINETUNE_OPTIONS)}")
    if not gap.any():
        return model
    return finetune(data, gap, model=model, **options).model


def finetuned_weights_path(data_path: str | Path) -> Path:
    """``<data stem>_finetuned.pt`` in the data file's directory."""
    data_path = Path(data_path)
    return data_path.with_name(data_path.stem + "_finetuned.pt")


def save_finetuned(result: FinetuneResult, path: str | Path, *, overwrite: bool = False,
                   protect: list[str | Path] | None = None, extra: dict | None = None) -> dict:
    """Write the tuned weights and their model card ``<path>.json``, atomically.

    Parameters
    ----------
    result : FinetuneResult
    path : path
        Weights file to write, e.g. `finetuned_weights_path(data_file)`.
    overwrite : bool
        Replace existing weights and card; otherwise either one existing is an error.
    protect : list of paths, optional
        Paths never written (the input files). The shipped weights and their card are
        always protected.
    extra : dict, optional
        More entries for the model card (e.g. the data file).

    Returns
    -------
    dict
        The model card written (``sha256`` is checked by `load_model` at every load).
    """
    import torch

    if not isinstance(result, FinetuneResult):
        raise TypeError(f"result must be a FinetuneResult, got {type(result).__name__}")
    path = Path(path)
    card_path = path.with_suffix(".json")
    if path.suffix != ".pt":
        raise ValueError(f"fine-tuned weights are written as a .pt file, got {path}")
    shipped = [DEFAULT_WEIGHTS, DEFAULT_WEIGHTS.with_suffix(".json")]
    guarded = shipped + [Path(p) for p in (protect or [])]
    for target in (path, card_path):
        if any(target.resolve() == Path(g).resolve() for g in guarded):
            raise ValueError(f"refusing to write {target}: it is "
                             + ("the shipped model" if any(target.resolve() == s.resolve() for s in shipped)
                                else "a protected input"))
        if not overwrite and target.exists():
            raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    net = result.model
    state_dict = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    buffer = _io.BytesIO()
    torch.save({"config": net.config.to_dict(), "state_dict": state_dict}, buffer)
    payload = buffer.getvalue()
    import hashlib
    sha = hashlib.sha256(payload).hexdigest()
    card = {"name": path.stem, "sha256": sha, "architecture": net.config.to_dict(),
            "parameters": int(sum(v.numel() for v in state_dict.values())),
            "finetuned": True, "bcdi_gapfill_version": __version__,
            "finetune": dict(result.settings),
            "steps_run": result.steps, "n_portions_used": result.n_portions,
            "n_holdout_used": result.n_holdout,
            "seconds": round(result.seconds, 1), "cpu_seconds": round(result.cpu_seconds, 1),
            "holdout_pcc_before": result.pcc_before, "holdout_pcc_after": result.pcc_after,
            "holdout_pcc_gain": result.pcc_gain, "holdout_pcc_gain_se": result.pcc_gain_se,
            "holdout_loss_before": result.holdout_loss_before,
            "holdout_loss_after": result.holdout_loss_after,
            "train_loss_before": result.train_loss_before, "train_loss_after": result.train_loss_after,
            "improved": result.improved, "reverted_to_original": result.reverted, **(extra or {})}
    if "max_gap_width" in result.settings:
        card["max_gap_width"] = result.settings["max_gap_width"]
    # Card first, weights second: a reader that finds the weights finds the matching card.
    atomic_write_text(card_path, json.dumps(card, indent=2, default=str), overwrite, protect=guarded)
    atomic_write_bytes(path, payload, overwrite, protect=guarded)
    clear_model_cache()  # a replaced file under the same path must not be served from the cache
    return card
