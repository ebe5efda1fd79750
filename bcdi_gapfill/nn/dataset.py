"""Training portions: 32^3 crops of diffraction patterns with artificial gaps.

Following the paper (section 2.1-2.2): about ten portions per pattern, preferring peripheral,
lower-intensity regions over the peak centre but never empty ones; an artificial gap of the
model's width in the middle along a detector axis, a second perpendicular band at a random
position on part of them (cross gap); random flips and swaps of the two detector axes.

Normalisation (`log_normalise`) is log1p then division by the largest log value among the
*measured* voxels of the portion, since at inference the gap content is unknown. The scale is
kept so that `log_denormalise` inverts it exactly.

Arrays are (frames, rows, columns); a batch of portions is (N, 32, 32, 32).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from bcdi_gapfill.core.simulate import simulate_pattern

__all__ = [
    "WINDOW", "MIN_SCALE", "log_normalise", "log_denormalise", "choose_portions", "portion_gap_mask",
    "PortionBank", "build_portion_bank", "signal_pcc", "select_portions", "cached_portion_bank",
    "GapPortionDataset", "portions_from_array", "peak_portion_corners", "PLACEMENTS",
]

WINDOW = 32
# Smallest normalisation scale: log1p of one photon, so that an all-empty portion maps
# counts of order one to order one rather than dividing by zero.
MIN_SCALE = float(np.log1p(1.0))


def log_normalise(counts: np.ndarray | torch.Tensor, gap_mask: np.ndarray | torch.Tensor,
                  ) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
    """Log-scale and normalise portions to 0..1 using only measured voxels.

    Parameters
    ----------
    counts : (..., D, H, W) array or tensor of photon counts, >= 0
        One portion or a batch of them (leading axes are batch axes).
    gap_mask : bool, same shape
        True where the detector measured nothing.

    Returns
    -------
    log_norm : same shape, float32
        ``log1p(counts) / scale`` with gap voxels set to 0.
    scale : shape (...,) (one per portion)
        ``max(log1p(counts) over measured voxels, MIN_SCALE)``.
    """
    is_torch = isinstance(counts, torch.Tensor)
    xp_log = torch.log1p if is_torch else np.log1p
    logc = xp_log(counts.float() if is_torch else counts.astype(np.float32))
    measured = ~gap_mask
    masked = logc * measured
    if is_torch:
        scale = masked.flatten(-3).amax(-1).clamp_min(MIN_SCALE)
        return masked / scale[..., None, None, None], scale
    scale = np.maximum(masked.reshape(*masked.shape[:-3], -1).max(-1), MIN_SCALE).astype(np.float32)
    return (masked / np.asarray(scale)[..., None, None, None]).astype(np.float32), scale


def log_denormalise(log_norm: np.ndarray | torch.Tensor, scale) -> np.ndarray | torch.Tensor:
    """Invert `log_normalise`: counts = expm1(log_norm * scale), clipped at 0."""
    if isinstance(log_norm, torch.Tensor):
        return torch.expm1(log_norm * torch.as_tensor(scale)[..., None, None, None]).clamp_min(0)
    return np.maximum(np.expm1(log_norm * np.asarray(scale, np.float32)[..., None, None, None]), 0)


def choose_portions(counts: np.ndarray, n: int, rng: np.random.Generator, window: int = WINDOW,
                    min_occupancy: float = 0.02, periphery_power: float = 0.5) -> list[tuple[int, int, int]]:
    """Pick ``n`` portion corners, preferring peripheral lower-intensity regions.

    A candidate corner is kept only if at least ``min_occupancy`` of its voxels hold photons
    (never empty portions). Candidates are drawn with a probability falling as the portion's
    mean count to the power ``periphery_power``, so the bright peak centre is still sampled
    but less often than the fringes around it, as in the paper.
    """
    dims = counts.shape
    if any(d < window for d in dims):
        raise ValueError(f"array shape {dims} is smaller than the {window}^3 window")
    n_cand = max(8 * n, 64)
    corners = np.stack([rng.integers(0, d - window + 1, size=n_cand) for d in dims], axis=1)
    occupied = (counts > 0)
    stats = []
    for f, r, c in corners:
        block = counts[f:f + window, r:r + window, c:c + window]
        stats.append((occupied[f:f + window, r:r + window, c:c + window].mean(), block.mean()))
    stats = np.array(stats)
    ok = stats[:, 0] >= min_occupancy
    if not ok.any():
        return []
    weights = np.where(ok, 1.0 / np.maximum(stats[:, 1], 1e-3) ** periphery_power, 0.0)
    weights /= weights.sum()
    pick = rng.choice(n_cand, size=min(n, int(ok.sum())), replace=False, p=weights)
    return [tuple(int(v) for v in corners[i]) for i in pick]


def portion_gap_mask(width: int, rng: np.random.Generator, *, cross_probability: float = 0.3,
                     window: int = WINDOW) -> np.ndarray:
    """Gap mask of one portion: a vertical band of ``width`` columns in the middle,
    plus (with ``cross_probability``) a horizontal band of rows at a random position."""
    gap = np.zeros((window,) * 3, bool)
    start = (window - width) // 2
    gap[:, :, start:start + width] = True
    if rng.random() < cross_probability:
        row = int(rng.integers(0, window - width + 1))
        gap[:, row:row + width, :] = True
    return gap


@dataclass
class PortionBank:
    """Gap-free portions held in memory, as log1p values (float16 to halve the memory).

    ``log_counts`` (N, 32, 32, 32): log1p of the noisy counts (the network input);
    ``log_expected`` (N, 32, 32, 32): log1p of the noise-free expectation (the target), or
    the counts again for measured data that has no expectation;
    ``mean_counts`` (N,) and ``oversampling`` (N,) for the evaluation's breakdowns.
    """

    log_counts: np.ndarray
    log_expected: np.ndarray
    mean_counts: np.ndarray
    oversampling: np.ndarray

    def __len__(self) -> int:
        return len(self.log_counts)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with h5py.File(tmp, "w") as h5:
            for name in ("log_counts", "log_expected", "mean_counts", "oversampling"):
                h5.create_dataset(name, data=getattr(self, name))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "PortionBank":
        with h5py.File(path, "r") as h5:
            return cls(**{k: h5[k][()] for k in ("log_counts", "log_expected", "mean_counts", "oversampling")})

    @classmethod
    def concatenate(cls, banks: Iterable["PortionBank"]) -> "PortionBank":
        banks = list(banks)
        return cls(*[np.concatenate([getattr(b, k) for b in banks])
                     for k in ("log_counts", "log_expected", "mean_counts", "oversampling")])


def portions_from_array(counts: np.ndarray, expected: np.ndarray | None, n: int,
                        rng: np.random.Generator, oversampling: float = float("nan"),
                        exclude_mask: np.ndarray | None = None, window: int = WINDOW) -> PortionBank:
    """Cut ``n`` cubic portions of ``window`` voxels a side from one array into a `PortionBank`.

    ``expected`` is the noise-free target when known (simulations); ``exclude_mask`` (bool,
    same shape) marks voxels that must not appear in any portion (a real gap, when cutting
    fine-tuning portions from a measured array).
    """
    source = counts if exclude_mask is None else np.where(exclude_mask, 0, counts)
    corners = choose_portions(source, n * 2 if exclude_mask is not None else n, rng, window=window)
    w = window
    if exclude_mask is not None:
        corners = [c for c in corners if not exclude_mask[c[0]:c[0] + w, c[1]:c[1] + w, c[2]:c[2] + w].any()][:n]
    return _cut_portions(counts, expected, corners, oversampling, window)


def peak_portion_corners(intensity: np.ndarray, n: int, rng: np.random.Generator,
                         radius: int | Sequence[int] = 24, window: int = WINDOW) -> list[tuple[int, int, int]]:
    """Corners of ``n`` portions centred within ``radius`` voxels (uniformly; one radius, or
    one per (frames, rows, columns) axis) of the brightest voxel of ``intensity``, clipped to
    the array: the bright fringes around the Bragg peak, which a detector gap near the peak
    crosses and `choose_portions` samples rarely."""
    dims = np.array(intensity.shape)
    if np.any(dims < window):
        raise ValueError(f"array shape {tuple(dims)} is smaller than the {window}^3 window")
    radii = np.broadcast_to(np.asarray(radius, int), (3,))
    peak = np.array(np.unravel_index(np.argmax(intensity), intensity.shape))
    return [tuple(int(v) for v in np.clip(peak + rng.integers(-radii, radii + 1) - window // 2,
                                          0, dims - window)) for _ in range(n)]


def _cut_portions(counts: np.ndarray, expected: np.ndarray | None, corners, oversampling: float,
                  window: int = WINDOW) -> PortionBank:
    w = window
    target = counts if expected is None else expected
    lc = np.stack([np.log1p(counts[f:f + w, r:r + w, c:c + w]) for f, r, c in corners]) if corners else \
        np.zeros((0, w, w, w), np.float32)
    le = np.stack([np.log1p(target[f:f + w, r:r + w, c:c + w]) for f, r, c in corners]) if corners else lc
    means = np.array([counts[f:f + w, r:r + w, c:c + w].mean() for f, r, c in corners], np.float32)
    return PortionBank(lc.astype(np.float16), le.astype(np.float16), means,
                       np.full(len(corners), oversampling, np.float32))


PLACEMENTS = ("periphery", "peak", "centre")
# "centre": the peak within 4 columns of the window's centre, where `portion_gap_mask` puts
# its vertical band (so the band runs through the central lobe or just beside it), and within
# 12 voxels on the other axes, as the windows stepping along a gap place it.
CENTRE_RADIUS = (12, 12, 4)


def _simulated_bank(args: tuple[int, int, int, str, int]) -> PortionBank:
    seed, size, n, placement, window = args
    pattern = simulate_pattern(size, seed)
    oversampling = float(np.mean(pattern.metadata["oversampling"]))
    if placement in ("peak", "centre"):
        corners = peak_portion_corners(pattern.expected, n, np.random.default_rng(seed + 9_000_000),
                                       radius=24 if placement == "peak" else CENTRE_RADIUS, window=window)
        return _cut_portions(pattern.counts, pattern.expected, corners, oversampling, window)
    rng = np.random.default_rng(seed + 7_000_000)
    return portions_from_array(pattern.counts, pattern.expected, n, rng, oversampling, window=window)


def build_portion_bank(n_patterns: int, *, first_seed: int = 0, size: int = 128,
                       portions_per_pattern: int = 10, workers: int = 1,
                       progress: bool = True, placement: str = "periphery", window: int = WINDOW) -> PortionBank:
    """Simulate ``n_patterns`` patterns (seeds first_seed..) and cut cubic portions of
    ``window`` voxels a side from each.

    ``placement``: ``"periphery"`` (`choose_portions`, the paper's preference for peripheral,
    lower-intensity regions), ``"peak"`` (`peak_portion_corners`, within 24 voxels of the
    Bragg peak) or ``"centre"`` (the peak within `CENTRE_RADIUS` of the window's centre, so the
    portion's gap band crosses the central lobe or runs beside it).
    """
    from tqdm import tqdm
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    jobs = [(first_seed + i, size, portions_per_pattern, placement, window) for i in range(n_patterns)]
    if workers > 1:
        from multiprocessing import get_context
        with get_context("spawn").Pool(workers) as pool:
            banks = list(tqdm(pool.imap(_simulated_bank, jobs, chunksize=4), total=len(jobs),
                              disable=not progress, desc="simulating"))
    else:
        banks = [_simulated_bank(j) for j in tqdm(jobs, disable=not progress, desc="simulating")]
    return PortionBank.concatenate(banks)


def cached_portion_bank(n_patterns: int, first_seed: int, size: int = 128,
                        cache_dir: str | Path | None = "runs/cache", workers: int | None = None, *,
                        portions_per_pattern: int = 10, placement: str = "periphery",
                        window: int = WINDOW) -> PortionBank:
    """`build_portion_bank`, cached on disk by (size, first seed, count, placement, window) so
    reruns and resumed trainings do not simulate again."""
    import os
    suffix = "" if (placement, portions_per_pattern) == ("periphery", 10) else \
        f"_{placement}{portions_per_pattern}"
    suffix += "" if window == WINDOW else f"_w{window}"
    cache = Path(cache_dir) / f"sim_{size}_{first_seed}_{n_patterns}{suffix}.h5" if cache_dir else None
    if cache is not None and cache.exists():
        return PortionBank.load(cache)
    bank = build_portion_bank(n_patterns, first_seed=first_seed, size=size, workers=workers or os.cpu_count() or 1,
                              portions_per_pattern=portions_per_pattern, placement=placement, window=window)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        bank.save(cache)
    return bank


def signal_pcc(bank: PortionBank) -> np.ndarray:
    """Per portion, the Pearson correlation of log1p counts with log1p of the noise-free
    expectation over the whole portion: near 1 where fringes dominate, near 0 where Poisson
    noise does. (N,) float. Needs a bank with an expectation (simulations)."""
    n = len(bank)
    out = np.empty(n)
    for i in range(n):
        a = bank.log_counts[i].astype(np.float64).ravel()
        b = bank.log_expected[i].astype(np.float64).ravel()
        a -= a.mean()
        b -= b.mean()
        out[i] = (a @ b) / (np.sqrt((a @ a) * (b @ b)) + 1e-12)
    return out


def select_portions(bank: PortionBank, index: np.ndarray) -> PortionBank:
    """The portions of ``bank`` at ``index`` (int array), as a new bank."""
    return PortionBank(bank.log_counts[index], bank.log_expected[index], bank.mean_counts[index],
                       bank.oversampling[index])


class GapPortionDataset(Dataset):
    """Portions with random artificial gaps, ready for the network.

    Each item is ``(inputs, target, gap)``: inputs (2, 32, 32, 32) = [log_norm with the gap
    zeroed, gap mask], target (1, 32, 32, 32) = normalised log1p of the expectation (clipped to
    0..``target_cap``; 1 is the window's brightest measured voxel), gap (1, 32, 32, 32) bool; with ``prefill`` (a function of the (1, 1, 32, 32, 32)
    log_norm and gap, e.g. `bcdi_gapfill.nn.model.compute_prefill`) a fourth item, the
    prefilled channel (1, 32, 32, 32), computed in the loader's worker. With ``with_counts``
    two more items: the counts (1, 32, 32, 32) whose log1p is the target before
    normalisation (``expm1`` of it, not clipped) and the normalisation scale (a 0-d tensor),
    which a loss on the count scale needs (fine-tuning's Poisson deviance). Gap widths are
    drawn from ``widths``; with ``augment`` the two detector axes are randomly flipped and
    swapped. With ``fixed=True`` the gap and augmentation of item i are the same at every
    call (validation, test).
    """

    def __init__(self, bank: PortionBank, widths: Iterable[int] = (3, 6, 9, 12), *,
                 cross_probability: float = 0.3, augment: bool = True, fixed: bool = False,
                 seed: int = 0, prefill: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 with_counts: bool = False, target_cap: float = 1.0):
        self.bank = bank
        self.target_cap = float(target_cap)
        self.prefill = prefill
        self.with_counts = with_counts
        self.widths = tuple(int(w) for w in widths)
        self.cross_probability = cross_probability
        self.augment = augment
        self.fixed = fixed
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.bank)

    def __getitem__(self, i: int):
        rng = np.random.default_rng((self.seed, i)) if self.fixed else self._rng
        width = int(rng.choice(self.widths))
        gap = portion_gap_mask(width, rng, cross_probability=self.cross_probability,
                               window=self.bank.log_counts.shape[-1])
        log_counts = self.bank.log_counts[i].astype(np.float32)
        log_expected = self.bank.log_expected[i].astype(np.float32)
        if self.augment:
            if rng.random() < 0.5:
                log_counts, log_expected = log_counts[:, ::-1], log_expected[:, ::-1]
            if rng.random() < 0.5:
                log_counts, log_expected = log_counts[:, :, ::-1], log_expected[:, :, ::-1]
            if rng.random() < 0.5:
                log_counts, log_expected = log_counts.swapaxes(1, 2), log_expected.swapaxes(1, 2)
                gap = gap.swapaxes(1, 2)
        scale = max(float((log_counts * ~gap).max()), MIN_SCALE)
        log_norm = np.where(gap, 0.0, log_counts / scale).astype(np.float32)
        target = np.clip(log_expected / scale, 0.0, self.target_cap).astype(np.float32)
        inputs = np.stack([log_norm, gap.astype(np.float32)])
        item = (torch.from_numpy(np.ascontiguousarray(inputs)),
                torch.from_numpy(np.ascontiguousarray(target[None])),
                torch.from_numpy(np.ascontiguousarray(gap[None])))
        if self.prefill is not None:
            item = (*item, self.prefill(item[0][None, :1], item[2][None])[0])
        if self.with_counts:
            item = (*item, torch.from_numpy(np.ascontiguousarray(np.expm1(log_expected)[None])),
                    torch.tensor(scale, dtype=torch.float32))
        return item
