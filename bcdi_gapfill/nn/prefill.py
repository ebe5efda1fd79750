"""The network's prefill: the log-domain biharmonic fill of batches of windows, in torch.

``biharmonic_fill_torch(values, gap, n_iter=600, *, tol=1e-4, clip=True, init="linear")``
fills the gap voxels of (N, 1, D, H, W) windows by conjugate gradients on the biharmonic
equation, each window on its own. `bcdi_gapfill.nn.model` computes its base with it and
`bcdi_gapfill.fill.classical` offers it with the classical fills.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily by biharmonic_fill_torch
    import torch

__all__ = ["biharmonic_fill_torch"]


def _torch_laplacian(x: "torch.Tensor") -> "torch.Tensor":
    """Neumann 7-point Laplacian over the last three dims: ``sum_j (x_j - x_i)`` over the
    in-window neighbours, i.e. the usual stencil on the window padded by replication.
    The in-place adds go into a fresh tensor, which autograd handles."""
    import torch

    out = torch.zeros_like(x)
    for dim in (-3, -2, -1):
        n = x.shape[dim]
        if n < 2:
            continue
        d = x.narrow(dim, 1, n - 1) - x.narrow(dim, 0, n - 1)  # edge differences
        out.narrow(dim, 0, n - 1).add_(d)
        out.narrow(dim, 1, n - 1).sub_(d)
    return out


def _torch_line_interp(v, known, dim):
    """Linear interpolation along ``dim`` between the nearest known voxels (torch).

    Returns ``(value, weight, two_sided, one_sided)``; weight ``1 / span`` for two-sided,
    ``1 / distance`` for one-sided (constant extrapolation) voxels."""
    import torch

    n = v.shape[dim]
    shape = [1] * v.ndim
    shape[dim] = n
    pos = torch.arange(n, device=v.device).view(shape).expand_as(v)
    li = torch.where(known, pos, torch.full_like(pos, -1)).cummax(dim).values
    ri = torch.where(known, pos, torch.full_like(pos, n)).flip(dim).cummin(dim).values.flip(dim)
    has_l, has_r = li >= 0, ri < n
    vl = v.gather(dim, li.clamp(0, n - 1))
    vr = v.gather(dim, ri.clamp(0, n - 1))
    two = has_l & has_r & ~known
    one = (has_l ^ has_r) & ~known
    span = (ri - li).clamp_min(1).to(v.dtype)
    t = (pos - li).to(v.dtype) / span
    dist = torch.where(has_l, pos - li, ri - pos).clamp_min(1).to(v.dtype)
    value = torch.where(two, vl + t * (vr - vl), torch.where(has_l, vl, vr))
    weight = torch.where(two, 1.0 / span, 1.0 / dist)
    return value, weight, two, one


def _torch_linear_init(values, gap, passes: int = 3):
    """Initial guess for CG: the across-gap linear fill of :func:`interpolate_across_gap`
    (detector axes H, W; a pass over all axes for what is left), no host sync. Voxels still
    empty after ``passes`` passes get their sample's mean measured value."""
    import torch

    v = values.masked_fill(gap, 0)
    missing = gap.clone()
    for k in range(passes):
        dims = (-2, -1) if k < passes - 1 else (-3, -2, -1)
        known = ~missing
        acc2 = torch.zeros_like(v)
        w2 = torch.zeros_like(v)
        acc1 = torch.zeros_like(v)
        w1 = torch.zeros_like(v)
        for dim in dims:
            if v.shape[dim] < 2:
                continue
            val, wt, two, one = _torch_line_interp(v, known, dim)
            acc2 = acc2 + torch.where(two, wt * val, 0)
            w2 = w2 + torch.where(two, wt, 0)
            acc1 = acc1 + torch.where(one, wt * val, 0)
            w1 = w1 + torch.where(one, wt, 0)
        fill2 = missing & (w2 > 0)
        fill1 = missing & ~fill2 & (w1 > 0)
        v = torch.where(fill2, acc2 / w2.clamp_min(1e-30), torch.where(fill1, acc1 / w1.clamp_min(1e-30), v))
        missing = missing & ~(fill2 | fill1)
    dims_all = tuple(range(1, v.ndim))
    n_known = (~gap).sum(dims_all, keepdim=True).clamp_min(1)
    mean = values.masked_fill(gap, 0).sum(dims_all, keepdim=True) / n_known
    return torch.where(missing, mean.expand_as(v), v)


