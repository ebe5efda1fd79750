"""Gap inpainting of 3D arrays of any size with the patching U-Net.

The public entry point is :func:`inpaint`, in the style of
``skimage.restoration.inpaint_biharmonic(image, mask)``.

Window placement
----------------
Gap voxels are covered by 32^3 windows. Straight gap bands (planes of missing detector
rows or columns, as chip gaps are) are found first: for each band the windows are centred
on it across the band and slide along it with step ``stride`` (the paper's "skip pixel"
parameter plus one), as the paper slides its window along the gap. Gap voxels that belong
to no band (dead pixels, short segments) get windows on a regular grid. Windows are
batched and predicted in inference mode, one batch at a time, so memory stays bounded by
the accumulators over the gap voxels' bounding box.

Blending
--------
Overlapping predictions are averaged in the log1p domain with weights. ``blend="hann"``
(default) weights each window by a separable sin^2 taper, which sums to a constant at
stride = window/2 and fades every window's edges out, so there are no square seams even
at large strides; ``blend="mean"`` is the paper's uniform average.

Uncertainty
-----------
With ``return_uncertainty=True`` each voxel also gets the weighted standard deviation of
all the predictions that covered it, in log1p(counts) units: the spread between
overlapping windows and, with ``flips=True``, between flipped views of each window (a
flip of the detector axes is a valid view of a diffraction pattern, so the network should
agree with itself).

Arrays are (frames, rows, columns) photon counts.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["inpaint", "load_model", "default_model_info", "plan_windows", "DEFAULT_WEIGHTS",
           "CLASSICAL_METHODS"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "gapfill_default.pt"
CLASSICAL_METHODS = ("biharmonic", "linear", "cubic", "nearest", "zero")
# A band is a plane of the gap when at least this fraction of it is missing.
_BAND_FILL = 0.9


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _card_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


@functools.lru_cache(maxsize=4)
def _load_cached(path_str: str, device_str: str):
    import torch
    from bcdi_gapfill.model import build_model

    path = Path(path_str)
    if not path.is_file():
        raise FileNotFoundError(f"model weights not found: {path}")
    card_file = _card_path(path)
    card: dict[str, Any] = {}
    if card_file.is_file():
        card = json.loads(card_file.read_text())
        expected = card.get("sha256")
        if expected and _sha256(path) != expected:
            raise ValueError(f"weights file {path} is corrupted or was replaced: its SHA-256 does not match "
                             f"the model card {card_file.name} ({expected[:12]}...)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model = build_model(payload["config"])
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:  # torch raises many kinds; the user needs to know the file is bad
        raise ValueError(f"cannot load model weights from {path}: not a bcdi-gapfill weights file "
                         f"or corrupted ({type(exc).__name__}: {exc})") from None
    model.eval().to(torch.device(device_str), memory_format=torch.channels_last_3d)
    info = {"weights": str(path), "sha256": card.get("sha256") or _sha256(path),
            "config": payload["config"], **{k: v for k, v in card.items() if k in ("max_gap_width", "name")}}
    return model, info


def _device(device: str | None) -> str:
    import torch
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def load_model(weights: str | Path | None = None, device: str | None = None):
    """Load (once, then cached) a model and its info dict; ``None`` is the shipped default."""
    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    return _load_cached(str(path.resolve()), _device(device))


def default_model_info() -> dict:
    """Path, SHA-256 and configuration of the shipped default weights."""
    return dict(load_model(None, "cpu")[1])


def _validate(data: Any, gap_mask: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(data, np.ndarray):
        try:
            data = np.asarray(data)
        except Exception:
            raise TypeError(f"data must be a numpy array, got {type(data).__name__}") from None
    if data.dtype == object or not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)
                                    or data.dtype == bool):
        raise TypeError(f"data must hold real numbers (photon counts), got dtype {data.dtype}")
    if data.ndim != 3:
        raise ValueError(f"data must be 3D (frames, rows, columns), got {data.ndim}D with shape {data.shape}")
    if data.size == 0:
        raise ValueError(f"data is empty (shape {data.shape})")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise ValueError(f"data holds {bad} NaN or infinite values; replace them and mark them in gap_mask")
    if (data < 0).any():
        raise ValueError(f"data holds {int((data < 0).sum())} negative values (min {data.min()}); PyNX marks "
                         "masked pixels with negative intensities: pass them through gap_mask instead")
    gap = np.asarray(gap_mask)
    if gap.dtype != bool:
        raise TypeError(f"gap_mask must be a boolean array, got dtype {gap.dtype}")
    if gap.shape != data.shape:
        raise ValueError(f"gap_mask shape {gap.shape} does not match data shape {data.shape}")
    if gap.all():
        raise ValueError("gap_mask covers every voxel: there is nothing measured to inpaint from")
    return data, gap


def _bands(gap: np.ndarray, axis: int) -> list[tuple[int, int]]:
    """Runs of consecutive planes along ``axis`` that are (almost) entirely gap."""
    other = tuple(a for a in range(3) if a != axis)
    full = gap.mean(axis=other) >= _BAND_FILL
    runs, start = [], None
    for i, f in enumerate(np.append(full, False)):
        if f and start is None:
            start = i
        elif not f and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _grid(n: int, window: int, stride: int) -> list[int]:
    last = n - window
    origins = list(range(0, last + 1, stride))
    if origins[-1] != last:
        origins.append(last)
    return origins


def plan_windows(gap_mask: np.ndarray, window: int = 32, stride: int = 8, *,
                 max_band_width: int | None = None) -> list[tuple[int, int, int]]:
    """Origins (frame, row, column) of the windows that cover every gap voxel.

    Bands along the detector axes (1, 2) get windows centred on them and sliding along them
    by ``stride``; remaining gap voxels get windows of a regular grid of step ``stride``.
    Raises ValueError when a band is wider than ``max_band_width``.
    """
    shape = gap_mask.shape
    if any(n < window for n in shape):
        raise ValueError(f"array shape {shape} is smaller than the {window}^3 window on some axis; "
                         "use a classical method (method='biharmonic') for such small arrays")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    origins: set[tuple[int, int, int]] = set()
    covered = np.zeros(shape, bool)
    for axis in (2, 1):
        for start, stop in _bands(gap_mask, axis):
            width = stop - start
            if max_band_width is not None and width > max_band_width:
                raise ValueError(f"gap band of {width} pixels along axis {axis} (indices {start}:{stop}) is wider "
                                 f"than the model serves ({max_band_width}); use method='biharmonic'")
            centre = int(np.clip((start + stop) // 2 - window // 2, 0, shape[axis] - window))
            others = [a for a in range(3) if a != axis]
            for o1 in _grid(shape[others[0]], window, stride):
                for o2 in _grid(shape[others[1]], window, stride):
                    origin = [0, 0, 0]
                    origin[axis], origin[others[0]], origin[others[1]] = centre, o1, o2
                    origins.add(tuple(origin))
            index = [slice(None)] * 3
            index[axis] = slice(start, stop)
            covered[tuple(index)] = True
    rest = gap_mask & ~covered
    if rest.any():
        grids = [_grid(n, window, stride) for n in shape]
        for f in grids[0]:
            for r in grids[1]:
                for c in grids[2]:
                    if rest[f:f + window, r:r + window, c:c + window].any():
                        origins.add((f, r, c))
    return sorted(origins)


def _taper(window: int, blend: str) -> np.ndarray:
    if blend == "mean":
        return np.ones((window,) * 3, np.float32)
    if blend != "hann":
        raise ValueError(f"unknown blend {blend!r}; choose 'hann' or 'mean'")
    profile = np.sin(np.pi * (np.arange(window) + 0.5) / window) ** 2
    return (profile[:, None, None] * profile[None, :, None] * profile[None, None, :]).astype(np.float32)


def _predict_windows(model, batch_counts: np.ndarray, batch_gap: np.ndarray, device: str,
                     flips: bool) -> np.ndarray:
    """log1p(counts) predicted for a batch of windows, (B, n_views, D, H, W)."""
    import torch
    from bcdi_gapfill.dataset import log_normalise

    counts_t = torch.from_numpy(batch_counts).to(device)
    gap_t = torch.from_numpy(batch_gap).to(device)
    log_norm, scale = log_normalise(counts_t, gap_t)
    views = [()] + ([(2,), (3,), (2, 3)] if flips else [])
    outputs = []
    for dims in views:
        x = torch.stack([log_norm, gap_t.float()], dim=1)[:, : model.config.in_channels]
        g = gap_t[:, None]
        if dims:
            x, g = x.flip(dims), g.flip(dims)
        y = model(x.contiguous(memory_format=torch.channels_last_3d), g)
        if dims:
            y = y.flip(dims)
        outputs.append(y[:, 0] * scale[:, None, None, None])
    return torch.stack(outputs, dim=1).float().cpu().numpy()


def inpaint(data: np.ndarray, gap_mask: np.ndarray, *, method: str = "model", model: Any = None,
            stride: int | None = None, device: str | None = None, batch_size: int | None = None,
            blend: str = "hann", flips: bool = False, return_uncertainty: bool = False,
            progress: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Fill the detector-gap voxels of a 3D diffraction pattern.

    Parameters
    ----------
    data : ndarray, shape (frames, rows, columns)
        Photon counts, any real dtype, finite and >= 0. Each axis must be at least 32 for the
        model (the window); smaller arrays are refused with a clear message.
    gap_mask : bool ndarray, same shape
        True where the detector measured nothing (chip gaps, dead pixels).
    method : str
        ``"model"`` (the patching U-Net) or a classical fill: ``"biharmonic"`` (log-domain),
        ``"linear"``, ``"cubic"``, ``"nearest"``, ``"zero"``.
    model : path, `PatchUNet` or None
        Weights file or model; None uses the shipped default weights (loaded once, cached).
    stride : int, optional
        Step in voxels between windows sliding along a gap (default 8; 1 = the paper's
        skip 0, best and slowest).
    device : str, optional
        ``"cuda"`` when present, else ``"cpu"`` by default.
    batch_size : int, optional
        Windows per forward pass (default 16 on CPU, 128 on GPU).
    blend : {"hann", "mean"}
        Weighting of overlapping windows (see module docstring).
    flips : bool
        Also predict the three flips of the detector axes and average (test-time augmentation).
    return_uncertainty : bool
        Also return the per-voxel spread of the predictions (log1p units; 0 outside the gap).
    progress : bool
        Show a tqdm progress bar over batches of windows.

    Returns
    -------
    filled : ndarray float32, same shape
        Measured voxels bit-identical to ``data`` (as float32), gap voxels predicted, finite
        and >= 0. The caller's arrays are not modified.
    uncertainty : ndarray float32, same shape (only with ``return_uncertainty``)
    """
    data, gap = _validate(data, gap_mask)
    filled = data.astype(np.float32, copy=True)
    if not gap.any():
        return (filled, np.zeros_like(filled)) if return_uncertainty else filled
    if method in CLASSICAL_METHODS:
        from bcdi_gapfill.classical import fill_gap
        result = fill_gap(filled, gap, method=method, log=True)
        return (result, np.zeros_like(result)) if return_uncertainty else result
    if method != "model":
        raise ValueError(f"unknown method {method!r}; choose 'model' or one of {CLASSICAL_METHODS}")

    import torch
    from tqdm import tqdm

    dev = _device(device)
    if model is None or isinstance(model, (str, Path)):
        net, info = load_model(model, dev)
    else:
        net, info = model.to(dev).eval(), {}
    window = net.config.window
    stride = 8 if stride is None else int(stride)
    max_width = info.get("max_gap_width", window - 8)
    origins = plan_windows(gap, window, stride, max_band_width=max_width)
    batch_size = batch_size or (128 if dev.startswith("cuda") else 16)
    taper = _taper(window, blend)

    # Accumulators only over the bounding box of the gap (plus a window) to bound memory.
    lo = np.array([min(o[a] for o in origins) for a in range(3)])
    hi = np.array([max(o[a] for o in origins) + window for a in range(3)])
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    # float64 when the spread is wanted: E[x^2] - E[x]^2 must vanish where predictions agree.
    acc = np.float64 if return_uncertainty else np.float32
    sum_w = np.zeros(hi - lo, acc)
    sum_x = np.zeros_like(sum_w)
    sum_x2 = np.zeros_like(sum_w) if return_uncertainty else None
    n_batches = -(-len(origins) // batch_size)
    with torch.inference_mode():
        for b in tqdm(range(n_batches), disable=not progress, desc="inpainting", unit="batch"):
            chunk = origins[b * batch_size:(b + 1) * batch_size]
            sl = [tuple(slice(o[a], o[a] + window) for a in range(3)) for o in chunk]
            batch_counts = np.stack([filled[s] for s in sl]).astype(np.float32)
            batch_gap = np.stack([gap[s] for s in sl])
            pred = _predict_windows(net, batch_counts, batch_gap, dev, flips)
            for o, views in zip(chunk, pred):
                rel = tuple(slice(o[a] - lo[a], o[a] - lo[a] + window) for a in range(3))
                for view in views.astype(acc):
                    sum_w[rel] += taper
                    sum_x[rel] += taper * view
                    if sum_x2 is not None:
                        sum_x2[rel] += taper * view * view
    gap_box = gap[box]
    mean_log = sum_x[gap_box] / sum_w[gap_box]
    region = filled[box]
    region[gap_box] = np.maximum(np.expm1(mean_log), 0.0).astype(np.float32)
    if not return_uncertainty:
        return filled
    uncertainty = np.zeros_like(filled)
    var = sum_x2[gap_box] / sum_w[gap_box] - mean_log ** 2
    var[var < 1e-12 * (1.0 + mean_log ** 2)] = 0.0  # round-off of identical predictions
    uncertainty[box][gap_box] = np.sqrt(var)
    return filled, uncertainty
