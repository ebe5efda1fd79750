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
batched and predicted in inference mode, one batch at a time; the blending accumulators
hold only the gap voxels (a flat vector, not the gap's bounding box), and the memory a job
needs is estimated first (`estimate_memory`): a job that cannot fit raises MemoryError
before allocating, a batch that cannot fit is made smaller.

Context beyond the window
-------------------------
The default network corrects a biharmonic fill of the gap in the log domain (its
"prefill"). Trained on single 32^3 portions, it computes that fill inside each window,
where a wide gap has only ~10 measured voxels on each side. With ``prefill="global"``
(default) the fill is the log-domain biharmonic fill of the whole array
(`bcdi_gapfill.fill.classical.fill_gap`, one sparse solve over every gap voxel, seconds for a
128^3 cross gap), cropped to each window and normalised as the window is: the network
then corrects a fill that saw the whole pattern. On whole 128^3 arrays this lifted the
12-pixel gaps from below the log-biharmonic fill to above it, raised the 9-pixel ones a
little, and changed the 3-6 pixel gaps by less than 0.01 of headroom (docs/benchmarks.md). ``prefill="window"`` is the
per-window prefill the network was trained with. Models without a biharmonic prefill
(the paper's architecture) always see the window alone.

Speed
-----
Windows sharing a gap mask (all the windows sliding along a straight band, away from
crossings) are batched together, and the model's biharmonic prefill of their batch (a fixed
number of conjugate-gradient iterations, `PatchUNet.prefill`) is computed on the gap voxels
only, with one sparse matrix per mask, in float64: the same iterates as the model's dense
float32 prefill, within that prefill's own round-off (~1e-6 on the 0..1 normalised log
scale), 3-10x cheaper. The network then runs unchanged (channels-last on CPU). On a CPU
shared with other jobs, ``num_threads=1`` (or ``OMP_WAIT_POLICY=PASSIVE`` in the
environment) can be several times faster than the default thread count. Measured
figures and the stride/quality trade-off: docs/benchmarks.md.

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

import contextlib
import functools
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bcdi_gapfill.core.checks import check_pattern
from bcdi_gapfill.core.errors import InsufficientMemoryError
from bcdi_gapfill.core.methods import CLASSICAL_FILLS
from bcdi_gapfill.fill.classical import fill_gap
from bcdi_gapfill.nn.finetune import finetuned_for_inpaint
from bcdi_gapfill.nn.weights import DEFAULT_WEIGHTS, default_model_info, load_model, resolve_device

__all__ = ["inpaint", "load_model", "default_model_info", "plan_windows", "estimate_memory",
           "DEFAULT_WEIGHTS", "CLASSICAL_METHODS"]

#: The classical values of ``inpaint(method=...)`` (the registry's `CLASSICAL_FILLS`).
CLASSICAL_METHODS = CLASSICAL_FILLS
# A band is a plane of the gap when at least this fraction of it is missing.
_BAND_FILL = 0.9


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


# ---------------------------------------------------------------------------------------------
# Fast prefill: the model's biharmonic prefill, computed on the gap voxels only.
#
# ``PatchUNet.prefill`` runs a fixed number of conjugate-gradient iterations of
# `bcdi_gapfill.fill.classical.biharmonic_fill_torch` on each dense 32^3 window, from the across-gap
# linear fill. Those iterations only ever touch the gap voxels: the matrix is
# ``(L^2)[gap, gap]`` (``L`` the 7-point Neumann Laplacian of the window) and the vectors are
# zero elsewhere. Windows that slide along a straight gap share one gap mask, so here the
# matrix of each mask is assembled once as a sparse matrix and the iterations run as sparse
# matrix products on (gap voxels x windows) blocks: the same iterates (same start, same step
# lengths, same count, same clipping) in a different summation order. They run in float64:
# the result is then within ~3e-8 of a float64 run of the dense iterations, and differs from
# the model's dense float32 prefill only by that prefill's own round-off (~1e-6 of the 0..1
# normalised log range). 3-10x cheaper per window for band gaps (benchmarks/bench_components.py).
# The linear start is linear in the window values for a given mask and is likewise assembled
# once per mask as a sparse operator. Masks seen by fewer than ``_MIN_GROUP`` windows use the
# model's own dense prefill (building a plan costs about as much as one dense prefill).
# ---------------------------------------------------------------------------------------------

