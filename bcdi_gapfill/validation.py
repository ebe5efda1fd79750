"""Real-space validation of gap treatments (paper section 2.6 and supplement S7).

A ground-truth complex object is turned into its diffraction pattern, Poisson noise is
added, a detector gap is cut out, and every gap treatment under test is judged by the
object it leads to:

``oracle`` mode (paper section 2.6.1, Fig. 7 and Supp. Figs. 15-18)
    The object is the inverse Fourier transform of each method's modulus ``sqrt(I)``
    combined with the TRUE reciprocal-space phase. Only the gap treatment differs between
    methods, so the comparison isolates the effect of the in-gap intensity.
``pr`` mode (paper section 2.6.2, Fig. 8 and Supp. Figs. 19-21)
    Full phase retrieval from the intensities with :func:`bcdi_gapfill.phasing.phase_retrieval`,
    the same algorithm, seeds and number of starts for every method, then alignment to the
    truth (:func:`bcdi_gapfill.metrics.align_to_reference`) and the comparison of
    :func:`bcdi_gapfill.metrics.real_space_report`.

Methods
-------
``inpaint``        the deep-learning model, :func:`bcdi_gapfill.inpainting.inpaint` (method "model")
``biharmonic``     classical biharmonic fill of ``log1p(counts)`` (:func:`classical.fill_gap`)
``free_pixels``    gap voxels left unconstrained during phase retrieval (``free_mask=gap``);
                   it has no oracle counterpart (there is no modulus to put in the gap), so it
                   is skipped in oracle mode and the reason is recorded in ``settings``
``inpaint+release`` the model's fill, *released* during phase retrieval
                   (``phase_retrieval(..., estimated_mask=gap)``): constrained at the first
                   iteration, free for the last quarter; pr mode only (its oracle is
                   ``inpaint``'s)
``zero_fill``      gap set to 0
``linear_interp``  1D linear interpolation of ``log1p(counts)`` across the gap (``fill_gap(..., "linear")``)
``no_gap``         the complete noisy pattern: the reference every method should approach
``hybrid``         the model's fill (with test-time flips) on the confident gap voxels, the
                   ``hybrid_quantile`` least confident ones (largest uncertainty) left free
                   during phase retrieval; pr mode only, like ``free_pixels``
``model+gp``       the model's fill refined by the band limit of a finite crystal
                   (:func:`bcdi_gapfill.refine.refine_band_limited`, options ``refine_options``)
``biharmonic+gp``  the biharmonic fill, refined the same way
``gp``             the pure band-limit extrapolation from a zero-filled gap (a baseline)

The last four are not run by default (:data:`DEFAULT_METHODS`); name them in ``methods``.
When ``hybrid`` runs, the report also holds ``uncertainty``: the reliability of the model's
uncertainty on the main gap (:func:`bcdi_gapfill.calibration.reliability_table`, errors of
``log1p`` against the noisy truth), drawn as a reliability plot in the HTML report.

Metrics per method (see :func:`validate` for the full list): ``strain_rmse``, ``phase_std``
(rad), ``mean_strain``, ``strain_std``, ``spurious_modulus``, ``overlap``, ``pcc_gap`` (paper
eq. 1: Pearson correlation of ``log1p`` intensities over the gap voxels against the noisy
truth), ``gap_intensity_ratio`` and, in pr mode, ``llk``, ``llk_measured`` and
``pcc_gap_reconstructed``.

:func:`write_report` writes ``DIR/report.json`` and one self-contained ``DIR/report.html``
(figures embedded as base64 PNG).

Example
-------
>>> from bcdi_gapfill.validation import validate, write_report
>>> rep = validate(seed=0, size=64, gap="cross:9", mode="oracle", widths=[3, 6, 9, 12],
...                methods=("biharmonic", "zero_fill", "linear_interp", "no_gap"))  # doctest: +SKIP
>>> write_report(rep, "validation_out")                                  # doctest: +SKIP
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import io as _io
import json
import math
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from . import __version__
from . import metrics as M
from .selfcheck import TREATMENTS as SELFCHECK_TREATMENTS
from .selfcheck import assess

__all__ = [
    "validate", "write_report", "verdict", "ValidationReport", "FigureData", "METHODS", "DEFAULT_METHODS",
    "MODES", "METRIC_KEYS", "NOISELESS_PEAK",
]

#: Every gap treatment :func:`validate` knows, in the order of the report.
METHODS = ("inpaint", "inpaint+release", "hybrid", "model+gp", "biharmonic", "biharmonic+gp", "gp", "free_pixels",
           "zero_fill", "linear_interp", "no_gap")
#: The methods run when ``methods`` is not given: all but the uncertainty and band-limit ones.
DEFAULT_METHODS = ("inpaint", "inpaint+release", "biharmonic", "free_pixels", "zero_fill", "linear_interp",
                   "no_gap")
#: Methods that need the model (skipped together when the default weights are missing).
MODEL_METHODS = ("inpaint", "inpaint+release", "hybrid", "model+gp")
#: Default share of the gap voxels, the least confident, that ``hybrid`` leaves free.
HYBRID_QUANTILE = 0.2
MODES = ("oracle", "pr", "both")
#: Real-space metrics found for every evaluated method (both modes).
METRIC_KEYS = ("strain_rmse", "phase_std", "mean_strain", "mean_strain_true", "strain_std",
               "spurious_modulus", "overlap", "pcc_gap", "gap_intensity_ratio")
#: Extra metrics of pr mode.
PR_METRIC_KEYS = ("llk", "llk_measured", "pcc_gap_reconstructed")
#: Peak intensity (photons) of the pattern when ``counts=None`` (noiseless).
NOISELESS_PEAK = 1e6

_FILL_METHODS = {"biharmonic": "biharmonic", "zero_fill": "zero", "linear_interp": "linear"}
_LABELS = {"inpaint": "DL inpainting", "inpaint+release": "DL, released in PR", "biharmonic": "biharmonic",
           "free_pixels": "free pixels",
           "zero_fill": "zero fill", "linear_interp": "linear interp.", "no_gap": "no gap (reference)",
           "hybrid": "hybrid (DL + free)", "model+gp": "DL + band limit", "biharmonic+gp": "biharmonic + band limit",
           "gp": "band limit from zeros"}
_COLORS = {"inpaint": "tab:red", "inpaint+release": "darkred", "biharmonic": "tab:blue",
           "free_pixels": "tab:orange",
           "zero_fill": "tab:green", "linear_interp": "tab:purple", "no_gap": "0.3",
           "hybrid": "tab:brown", "model+gp": "tab:pink", "biharmonic+gp": "tab:cyan", "gp": "tab:olive"}
_SCHEMA = "bcdi_gapfill.validate/1"


# ------------------------------------------------------------------------- data classes
@dataclass
class FigureData:
    """2D slices kept by :func:`validate` for the HTML figures (never written to JSON).

    Attributes
    ----------
    recip : dict
        ``planes``: list of ``(title, axis, index, xlabel, ylabel)``; ``truth`` and
        ``masked``: list of 2D intensity slices (one per plane, masked voxels NaN);
        ``gap``: list of 2D gap masks; ``methods``: ``{mode: {name: [slices]}}`` of the
        intensity each method puts in the gap (for free_pixels in pr mode, the intensity of
        the reconstruction).
    real : dict
        ``{mode: {name: {"modulus", "phase", "strain"}}}`` central slices of the aligned
        reconstructions, plus ``"truth"`` under each mode; ``extent`` (nm, for imshow),
        ``axes`` (x and y labels), ``plane`` (description of the slice).
    uncertainty : dict
        With ``hybrid``: ``planes`` (as ``recip``), ``uncertainty`` and ``abs_error`` (2D
        slices of the model's uncertainty and of ``|log1p(fill) - log1p(truth)|``, NaN off the
        gap) and ``freed`` (2D masks of the voxels hybrid leaves free).
    """

    recip: dict = field(default_factory=dict)
    real: dict = field(default_factory=dict)
    uncertainty: dict = field(default_factory=dict)


class ValidationReport(dict):
    """The report dict of :func:`validate` (JSON-serialisable as is), with figure data.

    ``report.figures`` holds the :class:`FigureData` used by :func:`write_report`, and
    ``report.pattern`` the measurement the methods were given: ``{"counts": float32 array,
    "gap_mask": bool array}``, (frames, rows, columns), photons (e.g. to run
    :func:`bcdi_gapfill.selfcheck.assess` on the same data). Both are attributes, not keys,
    so ``json.dumps(report)`` writes the report alone.
    """

    def __init__(self, *args: Any, figures: FigureData | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.figures = figures
        self.pattern: dict[str, np.ndarray] | None = None


# ----------------------------------------------------------------------------- helpers
def _finite_or_none(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None, arrays to lists."""
    if isinstance(value, Mapping):
        return {str(k): _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_finite_or_none(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    return value


def _centred_fft(a: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(a), norm="ortho"))


def _centred_ifft(a: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(a), norm="ortho"))