def _biharmonic_cg_torch(values, gap, n_iter, tol, history=False, init="linear"):
    """Batched CG on ``(L^2)[gap, gap] x = -(L^2 u_known)[gap]``.

    Starts from ``x = 0`` (``init="zero"``) or from the across-gap linear fill
    (``init="linear"``). Returns ``(filled, iterations_done, history)``; ``history`` (if
    asked) lists the per-sample relative residuals ``||r|| / ||b||`` after each iteration,
    ``b`` being the residual of ``x = 0`` whatever the start."""
    import torch

    dims = tuple(range(1, values.ndim))
    tiny = torch.finfo(values.dtype).tiny
    g = gap.to(values.dtype)
    known = values.masked_fill(gap, 0)
    b = -g * _torch_laplacian(_torch_laplacian(known))
    bnorm = (b * b).sum(dims, keepdim=True).sqrt().clamp_min(tiny)
    if init == "zero":
        x = torch.zeros_like(values)
        r = b
    elif init == "linear":
        x = g * _torch_linear_init(values, gap)
        r = b - g * _torch_laplacian(_torch_laplacian(x))
    else:
        raise ValueError(f"init must be 'zero' or 'linear', got {init!r}")
    p = r
    rr = (r * r).sum(dims, keepdim=True)
    hist = []
    done = 0
    for it in range(n_iter):
        if tol is not None and it % 10 == 0 and bool((rr.sqrt() / bnorm <= tol).all()):
            break
        ap = g * _torch_laplacian(_torch_laplacian(p))
        pap = (p * ap).sum(dims, keepdim=True)
        alpha = torch.where(pap > 0, rr / pap.clamp_min(tiny), torch.zeros_like(pap))
        x = torch.addcmul(x, alpha, p)
        r = torch.addcmul(r, alpha, ap, value=-1)
        rr_new = (r * r).sum(dims, keepdim=True)
        beta = torch.where(rr > 0, rr_new / rr.clamp_min(tiny), torch.zeros_like(rr))
        p = torch.addcmul(r, beta, p)
        rr = rr_new
        done = it + 1
        if history:
            hist.append((rr.sqrt() / bnorm).flatten().cpu())
    return known + g * x, done, hist


def biharmonic_fill_torch(values: "torch.Tensor", gap: "torch.Tensor", n_iter: int = 600, *,
                          tol: float | None = 1e-4, clip: bool = True,
                          init: str = "linear") -> "torch.Tensor":
    """Batched biharmonic fill of ``(B, 1, D, H, W)`` windows by matrix-free conjugate gradient.

    Minimises ``||L x||^2`` over each whole window, ``L`` the 7-point Laplacian with
    replicate padding at the window edges (Neumann), with the measured voxels fixed and
    the ``gap`` voxels free: the same discretisation as :func:`inpaint_biharmonic` and
    scikit-image, applied to each window on its own (so it agrees with them for any gap,
    touching the window edge or not, up to the CG tolerance). CG runs on the normal
    equations ``(L^2)[gap, gap] x = -(L^2 u_known)[gap]``, batched (one step length per
    sample), started from the across-gap linear fill (``init="linear"``, the ``linear``
    method of :func:`interpolate_across_gap`) or from zero, for at most ``n_iter``
    iterations; with ``tol`` it stops once every sample's relative residual
    ``||r|| / ||b||`` (``b`` the residual of ``x = 0``) is ``<= tol``, checked every 10
    iterations (one host sync each); ``tol=None`` runs exactly ``n_iter`` iterations with
    no sync. Plain torch ops on the device of ``values``; differentiable w.r.t. ``values``
    (backprop through the iterations: wrap in ``torch.no_grad()`` when no gradient is
    needed).

    The iterations needed grow like the square of the gap width. For a cross of width w in
    32^3 windows, relative residual 1e-4 takes about 50 / 130 / 245 / 385 iterations for
    w = 3 / 6 / 9 / 12 from the linear start (75 / 185 / 340 / 500 from zero). A truncated
    run is a poor fill for wide gaps: with 100 iterations the max error of a width-12 cross
    is ~15% of the data range (linear start; ~95% from zero), 1e-2 after 300.

    Parameters
    ----------
    values : Tensor (B, 1, D, H, W), floating
        Values (e.g. log1p counts); those under ``gap`` are ignored (may be NaN).
    gap : bool Tensor, same shape
        True where the voxel is missing.
    n_iter : int
        Maximum number of CG iterations.
    tol : float or None
        Early stop on the relative residual.
    clip : bool
        Clip the filled voxels of each sample to the range of its measured values (as
        scikit-image does). A sample without any measured voxel gets zeros in the gap.
    init : {"linear", "zero"}
        Starting point of CG in the gap.

    Returns
    -------
    Tensor of the shape and dtype of ``values``: measured voxels unchanged, gap filled.
    """
    import torch

    if not isinstance(values, torch.Tensor) or not isinstance(gap, torch.Tensor):
        raise ValueError("values and gap must be torch tensors")
    if values.ndim != 5 or values.shape[1] != 1:
        raise ValueError(f"values must have shape (B, 1, D, H, W), got {tuple(values.shape)}")
    if not torch.is_floating_point(values):
        raise ValueError(f"values must be a floating tensor, got {values.dtype}")
    if gap.dtype != torch.bool:
        raise ValueError(f"gap must be a bool tensor, got {gap.dtype}")
    if gap.shape != values.shape:
        raise ValueError(f"gap shape {tuple(gap.shape)} differs from values shape {tuple(values.shape)}")
    if n_iter < 0:
        raise ValueError("n_iter must be >= 0")
    if init not in ("zero", "linear"):
        raise ValueError(f"init must be 'zero' or 'linear', got {init!r}")
    gap = gap.to(values.device)
    safe = values.masked_fill(gap, 0)  # NaN under the gap must not leak into the sums
    filled, _, _ = _biharmonic_cg_torch(safe, gap, int(n_iter), tol, init=init)
    if clip:
        dims = tuple(range(1, values.ndim))
        big = torch.finfo(values.dtype).max
        lo = safe.masked_fill(gap, big).amin(dims, keepdim=True)
        hi = safe.masked_fill(gap, -big).amax(dims, keepdim=True)
        has_known = (~gap).flatten(1).any(1).view(-1, *([1] * (values.ndim - 1)))
        lo = torch.where(has_known, lo, torch.zeros_like(lo))
        hi = torch.where(has_known, hi, torch.zeros_like(hi))
        filled = torch.maximum(torch.minimum(filled, hi), lo)
    return torch.where(gap, filled, values)