_MIN_GROUP = 2
_PLAN_CACHE = 8  # sparse plans kept per inpaint call (up to ~16 MB each)


@functools.lru_cache(maxsize=2)
def _laplacian_squared(shape: tuple[int, int, int]):
    """``L @ L`` for the Neumann 7-point graph Laplacian of a grid (scipy CSR, float64)."""
    from scipy import sparse

    def lap1d(n: int):
        diag = -2.0 * np.ones(n)
        diag[0] += 1.0
        diag[-1] += 1.0
        return sparse.diags([np.ones(n - 1), diag, np.ones(n - 1)], [-1, 0, 1])

    eye = [sparse.identity(n) for n in shape]
    lap = (sparse.kron(sparse.kron(lap1d(shape[0]), eye[1]), eye[2])
           + sparse.kron(sparse.kron(eye[0], lap1d(shape[1])), eye[2])
           + sparse.kron(sparse.kron(eye[0], eye[1]), lap1d(shape[2]))).tocsr()
    return (lap @ lap).tocsr()


def _linear_init_operator(gap: np.ndarray, passes: int = 3):
    """The across-gap linear start of the prefill CG as a sparse operator.

    Mirrors `bcdi_gapfill.fill.classical._torch_linear_init`: returns ``(W, fallback)`` with ``W``
    (n_gap x n_voxels, scipy CSR) such that the start at the gap voxels is ``W @ values``
    (values with the gap zeroed) and ``fallback`` (n_gap bool) marking the gap voxels that
    no pass reaches, which take the window's mean measured value.
    """
    from scipy import sparse

    shape = gap.shape
    size = gap.size
    strides = (shape[1] * shape[2], shape[2], 1)
    flat = np.arange(size).reshape(shape)
    ops = sparse.diags((~gap).ravel().astype(np.float64), format="csr")
    missing = gap.copy()
    for k in range(passes):
        if not missing.any():  # the remaining passes change nothing
            break
        dims = (1, 2) if k < passes - 1 else (0, 1, 2)
        known = ~missing
        w2 = np.zeros(shape)
        w1 = np.zeros(shape)
        terms = []
        for d in dims:
            n = shape[d]
            if n < 2:
                continue
            pos = np.broadcast_to(np.arange(n).reshape([-1 if a == d else 1 for a in range(3)]), shape)
            left = np.maximum.accumulate(np.where(known, pos, -1), axis=d)
            right = np.flip(np.minimum.accumulate(np.flip(np.where(known, pos, n), d), axis=d), d)
            has_l, has_r = left >= 0, right < n
            two = has_l & has_r & ~known
            one = (has_l ^ has_r) & ~known
            span = np.maximum(right - left, 1).astype(np.float64)
            dist = np.maximum(np.where(has_l, pos - left, right - pos), 1).astype(np.float64)
            weight = np.where(two, 1.0 / span, 1.0 / dist)
            w2 += np.where(two, weight, 0.0)
            w1 += np.where(one, weight, 0.0)
            terms.append((d, pos, left, right, has_l, two, one, (pos - left) / span, weight))
        fill2 = missing & (w2 > 0)
        fill1 = missing & ~fill2 & (w1 > 0)
        filled = fill2 | fill1
        keep = flat[~filled]
        rows, cols, vals = [keep], [keep], [np.ones(keep.size)]
        for d, pos, left, right, has_l, two, one, t, weight in terms:
            st = strides[d]
            sel = fill2 & two
            p, c = flat[sel], weight[sel] / w2[sel]
            rows += [p, p]
            cols += [p + (left[sel] - pos[sel]) * st, p + (right[sel] - pos[sel]) * st]
            vals += [c * (1.0 - t[sel]), c * t[sel]]
            sel = fill1 & one
            p, c = flat[sel], weight[sel] / w1[sel]
            rows.append(p)
            cols.append(p + (np.where(has_l[sel], left[sel], right[sel]) - pos[sel]) * st)
            vals.append(c)
        step = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                 shape=(size, size))
        ops = (step @ ops).tocsr()
        missing &= ~filled
    idx = np.flatnonzero(gap)
    return ops[idx], missing.ravel()[idx]


def _torch_csr(mat, device, dtype):
    import torch
    mat = mat.tocsr()
    mat.sort_indices()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(torch.from_numpy(mat.indptr.astype(np.int32)),
                                       torch.from_numpy(mat.indices.astype(np.int32)),
                                       torch.from_numpy(mat.data).to(dtype),
                                       size=mat.shape, device=device)