def _versions() -> dict:
    out = {"bcdi_gapfill": __version__, "python": platform.python_version(),
           "platform": platform.platform(), "numpy": np.__version__}
    for name in ("scipy", "torch", "skimage", "matplotlib"):
        mod = sys.modules.get(name)
        if mod is None:
            try:
                mod = __import__(name)
            except ImportError:
                continue
        out[name] = getattr(mod, "__version__", "?")
    return out


def _gap_mask(gap: Any, shape: tuple[int, int, int],
              offset: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, dict]:
    """Gap mask from a spec ``kind:width``, a detector name/layout, or a boolean array.

    ``offset`` (rows, columns) moves a synthetic or detector gap away from the array centre
    (where the Bragg peak is): positive values move it to higher indices.
    """
    from . import geometry as G

    if isinstance(gap, np.ndarray):
        if gap.shape != shape:
            raise ValueError(f"gap mask shape {gap.shape} differs from the pattern shape {shape}")
        if gap.dtype != bool:
            raise TypeError(f"a gap mask must be boolean, got dtype {gap.dtype}")
        if any(offset):
            raise ValueError("gap_offset applies to a gap spec or a detector name, not to a mask array")
        return gap.copy(), {"gap": "array", "gap_kind": "array", "gap_width": None}
    if isinstance(gap, str) and ":" in gap:
        kind, width = G.parse_gap_spec(gap)
        col0 = (shape[2] - width) // 2 + offset[1]
        row0 = (shape[1] - width) // 2 + offset[0]
        if kind == "vertical":
            mask = G.synthetic_gap_mask(shape, kind, width, position=col0)
        elif kind == "horizontal":
            mask = G.synthetic_gap_mask(shape, kind, width, position=row0)
        else:
            mask = G.synthetic_gap_mask(shape, kind, width, position=col0, position2=row0)
        return mask, {"gap": f"{kind}:{width}", "gap_kind": kind, "gap_width": width}
    if isinstance(gap, (str, G.DetectorLayout)):
        layout = G.get_detector(gap)
        rows, cols = layout.shape
        if shape[1] > rows or shape[2] > cols:
            raise ValueError(f"a {shape[1]} x {shape[2]} crop does not fit the {layout.name} detector "
                             f"({rows} x {cols} pixels)")
        r0, c0 = (rows - shape[1]) // 2 - offset[0], (cols - shape[2]) // 2 - offset[1]
        if r0 < 0 or c0 < 0 or r0 + shape[1] > rows or c0 + shape[2] > cols:
            raise ValueError(f"gap_offset {offset} moves the {shape[1]} x {shape[2]} crop off the "
                             f"{layout.name} detector")
        roi = (r0, r0 + shape[1], c0, c0 + shape[2])
        mask = G.detector_gap_mask(layout, shape[0], roi=roi)
        return mask, {"gap": layout.name, "gap_kind": "detector", "gap_width": None,
                      "detector_roi": list(roi)}
    raise TypeError(f"gap must be a spec like 'cross:9', a detector name or a boolean array, got {gap!r}")


def _truth_support(obj: np.ndarray, threshold: float) -> np.ndarray:
    """Support of the truth: smoothed modulus above ``threshold`` of its max, holes filled,
    restricted to voxels whose own modulus exceeds 5 % of the max.

    The 1-voxel smoothing keeps the modulus inhomogeneity of the simulated particles from
    punching holes in the support; the second condition keeps the smoothing from adding
    empty voxels around a sharp-edged object, whose phase is meaningless.
    """
    sup = ndimage.binary_fill_holes(M.support_from_modulus(obj, threshold, sigma=1.0))
    sup &= M.support_from_modulus(obj, 0.05)
    if not sup.any():
        raise ValueError("the ground-truth support is empty; lower support_threshold")
    return sup


def _safe_pcc(truth: np.ndarray, pred: np.ndarray, gap: np.ndarray) -> float:
    if not gap.any():
        return float("nan")
    return float(M.pcc_gap(truth, np.clip(pred, 0, None), gap, log=True))


def _gap_ratio(truth: np.ndarray, pred: np.ndarray, gap: np.ndarray) -> float:
    tot = float(truth[gap].astype(np.float64).sum())
    return float(pred[gap].astype(np.float64).sum()) / tot if tot > 0 else float("nan")