class _MaskPlan:
    """Sparse operators of the prefill CG for one window gap mask."""

    def __init__(self, gap: np.ndarray, init: str, device, dtype):
        import torch
        from scipy import sparse

        l2 = _laplacian_squared(gap.shape)
        idx = np.flatnonzero(gap)
        rows = l2[idx]
        self.n = idx.size
        self.idx = torch.from_numpy(idx).to(device)
        self.matrix = _torch_csr(rows[:, idx], device, dtype)  # (L^2)[gap, gap]
        self.fallback = None
        if init == "linear":
            start, fallback = _linear_init_operator(gap)
            # One product gives both the right-hand side -(L^2 u_known)[gap] and the start.
            self.rhs_and_start = _torch_csr(sparse.vstack([-rows, start]), device, dtype)
            if fallback.any():
                self.fallback = torch.from_numpy(fallback[:, None]).to(device)
        else:
            self.rhs_and_start = _torch_csr(-rows, device, dtype)
        self.n_known = int(gap.size - idx.size)


@contextlib.contextmanager
def _capped_threads(limit: int):
    """Run torch with at most ``max(limit, 1)`` intra-op threads inside the block."""
    import torch
    before = torch.get_num_threads()
    cap = max(int(limit), 1)
    if cap >= before:
        yield
        return
    torch.set_num_threads(cap)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _mask_key(gap_window) -> bytes:
    return hashlib.blake2b(np.packbits(np.asarray(gap_window)).tobytes(), digest_size=16).digest()