def _model_info(model: Any) -> dict:
    """Provenance of the model weights used by the ``inpaint`` method."""
    info: dict[str, Any] = {}
    if model is None:
        try:
            from . import inpainting as _inp
        except ImportError as exc:
            return {"error": f"bcdi_gapfill.inpainting not importable: {exc}"}
        fn = getattr(_inp, "default_model_info", None)
        if fn is None:
            return {"model": "default", "note": "bcdi_gapfill.inpainting has no default_model_info()"}
        try:
            info = dict(fn())
        except Exception as exc:  # provenance must never break a validation run
            return {"model": "default", "error": f"default_model_info() failed: {exc!r}"}
        info.setdefault("model", "default")
        return info
    if isinstance(model, (str, Path)) and Path(model).is_file():
        digest = hashlib.sha256()
        with open(model, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return {"model": str(model), "weights_sha256": digest.hexdigest()}
    info = {"model": f"{type(model).__module__}.{type(model).__name__}"}
    state_dict = getattr(model, "state_dict", None)
    if callable(state_dict):
        # Hash of the parameters themselves, in key order: identifies in-memory weights.
        digest = hashlib.sha256()
        for key, tensor in sorted(state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        info["state_dict_sha256"] = digest.hexdigest()
    config = getattr(model, "config", None)
    if config is not None:
        info["config"] = repr(config)
    return info


def _plane_specs(gap: np.ndarray) -> list[tuple[str, int, int, str, str]]:
    """Reciprocal-space slices for the figures: the central frame and a plane in the gap."""
    nf, nr, nc = gap.shape
    planes = [("central frame", 0, nf // 2, "detector column (px)", "detector row (px)")]
    full_cols = np.flatnonzero(gap.all(axis=(0, 1)))
    full_rows = np.flatnonzero(gap.all(axis=(0, 2)))
    if full_cols.size:
        c = int(full_cols[np.argmin(np.abs(full_cols - nc // 2))])
        planes.append((f"in-gap plane, column {c}", 2, c, "detector row (px)", "frame"))
    elif full_rows.size:
        r = int(full_rows[np.argmin(np.abs(full_rows - nr // 2))])
        planes.append((f"in-gap plane, row {r}", 1, r, "detector column (px)", "frame"))
    elif gap.any():
        idx = np.argwhere(gap)
        centre = np.array(gap.shape) // 2
        c = int(idx[np.argmin(np.abs(idx - centre).sum(axis=1))][2])
        planes.append((f"plane through the gap, column {c}", 2, c, "detector row (px)", "frame"))
    return planes


def _take(a: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(a, index, axis=axis)


def _real_crop(support: np.ndarray) -> tuple[slice, slice]:
    """Rows/columns window of the central-frame real-space slice: the particle plus margin."""
    proj = support.any(axis=0)
    out = []
    for ax in (0, 1):
        idx = np.flatnonzero(proj.any(axis=1 - ax))
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        margin = max(6, (hi - lo) // 2)
        out.append(slice(max(0, lo - margin), min(proj.shape[ax], hi + margin)))
    return out[0], out[1]


# ------------------------------------------------------------------------- evaluation
class _Context:
    """Everything shared by the methods of one validation."""

    def __init__(self, obj_true, support, expected, noisy, q, voxel, algorithm, n_starts,
                 seed_pr, device, model, inpaint_options, support_threshold,
                 hybrid_quantile=HYBRID_QUANTILE, refine_options=None):
        self.obj_true = obj_true
        self.support = support
        self.expected = expected
        self.noisy = noisy
        self.phase_true_rec = np.angle(_centred_fft(obj_true))
        self.q = q
        self.voxel = voxel
        self.algorithm = algorithm
        self.n_starts = n_starts
        self.seed_pr = seed_pr
        self.device = device
        self.model = model
        self.inpaint_options = dict(inpaint_options or {})
        self.support_threshold = support_threshold
        self.hybrid_quantile = hybrid_quantile
        self.refine_options = dict(refine_options or {})
        # Model fills by (gap, with uncertainty): inpaint, model+gp and hybrid share them.
        self.model_fills: dict[tuple[bytes, bool], tuple[Any, float]] = {}


def _gap_key(gap: np.ndarray) -> bytes:
    return hashlib.sha256(np.packbits(gap).tobytes()).digest()


def _model_fill(noisy: np.ndarray, gap: np.ndarray, ctx: _Context, uncertainty: bool) -> tuple[Any, float]:
    """The model's fill of ``gap`` (and, with ``uncertainty``, its uncertainty map, computed
    with test-time flips), cached per gap, with the seconds it took."""
    key = (_gap_key(gap), uncertainty)
    if key not in ctx.model_fills:
        from .inpainting import inpaint

        opts = dict(ctx.inpaint_options)
        if ctx.model is not None:
            opts["model"] = ctx.model
        if ctx.device is not None:
            opts.setdefault("device", ctx.device)
        if uncertainty:
            opts["flips"] = True  # the spread between flipped views is most of the uncertainty
            opts["return_uncertainty"] = True
        masked = noisy.astype(np.float32, copy=True)
        masked[gap] = 0  # the model must not see the truth in the gap
        t0 = time.perf_counter()
        result = inpaint(masked, gap, method="model", **opts)
        seconds = time.perf_counter() - t0
        out = np.asarray(result[0] if uncertainty else result, dtype=np.float32)
        if out.shape != noisy.shape:
            raise RuntimeError(f"inpaint returned shape {out.shape}, expected {noisy.shape}")
        ctx.model_fills[key] = ((out, np.asarray(result[1], dtype=np.float32)) if uncertainty else out, seconds)
    return ctx.model_fills[key]


def _least_confident(uncertainty: np.ndarray, gap: np.ndarray, quantile: float) -> np.ndarray:
    """The ``quantile`` share of the gap voxels with the largest uncertainty (ties by position)."""
    idx = np.flatnonzero(gap)
    n_free = int(round(quantile * idx.size))
    free = np.zeros(gap.shape, bool)
    if n_free:
        order = np.argsort(-uncertainty.reshape(-1)[idx], kind="stable")
        free.reshape(-1)[idx[order[:n_free]]] = True
    return free


def _fill(name: str, noisy: np.ndarray, gap: np.ndarray, ctx: _Context) -> np.ndarray:
    """The intensity a method hands to the reconstruction (gap filled)."""
    if name == "no_gap":
        return noisy.astype(np.float32, copy=True)
    if name in ("zero_fill", "free_pixels"):
        out = noisy.astype(np.float32, copy=True)
        out[gap] = 0
        return out
    if name in _FILL_METHODS:
        from .classical import fill_gap

        return fill_gap(noisy, gap, _FILL_METHODS[name])
    if name in ("inpaint", "inpaint+release"):
        return _model_fill(noisy, gap, ctx, uncertainty=False)[0]
    if name == "hybrid":
        return _model_fill(noisy, gap, ctx, uncertainty=True)[0][0]
    if name in ("model+gp", "biharmonic+gp", "gp"):
        from .refine import refine_band_limited

        start = {"model+gp": lambda: _model_fill(noisy, gap, ctx, uncertainty=False)[0],
                 "biharmonic+gp": lambda: _fill("biharmonic", noisy, gap, ctx),
                 "gp": lambda: None}[name]()
        masked = noisy.astype(np.float32, copy=True)
        masked[gap] = 0
        return refine_band_limited(masked, gap, start, **ctx.refine_options)
    raise ValueError(f"unknown method {name!r}")


def _analyse(obj: np.ndarray, ctx: _Context) -> tuple[dict, dict]:
    """Metrics of a reconstruction, and its central slices for the figures."""
    aligned = M.align_to_reference(obj, ctx.obj_true, ctx.support, remove_ramp=False)
    rep = M.real_space_report(aligned, ctx.obj_true, ctx.support, ctx.q, ctx.voxel)
    phase = M.unwrap_phase(np.angle(aligned), ctx.support)
    qv = np.asarray(ctx.q, dtype=float)
    eps = M.strain(M.displacement(phase, ctx.q), ctx.voxel, 0 if qv.ndim == 0 else qv, support=ctx.support)
    k = obj.shape[0] // 2
    slices = {"modulus": np.abs(aligned[k]).astype(np.float32),
              "phase": phase[k].astype(np.float32), "strain": eps[k].astype(np.float32)}
    return rep, slices


def _duration_text(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _evaluate_gap(gap: np.ndarray, methods: Sequence[str], modes: Sequence[str], ctx: _Context,
                  skipped: dict, progress_bar: Any, keep: bool) -> tuple[dict, dict]:
    """Run every method on one gap; returns ``{mode: {name: metrics}}`` and figure slices."""
    results: dict[str, dict[str, dict]] = {m: {} for m in modes}
    figs: dict[str, Any] = {"fills": {m: {} for m in modes}, "real": {m: {} for m in modes}}
    planes = _plane_specs(gap)
    for name in methods:
        if name in skipped:
            continue
        cached = {k for k in ctx.model_fills}
        t0 = time.perf_counter()
        filled = _fill(name, ctx.noisy, gap, ctx)
        fill_time = time.perf_counter() - t0
        if name in MODEL_METHODS:
            # The model's fill is shared (cached): count its time in every method using it.
            key = (_gap_key(gap), name == "hybrid")
            if key in cached:
                fill_time += ctx.model_fills[key][1]
        freed = None
        if name == "hybrid":
            unc = _model_fill(ctx.noisy, gap, ctx, uncertainty=True)[0][1]
            freed = _least_confident(unc, gap, ctx.hybrid_quantile)
            figs.setdefault("uncertainty", unc)
        has_fill = name != "free_pixels"
        common = {"pcc_gap": _safe_pcc(ctx.noisy, filled, gap) if has_fill else None,
                  "gap_intensity_ratio": _gap_ratio(ctx.noisy, filled, gap) if has_fill else None,
                  "fill_time_s": fill_time}
        if freed is not None:
            common["freed_voxels"] = int(freed.sum())
        for mode in modes:
            if progress_bar is not None:
                progress_bar.set_postfix_str(f"{mode}: {name}")
            if mode == "oracle":
                if name in ("free_pixels", "hybrid", "inpaint+release"):
                    skipped.setdefault("oracle", {})[name] = (
                        "no oracle counterpart: its fill is inpaint's, released only inside phase retrieval"
                        if name == "inpaint+release" else
                        "no oracle counterpart: leaving gap voxels free only has a meaning inside an "
                        "iterative phase retrieval; with the true phase it would be zero_fill"
                        + ("" if name == "free_pixels" else " on the freed voxels"))
                    if progress_bar is not None:
                        progress_bar.update(1)
                    continue
                obj = _centred_ifft(np.sqrt(np.clip(filled, 0, None)) * np.exp(1j * ctx.phase_true_rec))
                rep, sl = _analyse(obj, ctx)
                entry = {**rep, **common}
                intensity_gap = filled
            else:
                from .phasing import CDIState, phase_retrieval

                t1 = time.perf_counter()
                free_mask = gap if name == "free_pixels" else freed if name == "hybrid" else None
                res = phase_retrieval(filled, free_mask=free_mask if free_mask is None or free_mask.any() else None,
                                      estimated_mask=gap if name == "inpaint+release" else None,
                                      algorithm=ctx.algorithm, n_starts=ctx.n_starts, seed=ctx.seed_pr,
                                      device=ctx.device)
                pr_time = time.perf_counter() - t1
                rep, sl = _analyse(res.obj, ctx)
                # LLK against the same measured (non-gap) noisy voxels for every method.
                state = CDIState(ctx.noisy, free_mask=gap if gap.any() else None, device="cpu")
                state.set_obj(res.obj)
                state.set_support(res.support)
                i_rec = M.diffracted_intensity(res.obj.astype(np.complex128))
                entry = {**rep, **common, "llk": res.llk, "llk_measured": state.llk(),
                         "pcc_gap_reconstructed": _safe_pcc(ctx.noisy, i_rec, gap),
                         "phasing_time_s": pr_time, "best_start": res.best,
                         "llk_starts": [float(v) for v in res.llk_starts]}
                if name in ("free_pixels", "inpaint+release"):
                    # What the reconstruction ends with in the gap (the release frees it).
                    entry["pcc_gap"] = entry["pcc_gap_reconstructed"]
                    entry["gap_intensity_ratio"] = _gap_ratio(ctx.noisy, i_rec, gap)
                    intensity_gap = i_rec
                elif name == "hybrid":
                    # In the gap: the model on the confident voxels, the reconstruction on the freed.
                    intensity_gap = np.where(freed, i_rec, filled).astype(np.float32)
                    entry["pcc_gap"] = _safe_pcc(ctx.noisy, intensity_gap, gap)
                    entry["gap_intensity_ratio"] = _gap_ratio(ctx.noisy, intensity_gap, gap)
                else:
                    intensity_gap = filled
            results[mode][name] = entry
            if keep:
                figs["real"][mode][name] = sl
                figs["fills"][mode][name] = [_take(intensity_gap, ax, i).astype(np.float32)
                                             for _, ax, i, _, _ in planes]
            if progress_bar is not None:
                progress_bar.update(1)
    return results, figs


# ----------------------------------------------------------------------------- public
def validate(obj: np.ndarray | None = None, *, seed: int | None = None, size: int | Sequence[int] = 64,
             gap: Any = "cross:9", gap_offset: int | Sequence[int] = 0, mode: str = "pr",
             counts: float | None = 1e6,
             methods: Sequence[str] | None = None, algorithm: Any = None, n_starts: int = 4,
             seed_pr: int = 0, widths: Sequence[int] | None = None, progress: bool = True,
             q_vector: float | Sequence[float] | None = None, voxel_size: float | Sequence[float] = 5e-9,
             support_threshold: float = 0.3, model: Any = None, device: Any = None,
             inpaint_options: Mapping[str, Any] | None = None,
             simulate_options: Mapping[str, Any] | None = None,
             hybrid_quantile: float = HYBRID_QUANTILE,
             refine_options: Mapping[str, Any] | None = None, selfcheck: bool = False) -> ValidationReport:
    """Measure what each gap treatment does to the reconstructed object.

    Parameters
    ----------
    obj : ndarray, complex, shape (frames, rows, columns), optional
        Ground-truth object, centred. Default: a zero-phase particle simulated from ``seed``
        with ``simulate_pattern(size, seed, phase="zero", ...)`` (no peak offset, no
        coherence blur, no background, oversampling 3 unless ``simulate_options`` says
        otherwise), as in the paper's section 2.6.1.
    seed : int, optional
        Seed of the simulated particle and of the Poisson noise (``default_rng((seed, 1))``).
        None draws one; the seed used is recorded in ``settings``.
    size : int or 3 ints
        Shape of the simulated pattern (ignored when ``obj`` is given).
    gap : str or ndarray of bool
        ``"cross:W"``, ``"vertical:W"``, ``"horizontal:W"`` (centred bands of W pixels), a
        detector name such as ``"Maxipix"`` (the centred crop of its gap layout, every
        frame), or a boolean mask of the pattern's shape.
    gap_offset : int or (rows, columns)
        Moves a spec or detector gap from the array centre, where the Bragg peak is, by this
        many pixels (one int: both bands). Default 0: the bands cross the peak's centre,
        the worst case.
    mode : {"pr", "oracle", "both"}
        ``pr`` (default): full phase retrieval of what each method hands on, free pixels and
        zero fill among them, as a user's pipeline would run it. ``oracle``: inverse FT of
        each method's ``sqrt(I)`` with the true reciprocal phase (what the fill alone is worth,
        seconds instead of minutes). ``both``: both; ``report["methods"]`` then holds the pr
        results and ``report["results"]`` both.
    counts : float or None
        Peak photon count of the pattern, Poisson-sampled. None: noiseless, with a peak of
        :data:`NOISELESS_PEAK` photons.
    methods : sequence of str, optional
        Subset of :data:`METHODS`. Default: :data:`DEFAULT_METHODS` (all but ``hybrid`` and
        the band-limit refinements), except that ``inpaint`` is skipped with a warning (and
        the reason recorded) when :mod:`bcdi_gapfill.inpainting` cannot be imported or the
        default weights are missing; named explicitly, its failure raises.
    algorithm : str or Operator, optional
        Phase-retrieval operators (default :data:`bcdi_gapfill.phasing.DEFAULT_ALGORITHM`).
    n_starts : int
        Random starts of phase retrieval (the best LLK is kept), the same for every method.
    seed_pr : int
        Start ``k`` of phase retrieval uses ``InitRandom(seed_pr + k)``, for every method.
    widths : sequence of int, optional
        Gap-width sweep (paper Supp. Figs. 16-18): each method is also evaluated with gaps
        ``"<kind>:w"`` of the kind of ``gap``, giving ``report["sweep"]``.
    progress : bool
        Show a progress bar (tqdm, on stderr) and, before phase retrieval starts, its expected
        duration (from a few timed iterations on an array of this shape).
    q_vector : float or 3 floats, optional
        ``G`` (1/m) in the array frame (its direction is the strain direction), or ``|G|``
        along axis 0. Default: Pt 111 along axis 1, the detector rows: in the usual vertical
        diffraction geometry the radial direction of the Bragg peak runs mostly along the
        detector rows (the rocking-curve frames are transverse to G), so a strain along
        axis 1 is what a row gap perturbs. (A gap constant along the frames barely touches
        the strain along axis 0.)
    voxel_size : float or 3 floats
        Real-space voxel size in metres (strain scale and figure axes), default 5 nm.
    support_threshold : float
        The truth's support is its 1-voxel-smoothed modulus above this fraction of the max.
    model : optional
        Passed to ``inpaint(..., model=model)``; None uses the packaged default model.
    device : optional
        Torch device for inpainting and phase retrieval.
    inpaint_options, simulate_options : dict, optional
        Extra keyword arguments of ``inpaint`` and ``simulate_pattern``.
    hybrid_quantile : float
        Share of the gap voxels, those of largest uncertainty, that ``hybrid`` leaves free
        during phase retrieval, in [0, 1] (0: the model's fill everywhere, 1: free pixels).
    refine_options : dict, optional
        Keyword arguments of :func:`bcdi_gapfill.refine.refine_band_limited` for the ``+gp``
        and ``gp`` methods (e.g. ``{"n_iter": 200, "refine_above": 0.01}``).
    selfcheck : bool
        Also run :func:`bcdi_gapfill.selfcheck.assess` on the same measured pattern (the
        treatments of ``methods`` it knows, at least two; ``n_starts`` starts, the same
        algorithm) and put its scores, which use no truth, in ``report["selfcheck"]`` beside
        the truth-based ones. Costs about twice the phasing of those treatments.

    Returns
    -------
    ValidationReport
        A dict (JSON-serialisable, NaN written as None)::

            {"schema": ..., "mode": ..., "primary_mode": "pr" | "oracle",
             "methods": {name: {metric: value}},          # primary mode, main gap
             "results": {"oracle": {...}, "pr": {...}},    # the modes that ran
             "sweep": {"widths": [...], "kind": ..., "mode": ..., "methods":
                       {name: {metric: [one per width]}}, "by_mode": {mode: {...}}},  # with widths
             "settings": {...}}

        Metrics: ``strain_rmse`` (RMS strain error inside the true support, dimensionless),
        ``phase_std`` (rad), ``mean_strain``, ``mean_strain_true``, ``strain_std``,
        ``spurious_modulus`` (fraction of ``|obj|**2`` outside the dilated true support),
        ``overlap``, ``pcc_gap`` (log PCC over the gap voxels of the intensity the method
        puts in the gap, against the noisy truth; None where it is undefined, e.g. the
        constant zero fill; for free_pixels and inpaint+release in pr mode, the
        reconstruction's intensity),
        ``gap_intensity_ratio`` (photons in the gap over the truth's), ``fill_time_s``; in
        pr mode also ``llk`` (against the data the method gave to phase retrieval),
        ``llk_measured`` (against the measured, non-gap voxels: comparable between methods),
        ``pcc_gap_reconstructed``, ``phasing_time_s``, ``best_start``, ``llk_starts``.
        ``report.figures`` holds the slices for :func:`write_report`.
    """
    from . import phasing as P

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    modes = ("oracle", "pr") if mode == "both" else (mode,)
    primary = "pr" if "pr" in modes else "oracle"
    explicit_methods = methods is not None
    methods = tuple(DEFAULT_METHODS if methods is None else methods)
    if isinstance(methods, str) or not methods:
        raise ValueError("methods must be a non-empty sequence of method names")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {METHODS}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods has duplicates: {methods}")
    methods = tuple(m for m in METHODS if m in methods)  # canonical order
    if selfcheck and len([m for m in methods if m in SELFCHECK_TREATMENTS]) < 2:
        raise ValueError(f"selfcheck needs at least two of {SELFCHECK_TREATMENTS} among the methods, got {methods}")
    if counts is not None and not (math.isfinite(counts) and counts > 0):
        raise ValueError(f"counts must be a positive peak photon count or None, got {counts!r}")
    if isinstance(n_starts, bool) or not isinstance(n_starts, (int, np.integer)) or n_starts < 1:
        raise ValueError(f"n_starts must be an integer >= 1, got {n_starts!r}")
    if isinstance(hybrid_quantile, bool) or not isinstance(hybrid_quantile, (int, float, np.integer, np.floating)) \
            or not 0 <= hybrid_quantile <= 1:
        raise ValueError(f"hybrid_quantile must be a number in [0, 1], got {hybrid_quantile!r}")
    if refine_options is not None and not isinstance(refine_options, Mapping):
        raise TypeError(f"refine_options must be a dict of refine_band_limited arguments, got "
                        f"{type(refine_options).__name__}")
    algorithm = P.DEFAULT_ALGORITHM if algorithm is None else algorithm
    if "pr" in modes:
        P.parse_algorithm(algorithm) if isinstance(algorithm, str) else None  # fail early
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])

    # ground truth
    sim_meta: dict[str, Any] = {}
    if obj is None:
        from .simulate import simulate_pattern

        opts = {"peak_offset": (0, 0, 0), "coherence_sigma": 0.0, "background": 0.0, "oversampling": 3.0}
        opts.update(simulate_options or {})
        sim = simulate_pattern(size, seed, phase="zero", **opts)
        obj_true = sim.obj.astype(np.complex128)
        sim_meta = dict(sim.metadata)
        source = "simulate_pattern(phase='zero')"
    else:
        obj_true = np.asarray(obj)
        if obj_true.ndim != 3 or not np.issubdtype(obj_true.dtype, np.number):
            raise ValueError(f"obj must be a 3D numeric (complex) array, got shape {obj_true.shape} "
                             f"and dtype {obj_true.dtype}")
        obj_true = obj_true.astype(np.complex128)
        if not np.all(np.isfinite(obj_true)) or not np.any(obj_true):
            raise ValueError("obj must be finite and not identically zero")
        source = "user object"
    shape = obj_true.shape
    amp = _centred_fft(obj_true)
    peak = float(NOISELESS_PEAK if counts is None else counts)
    scale = math.sqrt(peak / float(np.max(np.abs(amp) ** 2)))
    obj_true = obj_true * scale  # |FFT(obj_true)|**2 is now the expected intensity in photons
    expected = (np.abs(amp * scale) ** 2).astype(np.float64)
    noise_seed = [int(seed), 1]
    if counts is None:
        noisy = expected.astype(np.float32)
    else:
        noisy = np.random.default_rng(noise_seed).poisson(expected).astype(np.float32)
    support = _truth_support(obj_true, support_threshold)
    q = [0.0, M.bragg_q((1, 1, 1)), 0.0] if q_vector is None else q_vector
    off = np.broadcast_to(np.asarray(gap_offset), (2,))
    if not np.issubdtype(off.dtype, np.integer):
        raise TypeError(f"gap_offset must be an int or two ints, got {gap_offset!r}")
    off = (int(off[0]), int(off[1]))

    main_gap, gap_info = _gap_mask(gap, shape, off)
    sweep_specs: list[tuple[int, np.ndarray]] = []
    if widths is not None:
        if gap_info["gap_kind"] not in ("cross", "vertical", "horizontal"):
            raise ValueError("a width sweep needs a synthetic gap spec such as 'cross:9' for its kind, "
                             f"got gap={gap!r}")
        ws = [int(w) for w in widths]
        if not ws or any(w < 1 for w in ws) or len(set(ws)) != len(ws):
            raise ValueError(f"widths must be distinct positive integers, got {widths!r}")
        sweep_specs = [(w, _gap_mask(f"{gap_info['gap_kind']}:{w}", shape, off)[0]) for w in ws]

    skipped: dict[str, Any] = {}
    model_info = None
    model_methods = [m for m in methods if m in MODEL_METHODS]
    if model_methods:
        try:
            from . import inpainting as _inp

            if model is None and hasattr(_inp, "default_model_info"):
                _inp.default_model_info()  # raises when the default weights are missing
        except (ImportError, FileNotFoundError) as exc:
            if explicit_methods:
                raise
            msg = (f"the inpaint method was skipped: {type(exc).__name__}: {exc} (name it in methods= "
                   "to make this an error)")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            for name in model_methods:
                skipped[name] = msg
        else:
            model_info = _model_info(model)

    ctx = _Context(obj_true, support, expected, noisy, q, voxel_size, algorithm, int(n_starts),
                   int(seed_pr), device, model, inpaint_options, support_threshold,
                   hybrid_quantile=float(hybrid_quantile), refine_options=refine_options)
    n_methods = len([m for m in methods if m not in skipped])
    extra = [w for w, _ in sweep_specs if not (gap_info["gap_width"] == w)]
    total = n_methods * len(modes) * (1 + len(extra))
    if progress and "pr" in modes:
        n_phased = n_methods * (1 + len(extra))
        seconds = P.estimate_phasing_seconds(shape, algorithm, n_starts=int(n_starts), n_runs=n_phased,
                                             device=device)
        print(f"validate: {n_phased} phase retrievals of {int(n_starts)} starts on {shape[0]}x{shape[1]}x"
              f"{shape[2]}, expected about {_duration_text(seconds)} on this machine", file=sys.stderr)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="validate", file=sys.stderr, leave=False)
        except ImportError:  # pragma: no cover
            bar = None
    t_start = time.perf_counter()
    try:
        main_results, figs = _evaluate_gap(main_gap, methods, modes, ctx, skipped, bar, keep=True)
        sweep_results: dict[int, dict] = {}
        for w, g in sweep_specs:
            if gap_info["gap_width"] == w and np.array_equal(g, main_gap):
                sweep_results[w] = main_results
            else:
                sweep_results[w], _ = _evaluate_gap(g, methods, modes, ctx, skipped, bar, keep=False)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t_start

    report = ValidationReport()
    report["schema"] = _SCHEMA
    report["mode"] = mode
    report["primary_mode"] = primary
    report["methods"] = _finite_or_none(main_results[primary])
    report["verdict"] = verdict(report)
    report["results"] = _finite_or_none(main_results)
    checked = [m for m in methods if m in SELFCHECK_TREATMENTS and m not in skipped]
    if selfcheck and len(checked) >= 2:
        check = assess(noisy, main_gap, treatments=checked, n_starts=int(n_starts), algorithm=algorithm,
                       seed=int(seed_pr), model=model, device=device, inpaint_options=inpaint_options,
                       progress=progress)
        truth_best = min(checked, key=lambda m: _finite_or_inf(main_results[primary][m].get("strain_rmse")))
        check["truth_best"] = truth_best
        check["agrees_with_truth"] = check["recommended"] == truth_best
        report["selfcheck"] = _finite_or_none(check)
    elif selfcheck:
        report["selfcheck_skipped"] = f"fewer than two self-check treatments left after skipping {sorted(skipped)}"
    if sweep_specs:
        by_mode = {}
        for m in modes:
            names = [n for n in methods if any(n in sweep_results[w][m] for w, _ in sweep_specs)]
            by_mode[m] = {n: {k: [sweep_results[w][m][n].get(k) for w, _ in sweep_specs]
                              for k in (METRIC_KEYS + (PR_METRIC_KEYS if m == "pr" else ()))}
                          for n in names}
        report["sweep"] = _finite_or_none({
            "widths": [w for w, _ in sweep_specs], "kind": gap_info["gap_kind"], "mode": primary,
            "methods": by_mode[primary], "by_mode": by_mode})
    settings = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "source": source, "shape": list(shape), "seed": seed, "noise_seed": noise_seed,
        "counts": counts, "peak_photons": peak, "noiseless": counts is None,
        "total_photons": float(noisy.astype(np.float64).sum()),
        **gap_info, "gap_offset_px": list(off), "gap_voxels": int(main_gap.sum()),
        "gap_fraction": float(main_gap.mean()),
        "modes": list(modes), "methods": [m for m in methods if m not in skipped],
        "methods_requested": list(methods),
        "skipped_methods": skipped,
        "oracle": ("inverse FFT of sqrt(I_method) with the true reciprocal phase"
                   if "oracle" in modes else None),
        # phase-retrieval settings only mean something when pr mode ran
        "algorithm": ((algorithm if isinstance(algorithm, str) else repr(algorithm))
                      if "pr" in modes else None),
        "n_starts": int(n_starts) if "pr" in modes else None,
        "seed_pr": int(seed_pr) if "pr" in modes else None,
        "q_vector_inv_m": _finite_or_none(np.asarray(q, float).tolist()),
        "strain_direction": "array axis 0" if np.ndim(q) == 0 else
        [float(v) for v in np.asarray(q, float) / np.linalg.norm(np.asarray(q, float))],
        "voxel_size_m": _finite_or_none(np.asarray(voxel_size, float).tolist()),
        "support_threshold": support_threshold, "support_voxels": int(support.sum()),
        "device": None if device is None else str(device),
        "model": model_info if any(m not in skipped for m in model_methods) else None,
        "hybrid_quantile": float(hybrid_quantile) if "hybrid" in methods else None,
        "refine_options": (dict(refine_options or {}) if any(m.endswith("gp") for m in methods) else None),
        "simulation": sim_meta or None,
        "elapsed_s": elapsed,
        "notes": [
            "strain_rmse, mean_strain and strain_std are dimensionless (strain along G); phase_std in rad",
            "pcc_gap is null where the Pearson correlation is undefined (a constant fill such as zero_fill)",
            "biharmonic and linear_interp fill log1p(counts) (classical.fill_gap, log=True)",
        ],
    }
    if "uncertainty" in figs:
        from .calibration import log_errors, reliability_table

        unc = figs["uncertainty"]
        fill = ctx.model_fills[(_gap_key(main_gap), True)][0][0]
        report["uncertainty"] = _finite_or_none({
            "reliability": reliability_table(log_errors(noisy, fill, main_gap), unc[main_gap], 10),
            "truth": "noisy pattern", "flips": True, "hybrid_quantile": float(hybrid_quantile),
            "freed_voxels": int(round(float(hybrid_quantile) * int(main_gap.sum()))),
            "mean_uncertainty": float(unc[main_gap].mean()), "max_uncertainty": float(unc[main_gap].max())})
    report["settings"] = _finite_or_none(settings)

    # figure data (central slices only)
    planes = _plane_specs(main_gap)
    fd = FigureData()
    masked_slices = []
    for _, ax, i, _, _ in planes:
        s = _take(noisy, ax, i).astype(np.float32)
        s[_take(main_gap, ax, i)] = np.nan
        masked_slices.append(s)
    fd.recip = {"planes": planes, "truth": [_take(noisy, ax, i) for _, ax, i, _, _ in planes],
                "masked": masked_slices, "gap": [_take(main_gap, ax, i) for _, ax, i, _, _ in planes],
                "methods": figs["fills"]}
    rows, cols = _real_crop(support)
    k = shape[0] // 2
    vox = np.broadcast_to(np.asarray(voxel_size, float), (3,)) * 1e9
    crop_real = {}
    for m in modes:
        crop_real[m] = {n: {key: v[rows, cols] for key, v in sl.items()} for n, sl in figs["real"][m].items()}
    phase_t = M.unwrap_phase(np.angle(obj_true), support)
    eps_t = M.strain(M.displacement(phase_t, q), voxel_size, 0 if np.ndim(q) == 0 else q, support=support)
    fd.real = {"modes": crop_real,
               "truth": {"modulus": np.abs(obj_true[k])[rows, cols].astype(np.float32),
                         "phase": phase_t[k][rows, cols].astype(np.float32),
                         "strain": eps_t[k][rows, cols].astype(np.float32)},
               "support": support[k][rows, cols],
               "extent": [(cols.start - shape[2] // 2 - 0.5) * vox[2],
                          (cols.stop - shape[2] // 2 - 0.5) * vox[2],
                          (rows.stop - shape[1] // 2 - 0.5) * vox[1],
                          (rows.start - shape[1] // 2 - 0.5) * vox[1]],
               "axes": ("columns (nm)", "rows (nm)"), "plane": f"central frame (index {k})"}
    if "uncertainty" in figs:
        unc = figs["uncertainty"]
        fill = ctx.model_fills[(_gap_key(main_gap), True)][0][0]
        abs_err = np.abs(np.log1p(fill.astype(np.float64)) - np.log1p(noisy.astype(np.float64)))
        freed = _least_confident(unc, main_gap, float(hybrid_quantile))

        def gap_only(a: np.ndarray, ax: int, i: int) -> np.ndarray:
            return np.where(_take(main_gap, ax, i), _take(a, ax, i), np.nan).astype(np.float32)

        fd.uncertainty = {"planes": planes,
                          "uncertainty": [gap_only(unc, ax, i) for _, ax, i, _, _ in planes],
                          "abs_error": [gap_only(abs_err, ax, i) for _, ax, i, _, _ in planes],
                          "freed": [_take(freed, ax, i) for _, ax, i, _, _ in planes]}
    report.figures = fd
    report.pattern = {"counts": noisy, "gap_mask": main_gap}
    return report


# ----------------------------------------------------------------------------- report
def _png(fig: Any) -> str:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v: Any, key: str = "") -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        if key in ("strain_rmse", "mean_strain", "mean_strain_true", "strain_std"):
            return f"{v * 1e4:.3f}"
        if key == "spurious_modulus":
            return f"{v * 100:.3f}"
        if key in ("fill_time_s", "phasing_time_s"):
            return f"{v:.2f}"
        return f"{v:.4g}"
    return html.escape(str(v))


_TABLE_COLUMNS = [
    ("strain_rmse", "strain RMSE (10<sup>&minus;4</sup>)", "low"),
    ("mean_strain", "mean strain (10<sup>&minus;4</sup>)", "zero"),
    ("strain_std", "strain std (10<sup>&minus;4</sup>)", "low"),
    ("phase_std", "phase std (rad)", "low"),
    ("spurious_modulus", "spurious modulus (%)", "low"),
    ("overlap", "overlap", "high"),
    ("pcc_gap", "PCC in gap (log)", "high"),
    ("gap_intensity_ratio", "gap photons / truth", "one"),
    ("freed_voxels", "freed voxels", None),
    ("llk_measured", "LLK (measured voxels)", "low"),
    ("pcc_gap_reconstructed", "PCC in gap, recon. (log)", "high"),
    ("fill_time_s", "fill time (s)", None),
    ("phasing_time_s", "PR time (s)", None),
]


def _table(results: Mapping[str, Mapping[str, Any]]) -> str:
    cols = [c for c in _TABLE_COLUMNS if any(c[0] in r for r in results.values())]
    best: dict[str, str] = {}
    contenders = {n: r for n, r in results.items() if n != "no_gap"}
    for key, _, rule in cols:
        vals = {n: r.get(key) for n, r in contenders.items() if isinstance(r.get(key), (int, float))}
        if rule and len(vals) > 1:
            score = {"low": lambda v: v, "high": lambda v: -v, "zero": abs, "one": lambda v: abs(v - 1)}[rule]
            best[key] = min(vals, key=lambda n: score(vals[n]))
    head = "".join(f"<th>{label}</th>" for _, label, _ in cols)
    rows = []
    for name, r in results.items():
        cells = []
        for key, _, _ in cols:
            txt = _fmt(r.get(key), key)
            cells.append(f"<td class='best'>{txt}</td>" if best.get(key) == name else f"<td>{txt}</td>")
        cls = " class='ref'" if name == "no_gap" else ""
        rows.append(f"<tr{cls}><th>{html.escape(_LABELS.get(name, name))}</th>{''.join(cells)}</tr>")
    return (f"<table><thead><tr><th>method</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            "<p class='cap'>Bold: best among the gap treatments (no_gap is the reference). Strain values "
            "are dimensionless strain along G &times;10<sup>4</sup>; spurious modulus is the share of "
            "|&rho;|<sup>2</sup> outside the 1-voxel-dilated true support.</p>")


def _recip_figure(recip: Mapping[str, Any], mode: str) -> Any:
    import matplotlib
    from matplotlib import colors
    from matplotlib.figure import Figure

    planes = recip["planes"]
    items = [("truth (no gap)", recip["truth"]), ("masked", recip["masked"])]
    for name, sl in recip["methods"].get(mode, {}).items():
        if name == "no_gap":
            continue
        label = _LABELS.get(name, name) + {"free_pixels": " (PR intensity)",
                                           "inpaint+release": " (PR intensity)",
                                           "hybrid": " (PR on freed)"}.get(name, "")
        items.append((label, sl))
    ncol, nrow = len(items), len(planes)
    fig = Figure(figsize=(2.3 * ncol + 0.8, 2.5 * nrow + 0.4))
    axs = fig.subplots(nrow, ncol, squeeze=False)
    vmax = math.log10(1 + float(np.nanmax(recip["truth"][0])))
    cmap = matplotlib.colormaps["turbo"].with_extremes(bad="0.75")
    im = None
    for j, (label, slices) in enumerate(items):
        for i, (ptitle, _, _, xl, yl) in enumerate(planes):
            ax = axs[i, j]
            data = np.log10(1 + np.clip(slices[i], 0, None))
            im = ax.imshow(data, cmap=cmap, norm=colors.Normalize(0, vmax), origin="upper",
                           interpolation="nearest", aspect="auto")
            g = recip["gap"][i]
            if j >= 2 and g.any() and not g.all():
                ax.contour(g.astype(float), levels=[0.5], colors="w", linewidths=0.6, linestyles="--")
            if i == 0:
                ax.set_title(label, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{ptitle}\n{yl}", fontsize=8)
            ax.set_xlabel(xl, fontsize=7)
            ax.tick_params(labelsize=6)
    cb = fig.colorbar(im, ax=axs, shrink=0.85, pad=0.01)
    cb.set_label("log$_{10}$(1 + photons)")
    return fig


def _real_figure(real: Mapping[str, Any], mode: str) -> Any:
    import matplotlib
    from matplotlib import colors
    from matplotlib.figure import Figure

    sets = [("ground truth", real["truth"])] + [
        (_LABELS.get(n, n), sl) for n, sl in real["modes"].get(mode, {}).items()]
    sup = real["support"]
    modmax = float(np.max(real["truth"]["modulus"])) or 1.0

    def inside(a: np.ndarray) -> np.ndarray:
        return np.where(sup, a, np.nan)

    def sym_lim(key: str, floor: float) -> float:
        vals = [np.abs(inside(s[key]) - (np.nanmean(inside(s[key])) if key == "phase" else 0))
                for _, s in sets]
        vals = np.concatenate([v[np.isfinite(v)] for v in vals]) if vals else np.array([floor])
        # 97th percentile: a few surface voxels of a poor reconstruction (phase-unwrapping
        # failures where the modulus vanishes) must not wash out every other panel.
        return max(floor, float(np.percentile(vals, 97)) if vals.size else floor)

    plim = sym_lim("phase", 0.02)
    slim = sym_lim("strain", 1e-5)
    ncol = len(sets)
    fig = Figure(figsize=(1.9 * ncol + 1.3, 6.9), layout="constrained")
    axs = fig.subplots(3, ncol, squeeze=False, sharex=True, sharey=True)
    ext = real["extent"]
    xl, yl = real["axes"]
    rows = [("modulus", "gray", colors.PowerNorm(0.5, 0, 1),
             "|$\\rho$| / max|$\\rho_{true}$|\n(square-root scale)"),
            ("phase", "RdBu_r", colors.Normalize(-plim, plim), "phase (rad)"),
            ("strain", "coolwarm", colors.Normalize(-slim * 1e4, slim * 1e4), "strain along G ($10^{-4}$)")]
    for i, (key, cmap_name, norm, cblabel) in enumerate(rows):
        cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="0.85")
        im = None
        for j, (label, s) in enumerate(sets):
            if key == "modulus":
                data = s["modulus"] / modmax
            elif key == "phase":
                data = inside(s["phase"]) - np.nanmean(inside(s["phase"]))
            else:
                data = inside(s["strain"]) * 1e4
            ax = axs[i, j]
            im = ax.imshow(data, cmap=cmap, norm=norm, extent=ext, interpolation="nearest")
            ax.contour(sup.astype(float), levels=[0.5], colors="k" if key != "modulus" else "y",
                       linewidths=0.5, extent=[ext[0], ext[1], ext[3], ext[2]], origin="upper")
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(label, fontsize=9)
            if i == 2:
                ax.set_xlabel(xl, fontsize=8)
            if j == 0:
                ax.set_ylabel(yl, fontsize=8)
        cb = fig.colorbar(im, ax=axs[i, :], shrink=0.9, pad=0.01, aspect=15)
        cb.set_label(cblabel, fontsize=8)
        cb.ax.tick_params(labelsize=7)
    return fig


def _sweep_figure(sweep: Mapping[str, Any], mode: str) -> Any:
    from matplotlib.figure import Figure

    data = sweep["by_mode"][mode]
    widths = np.asarray(sweep["widths"], float)
    fig = Figure(figsize=(11, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    markers = dict(zip(METHODS, "os^vDx<>ph"))
    n = max(len(data), 1)
    span = float(np.ptp(widths)) if widths.size > 1 else 1.0
    for k, (name, vals) in enumerate(data.items()):
        def arr(key: str) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in vals.get(key, [])], float)

        rm, ms, sd = arr("strain_rmse"), arr("mean_strain"), arr("strain_std")
        lab = _LABELS.get(name, name)
        ls = ":" if name == "no_gap" else "-"
        col = _COLORS.get(name)
        ax1.plot(widths, rm * 1e4, ls, marker=markers.get(name, "o"), color=col, label=lab)
        off = (k - (n - 1) / 2) * 0.012 * span  # keep the error bars apart
        ax2.errorbar(widths + off, ms * 1e4, yerr=sd * 1e4, ls=ls, marker=markers.get(name, "o"),
                     color=col, capsize=3, label=lab)
    ax1.set_xlabel("gap width (pixels)")
    ax1.set_ylabel("strain RMSE ($10^{-4}$)")
    ax1.set_title(f"strain RMSE vs gap width ({mode}; Supp. Fig. 18)", fontsize=10)
    ax2.axhline(0, color="k", lw=0.6)
    ax2.set_xlabel("gap width (pixels)")
    ax2.set_ylabel("mean strain ($10^{-4}$), bars: std")
    ax2.set_title(f"mean strain vs gap width ({mode}; Supp. Fig. 17)", fontsize=10)
    for ax in (ax1, ax2):
        ax.set_xticks(widths)
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    return fig


def _uncertainty_figure(unc: Mapping[str, Any]) -> Any:
    import matplotlib
    from matplotlib import colors
    from matplotlib.figure import Figure

    planes = unc["planes"]
    fig = Figure(figsize=(10, 3.2 * len(planes) + 0.4), layout="constrained")
    axs = fig.subplots(len(planes), 2, squeeze=False)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="0.85")
    for j, (key, label) in enumerate((("uncertainty", "predicted uncertainty"),
                                      ("abs_error", "actual |error| (noisy truth)"))):
        values = np.concatenate([a[np.isfinite(a)] for a in unc[key]])
        # Own scale per column (the error also holds the Poisson noise, far larger); the 99th
        # percentile keeps a few extreme voxels from washing out the rest.
        top = float(np.percentile(values, 99)) if values.size else 1.0
        norm = colors.Normalize(0, top if top > 0 else 1.0)
        im = None
        for i, (ptitle, _, _, xl, yl) in enumerate(planes):
            ax = axs[i, j]
            im = ax.imshow(unc[key][i], cmap=cmap, norm=norm, interpolation="nearest", aspect="auto")
            freed = unc["freed"][i]
            if freed.any():
                ax.contour(freed.astype(float), levels=[0.5], colors="c", linewidths=0.6)
            ax.set_title(f"{label}, {ptitle}", fontsize=9)
            ax.set_xlabel(xl, fontsize=7)
            ax.set_ylabel(yl, fontsize=7)
            ax.tick_params(labelsize=6)
        cb = fig.colorbar(im, ax=axs[:, j], shrink=0.85, pad=0.01)
        cb.set_label(f"{label} (log1p counts)", fontsize=8)
    return fig


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;margin:1.5em auto;
color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}sup{white-space:nowrap}
thead th{background:#f0f0f0;text-align:center}
tbody th{text-align:left;background:#fafafa}td.best{font-weight:bold;background:#e8f4e8}
tr.ref td,tr.ref th{color:#666;font-style:italic}
img{max-width:100%;display:block;margin:.5em 0}.cap{font-size:.85em;color:#555;margin-top:0}
.kv td{text-align:left;font-family:monospace;font-size:.95em}.kv th{text-align:left}
.warn{color:#a40}
"""


def _offset_text(settings: Mapping[str, Any]) -> str:
    off = settings.get("gap_offset_px")
    if not off or not any(off):
        return ""
    return f", offset ({off[0]}, {off[1]}) px (rows, columns) from the peak"


def _finite_or_inf(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.inf


def _selfcheck_html(check: Mapping[str, Any]) -> str:
    """The self-check's scores (no truth used) beside the truth's pick."""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{check['scores'][name]['deviance']:.3f}</td>"
        f"<td>{check['scores'][name]['spread']:.3f}</td><td>{check['scores'][name]['pcc_log']:.3f}</td></tr>"
        for name in check["ranking"])
    agree = ("agrees with" if check.get("agrees_with_truth") else "differs from") + \
        f" the truth's pick ({html.escape(str(check.get('truth_best')))}, lowest strain RMSE above)"
    return (f"<h2>Self-check (no truth used)</h2><p class='cap'>{html.escape(check['summary'])} It {agree}. "
            + ("Measured bands withheld beside the gap (free in every run), each treatment applied to the gap, "
               if check.get("settings", {}).get("hidden", "free") == "free" else
               "Measured bands hidden beside the gap, each treatment applied to gap and bands, ") +
            "phased; "
            "Poisson deviance per hidden voxel (lower is better), its spread over bands and starts, and "
            "the log1p PCC of the hidden counts.</p><table><tr><th>treatment</th><th>deviance</th>"
            f"<th>spread</th><th>log PCC</th></tr>{rows}</table>")


def verdict(report: Mapping[str, Any]) -> str:
    """One sentence: which treatment gave the lowest strain RMSE against the truth, by how much.

    Read from ``report["methods"]`` (the primary mode); ``no_gap`` is the reference, not a
    contender.
    """
    methods = report["methods"]
    scored = {n: m["strain_rmse"] for n, m in methods.items()
              if n != "no_gap" and m.get("strain_rmse") is not None and math.isfinite(m["strain_rmse"])}
    if not scored:
        return "No treatment gave a finite strain error."
    ranked = sorted(scored, key=scored.get)
    best = ranked[0]
    text = f"{best} gave the lowest strain RMSE ({scored[best]:.2g})"
    if len(ranked) > 1:
        second = ranked[1]
        ratio = scored[second] / scored[best] if scored[best] > 0 else math.inf
        text += f", {ratio:.2g}x below the next, {second} ({scored[second]:.2g})"
    reference = methods.get("no_gap", {}).get("strain_rmse")
    if reference is not None and math.isfinite(reference):
        text += f"; without the gap: {reference:.2g}"
    mode = "phase retrieval" if report.get("primary_mode") == "pr" else "the true phases (oracle)"
    return text + f" ({mode})."


def _render_html(report: Mapping[str, Any], figures: FigureData | None) -> str:
    s = report.get("settings", {})
    modes = list(report.get("results", {}) or {report.get("primary_mode", "oracle"): report["methods"]})
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>bcdi-gapfill validation report</title><style>{_CSS}</style></head><body>",
             "<h1>Real-space validation of detector-gap treatments</h1>",
             f"<p class='verdict'><b>{html.escape(verdict(report))}</b></p>",
             "<p class='cap'>bcdi-gapfill {v} &middot; {created} &middot; gap <b>{gap}</b>{off} "
             "({gv} voxels, {gf:.2%}) &middot; shape {shape} &middot; peak {peak} photons{noise} "
             "&middot; modes: {modes}</p>"
             .format(v=html.escape(str(s.get("versions", {}).get("bcdi_gapfill", "?"))),
                     created=html.escape(str(s.get("created_utc", ""))), gap=html.escape(str(s.get("gap"))),
                     off=_offset_text(s),
                     gv=s.get("gap_voxels", 0), gf=s.get("gap_fraction") or 0.0,
                     shape=" &times; ".join(str(x) for x in s.get("shape", [])),
                     peak=f"{s.get('peak_photons', 0):.3g}",
                     noise=" (noiseless)" if s.get("noiseless") else " (Poisson noise)",
                     modes=", ".join(modes))]
    skipped = s.get("skipped_methods") or {}
    if skipped:
        items = []
        for k, v in skipped.items():
            if isinstance(v, dict):
                items += [f"<li>{html.escape(n)} ({html.escape(k)} mode): {html.escape(str(r))}</li>"
                          for n, r in v.items()]
            else:
                items.append(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>")
        parts.append(f"<p class='warn'>Skipped:</p><ul class='warn'>{''.join(items)}</ul>")
    desc = {"oracle": "Oracle (paper &sect;2.6.1): inverse Fourier transform of each method's modulus "
                      "&radic;I with the <i>true</i> reciprocal-space phase.",
            "pr": "Phase retrieval (paper &sect;2.6.2): {algo}, {n} random starts from seed {sp}, identical "
                  "for every method; reconstructions aligned to the truth (twin, shift, global phase; the "
                  "phase ramp is kept since it is a uniform strain).".format(
                      algo=html.escape(str(s.get("algorithm"))), n=s.get("n_starts"), sp=s.get("seed_pr"))}
    fig_no = 1
    for m in modes:
        parts.append(f"<h2>Metrics &mdash; {html.escape(m)} mode</h2><p class='cap'>{desc.get(m, '')}</p>")
        parts.append(_table(report["results"][m] if "results" in report else report["methods"]))
    if report.get("selfcheck"):
        parts.append(_selfcheck_html(report["selfcheck"]))
    if figures is not None and figures.real:
        for m in modes:
            if m not in figures.real.get("modes", {}):
                continue
            fig = _real_figure(figures.real, m)
            parts.append(f"<h2>Figure {fig_no}. Reconstructed object, {html.escape(m)} mode</h2>")
            parts.append(f"<img alt='real-space slices {html.escape(m)}' "
                         f"src='data:image/png;base64,{_png(fig)}'>")
            parts.append(f"<p class='cap'>Central slices ({html.escape(figures.real['plane'])}) of "
                         "the modulus (top), phase (middle) and strain along G (bottom), cf. paper Figs. 7 "
                         "and 8. Phase and strain are shown inside the true support (contour) with colour "
                         "limits shared by all columns; the modulus, normalised to the truth's maximum, "
                         "uses a square-root scale so that the artefacts outside the particle are "
                         "visible.</p>")
            fig_no += 1
    if figures is not None and figures.recip:
        for m in modes:
            fig = _recip_figure(figures.recip, m)
            parts.append(f"<h2>Figure {fig_no}. Reciprocal space in the gap, {html.escape(m)} mode</h2>")
            parts.append(f"<img alt='reciprocal-space slices {html.escape(m)}' "
                         f"src='data:image/png;base64,{_png(fig)}'>")
            parts.append("<p class='cap'>Intensity slices (cf. paper Figs. 3, 4 and Supp. Fig. 15): the "
                         "noisy truth, the masked data (gap in grey) and the intensity each method puts in "
                         "the gap (gap outlined, dashed). Top: central frame; bottom: a plane inside the "
                         "gap. For free pixels (pr mode) the intensity is that of the reconstruction.</p>")
            fig_no += 1
    uncertainty = report.get("uncertainty")
    if uncertainty:
        from .calibration import reliability_figure

        rel = uncertainty["reliability"]
        rho = rel.get("spearman")
        fig = reliability_figure({"noisy truth": rel}, title="Reliability of the model's uncertainty (main gap)")
        parts.append(f"<h2>Figure {fig_no}. Uncertainty of the model and its reliability</h2>")
        parts.append(f"<img alt='reliability plot' src='data:image/png;base64,{_png(fig)}'>")
        parts.append("<p class='cap'>Gap voxels in {n} equal-count bins of the uncertainty predicted by the model "
                     "(weighted standard deviation of the overlapping windows and test-time flips, log1p "
                     "units): mean and RMS of the actual error of log1p(fill) against the noisy truth per bin. "
                     "Spearman rank correlation of |error| with the uncertainty over {v} voxels: {r}. The "
                     "error includes the Poisson noise of the truth, which no spread of predictions "
                     "foresees. Hybrid leaves the {q:.0%} least confident gap voxels free.</p>".format(
                         n=rel.get("n_bins"), v=rel.get("n_voxels"),
                         r="n/a" if rho is None else f"{rho:.3f}", q=uncertainty.get("hybrid_quantile") or 0.0))
        fig_no += 1
        if figures is not None and figures.uncertainty:
            fig = _uncertainty_figure(figures.uncertainty)
            parts.append(f"<h2>Figure {fig_no}. Uncertainty map in the gap</h2>")
            parts.append(f"<img alt='uncertainty map' src='data:image/png;base64,{_png(fig)}'>")
            parts.append("<p class='cap'>Predicted uncertainty (left) and actual |log1p error| against the "
                         "noisy truth (right) on the gap voxels of the planes of the reciprocal-space figure; "
                         "cyan contours: the voxels hybrid leaves free.</p>")
            fig_no += 1
    sweep = report.get("sweep")
    if sweep:
        for m in sweep.get("by_mode", {}):
            fig = _sweep_figure(sweep, m)
            parts.append(f"<h2>Figure {fig_no}. Gap-width sweep, {html.escape(m)} mode</h2>")
            parts.append(f"<img alt='gap width sweep {html.escape(m)}' "
                         f"src='data:image/png;base64,{_png(fig)}'>")
            parts.append(f"<p class='cap'>{html.escape(str(sweep.get('kind')))} gaps of widths "
                         f"{', '.join(str(w) for w in sweep['widths'])} pixels{_offset_text(s)}. "
                         "Left: RMS strain error inside the support; right: mean strain (the truth is "
                         "strain-free) with the strain standard deviation as error bars.</p>")
            fig_no += 1
    rows = []
    for k, v in s.items():
        if k in ("versions", "simulation", "model", "skipped_methods") and isinstance(v, dict):
            v = json.dumps(v, sort_keys=True)
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>")
    parts.append(f"<h2>Settings</h2><table class='kv'>{''.join(rows)}</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: Mapping[str, Any], out_dir: str | Path, *, figures: FigureData | None = None,
                 overwrite: bool = False) -> dict[str, Path]:
    """Write ``DIR/report.json`` and a self-contained ``DIR/report.html``.

    Parameters
    ----------
    report : dict
        The result of :func:`validate` (or a report loaded back from ``report.json``, which
        gives the tables and the sweep plots but no slices).
    out_dir : path
        Created if missing.
    figures : FigureData, optional
        Default ``report.figures``.
    overwrite : bool
        Replace existing ``DIR/report.*`` files; otherwise their presence raises
        FileExistsError before anything is written.

    Returns
    -------
    dict ``{"json": path, "html": path}``
    """
    from .io import atomic_write_text

    if not isinstance(report, Mapping) or "methods" not in report or "settings" not in report:
        raise ValueError("report must be the dict returned by validate() (keys 'methods' and 'settings')")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    if not overwrite and out.is_dir():
        existing = sorted(p.name for p in out.glob("report.*"))
        if existing:
            raise FileExistsError(f"{out} already holds {', '.join(existing)}; "
                                  "pass overwrite=True to replace")
    figures = figures if figures is not None else getattr(report, "figures", None)
    text = json.dumps(_finite_or_none(dict(report)), indent=2, allow_nan=False, sort_keys=False) + "\n"
    page = _render_html(report, figures)  # render before writing anything
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "html": out / "report.html"}
    atomic_write_text(paths["json"], text, overwrite=overwrite)
    atomic_write_text(paths["html"], page, overwrite=overwrite)
    return paths