class _FastPrefill:
    """Drop-in for ``PatchUNet.prefill`` (biharmonic, fixed iterations) during inference."""

    def __init__(self, net, cache_size: int = _PLAN_CACHE, min_group: int = _MIN_GROUP, dtype=None):
        from collections import OrderedDict

        import torch
        self.net = net
        self.dtype = torch.float64 if dtype is None else dtype
        self.n_iter = int(net.config.prefill_iterations)
        self.init = net.config.prefill_init
        self.plans: "OrderedDict[bytes, _MaskPlan]" = OrderedDict()
        self.cache_size = cache_size
        self.min_group = min_group
        self.counts: dict[bytes, int] = {}  # windows per mask key in the whole job, when known

    @staticmethod
    def applies(net) -> bool:
        from bcdi_gapfill.nn.model import PatchUNet
        return (isinstance(net, PatchUNet) and type(net).prefill is PatchUNet.prefill
                and net.config.prefill == "biharmonic" and net.config.prefill_init in ("linear", "zero"))

    def _plan(self, key: bytes, gap_window: np.ndarray, device) -> _MaskPlan:
        plan = self.plans.get(key)
        if plan is None:
            plan = _MaskPlan(gap_window, self.init, device, self.dtype)
            self.plans[key] = plan
            if len(self.plans) > self.cache_size:
                self.plans.popitem(last=False)
        else:
            self.plans.move_to_end(key)
        return plan

    def __call__(self, log_norm, gap):
        import torch

        from bcdi_gapfill.nn.model import PatchUNet

        if log_norm.dtype != torch.float32 or log_norm.device.type != "cpu":
            return PatchUNet.prefill(self.net, log_norm, gap)
        gap_np = gap[:, 0].contiguous().numpy()
        groups: dict[bytes, list[int]] = {}
        for i, g in enumerate(gap_np):
            groups.setdefault(_mask_key(g), []).append(i)
        out = log_norm.contiguous().clone()
        dense = []
        # The iterations are many small operations: spread over threads they mostly wait at
        # barriers (10x slower on a CPU shared with other jobs), so they get one thread per
        # million elements of an operand.
        with _capped_threads(log_norm.numel() // 2**20):
            for key, members in groups.items():
                if (len(members) < self.min_group and key not in self.plans
                        and self.counts.get(key, 0) < self.min_group):
                    dense += members
                    continue
                plan = self._plan(key, gap_np[members[0]], log_norm.device)
                sel = torch.tensor(members)
                flat = out[sel].reshape(len(members), -1)
                flat[:, plan.idx] = self._solve(plan, flat).T
                out[sel] = flat.view(len(members), *out.shape[1:])
            if dense:
                sel = torch.tensor(sorted(dense))
                out[sel] = PatchUNet.prefill(self.net, log_norm[sel], gap[sel])
        return out

    def _solve(self, plan: _MaskPlan, values):
        """Prefill CG of `biharmonic_fill_torch` (tol=None, clip=True) for windows sharing a mask.

        values: (B, V) window values; returns the clipped gap values, (n_gap, B).
        """
        import torch

        n = plan.n
        safe = values.to(self.dtype, copy=True)
        safe[:, plan.idx] = 0
        both = plan.rhs_and_start @ safe.T.contiguous()
        b = both[:n]
        if self.init == "linear":
            x = both[n:]
            if plan.fallback is not None:
                mean = safe.sum(1, keepdim=True).T / max(plan.n_known, 1)
                x = torch.where(plan.fallback, mean, x)
            r = b - plan.matrix @ x
        else:
            x = torch.zeros_like(b)
            r = b
        tiny = torch.finfo(self.dtype).tiny
        p = r
        rr = (r * r).sum(0, keepdim=True)
        zero = torch.zeros_like(rr)
        for _ in range(self.n_iter):
            ap = plan.matrix @ p
            pap = (p * ap).sum(0, keepdim=True)
            alpha = torch.where(pap > 0, rr / pap.clamp_min(tiny), zero)
            x = torch.addcmul(x, alpha, p)
            r = torch.addcmul(r, alpha, ap, value=-1)
            rr_new = (r * r).sum(0, keepdim=True)
            beta = torch.where(rr > 0, rr_new / rr.clamp_min(tiny), zero)
            p = torch.addcmul(r, beta, p)
            rr = rr_new
        if plan.n_known == 0:
            return torch.zeros_like(x)
        known = torch.ones(values.shape[1], dtype=torch.bool, device=values.device)
        known[plan.idx] = False
        lo = values[:, known].amin(1)
        hi = values[:, known].amax(1)
        return torch.maximum(torch.minimum(x.to(values.dtype), hi), lo)


class _WithPrefill:
    """The model seen by ``PatchUNet.forward`` with its prefill replaced (nothing is mutated)."""

    def __init__(self, net, prefill):
        self._net = net
        self.prefill = prefill

    def __getattr__(self, name):
        return getattr(self._net, name)


def _forward(net, x, g, prefill=None):
    if prefill is None:
        return net(x, g)
    return type(net).forward(_WithPrefill(net, prefill), x, g)


# Half the window: measured within 0.1% of stride 1 (in-gap MAE) with the shipped weights, at
# 3.6x fewer windows than stride 8 (docs/benchmarks.md, bench_inpaint_strides.py).
DEFAULT_STRIDE = 16

# Test-time flips of a (batch, channel, frames, rows, columns) window tensor: the two
# detector axes, rows and columns, the flips that training augments with (the frame axis
# is the rocking angle, not a detector axis, and was never flipped in training).
_FLIP_VIEWS = ((3,), (4,), (3, 4))


def _predict_windows(model, batch_counts: np.ndarray, batch_gap: np.ndarray, device: str,
                     flips: bool, prefill=None, autocast_dtype=None, global_base: bool = False) -> np.ndarray:
    """log1p(counts) predicted for a batch of windows, (B, n_views, D, H, W).

    With ``global_base`` the gap voxels of ``batch_counts`` hold the whole array's fill, used
    (normalised like the window) as the network's base in place of its own prefill.
    """
    import torch

    from bcdi_gapfill.nn.dataset import log_normalise

    counts_t = torch.from_numpy(batch_counts).to(device)
    gap_t = torch.from_numpy(batch_gap).to(device)
    log_norm, scale = log_normalise(counts_t, gap_t)
    base = None
    if global_base:
        base = torch.where(gap_t, torch.log1p(counts_t) / scale[:, None, None, None], log_norm)[:, None]
    views = [()] + (list(_FLIP_VIEWS) if flips else [])
    outputs = []
    for dims in views:
        x = torch.stack([log_norm, gap_t.float()], dim=1)[:, : model.config.in_channels]
        g = gap_t[:, None]
        b = base
        if dims:
            x, g = x.flip(dims), g.flip(dims)
            b = None if base is None else base.flip(dims)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        with (torch.autocast(device_type="cuda", dtype=autocast_dtype) if autocast_dtype is not None
              else contextlib.nullcontext()):
            y = model(x, g, base=b) if b is not None else _forward(model, x, g, prefill)
        if dims:
            y = y.flip(dims)
        outputs.append(y[:, 0].float() * scale[:, None, None, None])
    return torch.stack(outputs, dim=1).float().cpu().numpy()


def _available_memory() -> int | None:
    """Bytes of host memory available to a new allocation (MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


# Host bytes one window needs during a forward pass of the default architecture (measured
# peak RSS 9-13 MB per window of a batch, rounded up), per view.
_BYTES_PER_WINDOW = 16 * 2**20


# Host bytes of the whole-array log-biharmonic fill of ``prefill="global"``: float64 working
# copies of the array (measured numpy peak of `classical.fill_gap`: 61 B per voxel on a
# 256x300x300 Eiger2M-gap array) and its sparse solve (at most ~900 B per gap voxel measured,
# on the wide Eiger2M ROI), rounded up. Freed before the first batch runs.
_GLOBAL_FILL_BYTES_PER_VOXEL = 64
_GLOBAL_FILL_BYTES_PER_GAP_VOXEL = 1024


def estimate_memory(shape: tuple[int, ...], n_gap: int, *, batch_size: int = 16, flips: bool = False,
                    return_uncertainty: bool = False, prefill: str = "global") -> dict[str, int]:
    """Host memory (bytes) that ``inpaint(..., method="model")`` needs beyond its inputs.

    ``arrays``: the float32 result (and uncertainty), the planner's boolean maps and the
    accumulators, which cover only the ``n_gap`` gap voxels; ``batch``: one batch of windows
    in the network; ``prefill``: the whole array's biharmonic fill of ``prefill="global"``
    (0 for ``"window"``), computed and freed before the first batch; ``total``: the arrays
    plus the larger of the two.
    """
    n_vox = int(np.prod(shape))
    acc = 8 if return_uncertainty else 4
    arrays = (4 * n_vox * (2 if return_uncertainty else 1)  # result (+ uncertainty)
              + 3 * n_vox                                    # planner: band maps, covered, rest
              + 8 * n_gap                                    # flat indices of the gap voxels
              + acc * (3 if return_uncertainty else 2) * n_gap)
    batch = batch_size * (4 if flips else 1) * _BYTES_PER_WINDOW + _PLAN_CACHE * 16 * 2**20
    fill = (_GLOBAL_FILL_BYTES_PER_VOXEL * n_vox + _GLOBAL_FILL_BYTES_PER_GAP_VOXEL * n_gap
            if prefill == "global" else 0)
    return {"arrays": arrays, "batch": batch, "prefill": fill, "total": arrays + max(batch, fill)}


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _check_memory(shape, n_gap, batch_size, flips, return_uncertainty, limit, dev, prefill="global") -> int:
    """Refuse a job whose arrays do not fit; shrink the batch when only the batch does not."""
    avail = limit if limit is not None else _available_memory()
    if avail is None:
        return batch_size
    est = estimate_memory(shape, n_gap, batch_size=batch_size, flips=flips,
                          return_uncertainty=return_uncertainty, prefill=prefill)
    if est["arrays"] + est["prefill"] > avail:
        raise InsufficientMemoryError(
            f"inpainting a {'x'.join(map(str, shape))} array with {n_gap} gap voxels needs about "
            f"{_fmt_bytes(est['arrays'])} for its arrays and {_fmt_bytes(est['prefill'])} for the whole "
            f"array's biharmonic fill, but only {_fmt_bytes(avail)} is available: free memory, pass "
            "prefill='window' (--prefill window), or inpaint overlapping crops of the array one at a time")
    smallest = estimate_memory(shape, n_gap, batch_size=1, flips=flips)["batch"]
    if est["arrays"] + smallest > avail:
        raise InsufficientMemoryError(
            f"inpainting a {'x'.join(map(str, shape))} array with {n_gap} gap voxels needs about "
            f"{_fmt_bytes(est['arrays'])} for its arrays and {_fmt_bytes(smallest)} for the network, but only "
            f"{_fmt_bytes(avail)} is available: free memory, or inpaint overlapping crops of the array one "
            "at a time" + (" (return_uncertainty=True doubles the accumulators)" if return_uncertainty else ""))
    if dev.startswith("cuda"):
        return batch_size  # the host only holds the arrays; the device batch is checked by torch
    fit = batch_size
    while fit > 1 and est["arrays"] + estimate_memory(shape, n_gap, batch_size=fit, flips=flips)["batch"] > avail:
        fit //= 2
    if fit < batch_size:
        warnings.warn(f"batch_size reduced from {batch_size} to {fit} to fit the {_fmt_bytes(avail)} of "
                      "available memory", RuntimeWarning, stacklevel=3)
    return fit


def inpaint(data: np.ndarray, gap_mask: np.ndarray, *, method: str = "model", model: Any = None,
            stride: int | None = None, device: str | None = None, batch_size: int | None = None,
            blend: str = "hann", flips: bool = False, return_uncertainty: bool = False,
            progress: bool = False, num_threads: int | None = None, precision: str = "float32",
            memory_limit: int | None = None,
            run_info: dict | None = None,
            finetune: bool | dict = False, prefill: str = "global") -> np.ndarray | tuple[np.ndarray, np.ndarray]:
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
        The widest gap band served is the model card's ``max_gap_width`` for a weights file
        and for a model returned by :func:`load_model`; for any other model object it is the
        window minus 8 (24 voxels).
    stride : int, optional
        Step in voxels between windows sliding along a gap (default 16, half the window,
        where the Hann weights of neighbouring windows sum to a constant; 1 = the paper's
        skip 0, best and slowest: stride 16 is within 0.1% of stride 1 in in-gap error with
        the shipped weights, see docs/benchmarks.md).
    device : str, optional
        ``"cuda"`` when present, else ``"cpu"`` by default.
    batch_size : int, optional
        Windows per forward pass (default 16 on CPU, 128 on GPU).
    blend : {"hann", "mean"}
        Weighting of overlapping windows (see module docstring).
    flips : bool
        Also predict the three flips of the detector axes and average (test-time augmentation).
        About 2-3x the time; measured on 8 held-out 128^3 arrays it raised the in-gap headroom
        on 31 of 32 array-widths (+0.03 at 3 px to +0.005 at 12 px; docs/benchmarks.md).
    return_uncertainty : bool
        Also return the per-voxel spread of the predictions (log1p units; 0 outside the gap).
    progress : bool
        Show a tqdm progress bar over the windows.
    num_threads : int, optional
        CPU threads for torch during this call (restored afterwards); default: torch's
        setting (the physical cores). On a CPU shared with other jobs, 1 can be faster.
    precision : {"float32", "bfloat16", "float16"}
        Autocast the network to a half type; only on CUDA (CPU results stay float32).
        Half precision changes the results by more than float32 round-off.
    memory_limit : int, optional
        Bytes of host memory the call may use (default: what the OS reports available). A job
        whose arrays exceed it raises MemoryError before allocating them; a batch that does
        not fit is made smaller. A batch that runs out of memory on the device (CUDA
        out-of-memory, or the CPU allocator's) is halved and its windows retried, down to one
        window, with a RuntimeWarning; the result is the same as with the smaller batch size.
    run_info : dict, optional
        Filled with what the call used, for records and logs: ``method`` and, for the model,
        ``device``, ``batch_size`` (after any reduction for memory), ``n_windows``, ``stride``
        and ``max_gap_width``.
    finetune : bool or dict
        First fine-tune (a copy of) ``model`` on portions of ``data`` away from the gap with
        `bcdi_gapfill.nn.finetune.finetune` (CPU minutes), then inpaint with it; a dict passes
        that function's options (e.g. ``{"steps": 50}``). When fine-tuning does not raise the
        held-out PCC, the original model is used (with a RuntimeWarning). Nothing is written:
        to keep the tuned weights, call `finetune` and `save_finetuned`.
    prefill : {"global", "window"}
        What the network corrects, for models with a biharmonic prefill (the default
        model): ``"global"`` (default) the log-domain biharmonic fill of the whole array
        cropped to each window, ``"window"`` the fill computed inside each window alone (as
        in training). See "Context beyond the window" in the module docstring.

    Returns
    -------
    filled : ndarray float32, same shape
        Measured voxels bit-identical to ``data`` (as float32), gap voxels predicted, finite
        and >= 0. The caller's arrays are not modified.
    uncertainty : ndarray float32, same shape (only with ``return_uncertainty``)

    Raises
    ------
    MemoryError
        When the job's arrays do not fit in host memory (before allocating), or when one
        window alone runs out of memory on the device.
    """
    data, gap = check_pattern(data, gap_mask)
    if finetune is not False:
        model = finetuned_for_inpaint(data, gap, model, finetune, method)
    if run_info is not None:
        if not isinstance(run_info, dict):
            raise TypeError(f"run_info must be a dict or None, got {type(run_info).__name__}")
        run_info["method"] = method
    if method == "model":
        if precision not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"unknown precision {precision!r}; choose 'float32', 'bfloat16' or 'float16'")
        dev = resolve_device(device)
        if precision != "float32" and not dev.startswith("cuda"):
            raise ValueError(f"precision={precision!r} is only available on CUDA devices (got device {dev!r})")
        if prefill not in ("global", "window"):
            raise ValueError(f"unknown prefill {prefill!r}; choose 'global' or 'window'")
        n_gap = int(np.count_nonzero(gap))
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
        batch_size = batch_size or (128 if dev.startswith("cuda") else 16)
        batch_size = _check_memory(data.shape, n_gap, batch_size, flips, return_uncertainty, memory_limit, dev,
                                   prefill)
        if run_info is not None:
            run_info.update(device=dev, batch_size=int(batch_size))
    filled = np.array(data, dtype=np.float32, order="C")  # a C-ordered copy (flat indexing below)
    if not gap.any():
        return (filled, np.zeros_like(filled)) if return_uncertainty else filled
    if method in CLASSICAL_METHODS:
        result = fill_gap(filled, gap, method=method, log=True)
        return (result, np.zeros_like(result)) if return_uncertainty else result
    if method != "model":
        raise ValueError(f"unknown method {method!r}; choose 'model' or one of {CLASSICAL_METHODS}")

    import torch

    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(max(int(num_threads), 1))
    try:
        return _inpaint_model(filled, gap, model=model, dev=dev, stride=stride, batch_size=batch_size,
                              blend=blend, flips=flips, return_uncertainty=return_uncertainty,
                              progress=progress, precision=precision, run_info=run_info, prefill_mode=prefill)
    finally:
        torch.set_num_threads(threads_before)


def _is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's out-of-memory errors: CUDA's, and the CPU allocator's."""
    import torch
    text = str(exc).lower()
    return (isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text
            or "can't allocate memory" in text)


def _release_memory(dev: str) -> None:
    """Give the memory of a failed batch back before a smaller one is tried."""
    import gc

    import torch
    gc.collect()
    if dev.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _inpaint_model(filled: np.ndarray, gap: np.ndarray, *, model, dev: str, stride, batch_size: int,
                   blend: str, flips: bool, return_uncertainty: bool, progress: bool,
                   precision: str, run_info: dict | None = None, prefill_mode: str = "global"):
    import torch
    from tqdm import tqdm

    if model is None or isinstance(model, (str, Path)):
        net, info = load_model(model, dev)
    else:
        # Channels-last puts the CPU convolutions on oneDNN's fast path (the loaded default
        # model is stored that way too); it changes no number beyond round-off.
        net = model.to(dev, memory_format=torch.channels_last_3d).eval()
        info = dict(getattr(model, "gapfill_info", None) or {})  # set by load_model from the card
    window = net.config.window
    stride = DEFAULT_STRIDE if stride is None else int(stride)
    max_width = info.get("max_gap_width", window - 8)
    origins = plan_windows(gap, window, stride, max_band_width=max_width)
    taper = _taper(window, blend).ravel()
    global_base = prefill_mode == "global" and net.config.prefill == "biharmonic"
    if global_base:
        # The windows read their base from the gap voxels of ``filled`` (overwritten by the
        # network's prediction at the end).
        filled[gap] = fill_gap(filled, gap, method="biharmonic", log=True)[gap]
        prefill = None
    else:
        prefill = _FastPrefill(net) if (_FastPrefill.applies(net) and dev == "cpu") else None
    autocast = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision)

    # Windows sharing a gap mask (all the windows of a straight gap band away from crossings)
    # go into the same batches: the fast prefill assembles one sparse system per mask.
    keys = [_mask_key(gap[o[0]:o[0] + window, o[1]:o[1] + window, o[2]:o[2] + window]) for o in origins]
    order = sorted(range(len(origins)), key=lambda i: (keys[i], origins[i]))
    origins = [origins[i] for i in order]
    keys = [keys[i] for i in order]
    if prefill is not None:
        # Every mask the prefill will see, flipped views included, is counted over the whole
        # job, so that its sparse-or-dense choice, and so every bit of the result, does not
        # depend on how the windows are batched (a smaller batch after an out-of-memory error).
        for o, key in zip(origins, keys):
            prefill.counts[key] = prefill.counts.get(key, 0) + 1
            if flips:
                window_gap = gap[o[0]:o[0] + window, o[1]:o[1] + window, o[2]:o[2] + window]
                for dims in _FLIP_VIEWS:
                    flipped = _mask_key(np.flip(window_gap, tuple(d - 2 for d in dims)))
                    prefill.counts[flipped] = prefill.counts.get(flipped, 0) + 1

    # Accumulators over the gap voxels only (flat vector), not over a bounding box.
    gap_flat = np.flatnonzero(gap)
    strides = np.array([gap.shape[1] * gap.shape[2], gap.shape[2], 1])  # C order, as flatnonzero
    local = np.indices((window,) * 3).reshape(3, -1)
    local_offset = (local * strides[:, None]).sum(0)  # flat offset in the array of each window voxel
    # float64 when the spread is wanted: E[x^2] - E[x]^2 must vanish where predictions agree.
    acc = np.float64 if return_uncertainty else np.float32
    sum_w = np.zeros(gap_flat.size, acc)
    sum_x = np.zeros_like(sum_w)
    sum_x2 = np.zeros_like(sum_w) if return_uncertainty else None
    in_window: dict[bytes, np.ndarray] = {}
    start = 0
    with torch.inference_mode(), tqdm(total=len(origins), disable=not progress, desc="inpainting",
                                      unit="window") as bar:
        while start < len(origins):
            chunk = origins[start:start + batch_size]
            chunk_keys = keys[start:start + batch_size]
            sl = [tuple(slice(o[a], o[a] + window) for a in range(3)) for o in chunk]
            batch_counts = np.stack([filled[s] for s in sl]).astype(np.float32)
            batch_gap = np.stack([gap[s] for s in sl])
            try:
                pred = _predict_windows(net, batch_counts, batch_gap, dev, flips, prefill, autocast, global_base)
            except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
                if not _is_out_of_memory(exc):
                    raise
                text = str(exc).strip()
                oom_detail = text.splitlines()[0][:200] if text else type(exc).__name__
            else:
                oom_detail = None
            if oom_detail is not None:
                # Out of the except block, so that the traceback no longer holds the batch's
                # tensors when the cache is emptied; the same windows are then retried.
                _release_memory(dev)
                if len(chunk) == 1:
                    raise MemoryError(
                        f"out of memory on {dev} inpainting a {'x'.join(map(str, filled.shape))} array even "
                        f"with one {window}^3 window per batch ({oom_detail}): free memory on the device "
                        "(other processes), use device='cpu' (--device cpu), turn off flips, or inpaint "
                        "overlapping crops of the array one at a time")
                smaller = max(len(chunk) // 2, 1)
                warnings.warn(f"out of memory on {dev} with {len(chunk)} windows per batch; retrying with "
                              f"batch_size {smaller}", RuntimeWarning, stacklevel=3)
                batch_size = smaller
                continue
            pred = pred.reshape(len(chunk), pred.shape[1], -1)
            for o, key, wgap, views in zip(chunk, chunk_keys, batch_gap, pred):
                idx = in_window.get(key)
                if idx is None:
                    idx = in_window[key] = np.flatnonzero(wgap)
                pos = np.searchsorted(gap_flat, int(np.dot(o, strides)) + local_offset[idx])
                w = taper[idx].astype(acc)
                for view in views[:, idx].astype(acc):
                    sum_w[pos] += w
                    wx = w * view
                    sum_x[pos] += wx
                    if sum_x2 is not None:
                        sum_x2[pos] += wx * view
            start += len(chunk)
            bar.update(len(chunk))
    if run_info is not None:
        run_info.update(batch_size=int(batch_size), n_windows=len(origins), stride=stride,
                        max_gap_width=max_width, prefill="global" if global_base else "window")
    mean_log = sum_x / sum_w
    out = filled.reshape(-1)  # a view: filled is a fresh C-contiguous array
    with np.errstate(over="ignore"):  # clipped to the float32 range: gap voxels stay finite
        out[gap_flat] = np.clip(np.expm1(mean_log), 0.0, np.finfo(np.float32).max).astype(np.float32)
    if not return_uncertainty:
        return filled
    uncertainty = np.zeros_like(filled)
    var = sum_x2 / sum_w - mean_log ** 2
    var[var < 1e-12 * (1.0 + mean_log ** 2)] = 0.0  # round-off of identical predictions
    uncertainty.reshape(-1)[gap_flat] = np.sqrt(var)
    return filled, uncertainty
