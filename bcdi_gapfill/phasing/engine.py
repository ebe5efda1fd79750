"""Embedded phase retrieval for 3D BCDI in PyTorch (CPU or CUDA), with an optional PyNX backend.

It exists to show, in real space, what a gap does to a reconstruction and what inpainting
restores (paper section 2.6 and supplement S7): the voxels of the gap are left free during
phase retrieval (``free_mask``, the "free pixels" baseline), constrained to the inpainted
intensity (given as data), or *released* (``estimated_mask``): constrained to the inpainted
intensity at the first iteration and free for the last quarter, so that the fill guides the
search for the object and the measured voxels and the oversampling decide its end
(docs/benchmarks.md, "Releasing the fill during phase retrieval").

The operators compose as in PyNX::

    state = CDIState(intensity, free_mask=gap)
    state = ER() ** 200 * HIO(0.9, support_update=ShrinkWrap(1.0, 0.2, every=20)) ** 600 \\
        * InitRandom(seed=0) * InitSupportAutocorrelation(0.1) * state

``A * B`` applies ``B`` then ``A`` (right to left), ``A ** n`` applies ``A`` n times, and
``operator * state`` runs it on the state (in place) and returns the state.
:func:`phase_retrieval` runs several random starts of such a sequence and keeps the best.

Layout and conventions
----------------------
* The user gives intensities with the Bragg peak at the array centre (as bcdi and PyNX users
  do) and gets centred objects back; internally everything is in the FFT layout (peak and
  object centre at index 0): ``internal = ifftshift(user)``, ``user = fftshift(internal)``.
  The object is then ``fftshift(ifftn(ifftshift(A)))`` for an amplitude ``A``, the
  convention of :mod:`bcdi_gapfill.core.simulate`.
* The object follows the unitary-FFT convention (``norm="ortho"``), so
  ``sum |obj|**2 = sum |FFT(obj)|**2`` is a photon count when the intensity is in photons.
  The iterations themselves run unscaled FFTs (forward ``norm="backward"``, inverse
  ``norm="forward"``) and fold the ``1/sqrt(N)`` and ``1/N`` factors into the amplitude
  projection, so no FFT spends a pass on scaling (torch scales cuFFT output in a separate
  kernel).
* The figure of merit is PyNX's normalised Poisson log-likelihood, on the constrained
  voxels ``c`` only::

      llk = 2 * sum_c [I_calc - I_obs + I_obs * log(I_obs / I')] / max(n_c - n_support, 1)

  with ``I' = I_calc + 0.1`` where ``I_calc < 0.1`` (PyNX's guard against log(0)), exactly
  ``pynx.utils.math.llk_poisson`` with ``CDI.get_llk(normalized=True)``. It is the Poisson
  deviance ``sum(I_calc - I_obs log I_calc) + const``, normalised so that a statistically
  ideal fit of high-count data gives about 1. For integer counts it is >= 0; for the
  non-integer intensities of noiseless simulations the guard can make it slightly
  negative near the solution (a voxel's term is at least -0.2), which does not affect the
  ranking of starts.

Speed
-----
An ER/HIO/RAAR iteration is two FFTs (torch: MKL on CPU, cuFFT on CUDA) plus two fused
element-wise passes: the modulus projection in Fourier space and the support update in
real space. On CPU these passes are `numba <https://numba.pydata.org>`_ kernels (the
``fast`` extra, ``pip install bcdi-gapfill[fast]``; compiled once and cached) that read and
write each array once, split over ``torch.get_num_threads()`` threads for large arrays;
without numba, and on CUDA, they are in-place torch operations (an iteration 1.3-2x
slower on CPU than with the kernels, same results within float32 rounding). ``benchmarks/bench_phasing.py``
times an iteration against the cost of its two FFTs and against PyNX's CPU operators.

PyNX backend
------------
``backend="pynx"`` runs the same operator chain through ESRF PyNX's CPU operators
(``pynx.cdi.cpu_operator``: ``ER``, ``HIO``, ``RAAR``, ``SupportUpdate``, ...). Tested with
PyNX 2022.1, CPU build (numpy 2 patch of ``shared/third_party``), against which
``tests/test_pynx_parity.py`` checks that both engines give the same iterates (1e-6 over a
few cycles), the same Poisson LLK definition and normalisation, and after a HIO then ER
chain the same LLK and object within the spread of random starts. Both backends start from
the same object for a given seed (:class:`InitRandom`). Free voxels are passed as PyNX's
masked voxels without an estimate (``iobs = -1.05e38``), which every PyNX projection
leaves free. The backend imports the CPU operators explicitly, also from a GPU build of
PyNX. GPU builds differ in one respect that matters here: their ER/HIO/RAAR also apply the
loose projection of masked voxels carrying an *estimated* intensity (``iobs`` in
``]-1e38, -1e19]``, see :mod:`bcdi_gapfill.integrations.pynx`), which the CPU operators leave free; the
masks this backend writes carry no estimate, so both kinds would constrain the same voxels.
"""
from __future__ import annotations

import ast
import functools
import math
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from bcdi_gapfill.core.errors import SupportError
from bcdi_gapfill.core.metrics import align_to_reference

__all__ = [
    "CDIState", "Operator", "ER", "HIO", "RAAR", "ShrinkWrap", "FourierApplyAmplitude",
    "InitSupportAutocorrelation", "InitRandom", "SupportError", "PhasingResult",
    "parse_algorithm", "phase_retrieval", "DEFAULT_ALGORITHM",
]

#: 600 HIO cycles with a shrink-wrap support update every 20, then 200 ER (right to left).
DEFAULT_ALGORITHM = "ER**200 * (Sup * HIO**20)**30"

# |F|**2 floor before the reciprocal square root: keeps r = amp / |F| finite where the
# calculated amplitude vanishes (r * F is then ~0 anyway).
_TINY = 1e-30
# PyNX's guard of the calculated intensity inside the log of the Poisson LLK.
_LLK_IMODEL_MIN = 0.1


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_array(a: Any, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return arr


def _check_mask(a: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    m = _check_array(a, name, shape)
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.number) or np.iscomplexobj(m):
            raise TypeError(f"{name} must be boolean (or 0/1 numbers), got dtype {m.dtype}")
        m = m != 0
    return m


# ----------------------------------------------------------------- fused CPU kernels
# Plain Python loops compiled by numba (when installed) into one pass over memory each; the
# torch path needs five to seven passes for the same work. They take 1D contiguous views.
def _project_kernel(g, amp, free_scale):  # pragma: no cover - runs compiled
    """In place: ``g *= amp / |g|`` where ``amp >= 0``, ``g *= free_scale`` where ``amp < 0``."""
    tiny = np.float32(_TINY)
    for i in range(g.size):
        a = amp[i]
        z = g[i]
        r = a / np.sqrt(max(z.real * z.real + z.imag * z.imag, tiny))
        r = r if a >= 0 else free_scale
        g[i] = np.complex64(complex(z.real * r, z.imag * r))


def _update_kernel(obj, p, support, a, b):  # pragma: no cover - runs compiled
    """In place: ``obj = p`` inside the support, ``a * obj + b * p`` outside."""
    for i in range(obj.size):
        o = obj[i]
        q = p[i]
        re = a * o.real + b * q.real
        im = a * o.imag + b * q.imag
        inside = support[i]
        re = q.real if inside else re
        im = q.imag if inside else im
        obj[i] = np.complex64(complex(re, im))


def _support_kernel(p, support):  # pragma: no cover - runs compiled
    """In place: ``p = 0`` outside the support (ER's update, which needs no previous object)."""
    zero = np.complex64(0)
    for i in range(p.size):
        p[i] = p[i] if support[i] else zero


# Below this many voxels a kernel runs in the calling thread: splitting costs more than it saves.
_MIN_SPLIT = 1 << 18


class _Kernels:
    """The compiled kernels, split over ``torch.get_num_threads()`` threads on large arrays
    (numba releases the GIL, so the chunks run in parallel)."""

    def __init__(self, project: Callable, update: Callable, support: Callable) -> None:
        self._project, self._update, self._support = project, update, support
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    def _run(self, kernel: Callable, arrays: tuple[np.ndarray, ...], scalars: tuple) -> None:
        size = arrays[0].size
        n_threads = min(torch.get_num_threads(), os.cpu_count() or 1, size // _MIN_SPLIT)
        if n_threads <= 1:
            kernel(*arrays, *scalars)
            return
        if self._pool_size < n_threads:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="bcdi-phasing")
            self._pool_size = n_threads
        bounds = np.linspace(0, size, n_threads + 1).astype(int)
        jobs = [self._pool.submit(kernel, *(arr[lo:hi] for arr in arrays), *scalars)
                for lo, hi in zip(bounds[:-1], bounds[1:])]
        for job in jobs:
            job.result()

    def project(self, g: np.ndarray, amp: np.ndarray, free_scale: np.float32) -> None:
        self._run(self._project, (g, amp), (free_scale,))

    def update(self, obj: np.ndarray, p: np.ndarray, support: np.ndarray, a: np.float32,
               b: np.float32) -> None:
        self._run(self._update, (obj, p, support), (a, b))

    def apply_support(self, p: np.ndarray, support: np.ndarray) -> None:
        self._run(self._support, (p, support), ())


@functools.lru_cache(maxsize=None)
def _numba_kernels() -> _Kernels | None:
    """The fused CPU kernels, or None when numba is not installed (torch operations then)."""
    try:
        import numba
    except ImportError:
        return None
    # No fast-math: the kernels are memory-bound (IEEE sqrt and division cost nothing
    # measurable), and exact arithmetic keeps results independent of the thread split.
    functions = (_project_kernel, _update_kernel, _support_kernel)
    try:
        compiled = [numba.njit(nogil=True, cache=True)(f) for f in functions]
    except RuntimeError:  # numba found no writable cache directory: compile in each process
        compiled = [numba.njit(nogil=True)(f) for f in functions]
    return _Kernels(*compiled)


# ------------------------------------------------------------------------------ state
class CDIState:
    """Object, support and data of one phase retrieval, as torch tensors in the FFT layout.

    Parameters
    ----------
    intensity : ndarray, float, shape (frames, rows, columns) (2D also works)
        Observed intensity in photons, Bragg peak at the array centre, non-negative.
    free_mask : ndarray of bool, same shape, optional
        Voxels not constrained by the modulus projection (detector gaps, bad pixels): their
        calculated amplitude is kept as is and they do not enter the LLK.
    estimated_mask : ndarray of bool, same shape, optional
        Voxels whose ``intensity`` is an estimate (an inpainted gap), not a measurement. They
        never enter the LLK. The modulus projection pulls them towards the estimate with a
        weight ``w``: ``|F| <- w sqrt(I_est) + (1 - w) |F|`` (1: constrained like data, 0:
        free); ``w`` is 1 unless ``release_iterations`` lowers it.
    release_iterations : int, optional
        With ``estimated_mask``: the iterative operators lower ``w`` linearly from 1 at
        iteration 0 to 0 at iteration ``release_iterations - 1`` (in steps of 1/32), so
        that the estimate steers the first iterations (support, shape) and the measured
        voxels and the oversampling decide the end, as for free pixels.
        :func:`phase_retrieval` sets it to ``release`` times the length of the algorithm.
    support : ndarray of bool, same shape, optional
        Initial support, object centred in the array. Default: the whole array (use
        :class:`InitSupportAutocorrelation`).
    obj : ndarray, complex, same shape, optional
        Initial object, centred. Default: ones (use :class:`InitRandom`).
    device : str or torch.device, optional
        Default CUDA when available, else CPU.
    llk_every : int
        The iterative operators record the LLK every ``llk_every`` iterations in
        ``llk_history`` (0: never). It costs a few element-wise passes, no extra FFT.

    Attributes
    ----------
    obj : torch.Tensor, complex64
        Current object (FFT layout).
    support : torch.Tensor, float32
        Current support, 0/1 (FFT layout).
    amplitude : torch.Tensor, float32
        ``sqrt(I_obs)`` on constrained voxels, 0 on free ones (FFT layout).
    free_mask : torch.Tensor, float32
        1 on free voxels, 0 on constrained ones (FFT layout).
    iteration : int
        Number of iterative cycles (ER, HIO, RAAR) applied so far.
    llk_history : list of (int, float)
        ``(iteration, llk)`` recorded by the iterative operators.

    Notes
    -----
    On CPU with numba installed the iterations run the fused kernels of :func:`_numba_kernels`
    (``_kernels`` holds them, ``None`` selects the torch operations). For the torch path,
    masks are float32 0/1 tensors because the modulus projection works on the real view of
    the Fourier amplitude; the real-space update coefficients derived from the support are
    cached as complex64, since torch's mixed complex-by-real element-wise kernels are about
    three times slower on CPU than complex-by-complex ones.
    """

    def __init__(self, intensity: Any, *, free_mask: Any = None, support: Any = None, obj: Any = None,
                 device: str | torch.device | None = None, llk_every: int = 20,
                 estimated_mask: Any = None, release_iterations: int | None = None) -> None:
        iobs = _check_array(intensity, "intensity")
        if iobs.ndim not in (2, 3):
            raise ValueError(f"intensity must be 2D or 3D (frames, rows, columns), got shape {iobs.shape}")
        if np.iscomplexobj(iobs) or not np.issubdtype(iobs.dtype, np.number):
            raise TypeError(f"intensity must be real, got dtype {iobs.dtype}")
        if not np.all(np.isfinite(iobs)):
            raise ValueError("intensity contains NaN or inf: set those voxels to 0, mark them in free_mask")
        if np.any(iobs < 0):
            raise ValueError("intensity must be non-negative (give masked voxels through free_mask)")
        shape = iobs.shape
        free = np.zeros(shape, bool) if free_mask is None else _check_mask(free_mask, "free_mask", shape)
        if free.all():
            raise ValueError("free_mask leaves no constrained voxel")
        estimated = (np.zeros(shape, bool) if estimated_mask is None
                     else _check_mask(estimated_mask, "estimated_mask", shape) & ~free)
        if (free | estimated).all():
            raise ValueError("free_mask and estimated_mask leave no measured voxel")
        if release_iterations is not None and (isinstance(release_iterations, bool) or not isinstance(
                release_iterations, (int, np.integer)) or release_iterations < 1):
            raise ValueError(f"release_iterations must be an integer >= 1 or None, got {release_iterations!r}")
        if release_iterations is not None and estimated_mask is None:
            raise ValueError("release_iterations needs an estimated_mask (the voxels to release)")
        if int(llk_every) < 0:
            raise ValueError(f"llk_every must be >= 0, got {llk_every}")
        self.device = _default_device(device)
        self.shape = shape
        self.llk_every = int(llk_every)
        dims = tuple(range(len(shape)))

        def to_dev(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(np.fft.ifftshift(a))).to(self.device, dtype)

        iobs = np.where(free, 0, iobs).astype(np.float32)
        # _iobs keeps the estimates (the autocorrelation support uses them); the LLK reads
        # only the measured voxels.
        self._iobs = to_dev(iobs, torch.float32)
        self.amplitude = torch.sqrt(self._iobs)
        self.free_mask = to_dev(free, torch.float32)
        self.estimated_mask = to_dev(estimated, torch.float32) if estimated.any() else None
        # The random start's power counts the estimates: they stand for the missing photons.
        self._photons = float(iobs.astype(np.float64).sum())
        self._constrained = 1 - self.free_mask
        if self.estimated_mask is not None:
            self._constrained = self._constrained - self.estimated_mask
            iobs = np.where(estimated, 0, iobs)
        self._iobs_llk = to_dev(iobs, torch.float32) if self.estimated_mask is not None else self._iobs
        # The iterations use unscaled FFTs: G = sqrt(N) * FFT_ortho(obj), and the inverse
        # without 1/N. The projection G * r then needs r = amp / (sqrt(N) |G|) on constrained
        # voxels and r = 1/N on free ones to return the unitary-convention object.
        n_vox = int(np.prod(shape))
        self._inv_n = 1.0 / n_vox
        self._amp_scaled = self.amplitude * (1.0 / math.sqrt(n_vox))
        self._free_scaled = self.free_mask * self._inv_n
        self._kernels = _numba_kernels() if self.device.type == "cpu" else None
        # For the numba kernel: the scaled amplitude, -1 flagging a free voxel. The kernel knows
        # measured and free voxels only; with released estimates (a weight per voxel) the torch
        # operations project, whose r = amp_scaled / |G| + free_scaled covers all three.
        self._amp_signed = (torch.where(self.free_mask > 0, -1.0, self._amp_scaled).contiguous()
                            if self._kernels is not None and self.estimated_mask is None else None)
        self._dims = dims
        self.n_constrained = int((~free & ~estimated).sum())
        # An estimated_mask wholly inside free_mask leaves nothing to release.
        self.release_iterations = (None if release_iterations is None or self.estimated_mask is None
                                   else int(release_iterations))
        self.estimate_weight = 1.0
        # Constant part of the Poisson deviance, sum_c (-I + I log I), with 0 log 0 = 0.
        i64 = iobs.astype(np.float64)
        self._llk_const = float(np.sum(-i64 + np.where(i64 > 0, i64 * np.log(np.where(i64 > 0, i64, 1)), 0)))
        self._coef_cache: dict[tuple, tuple[torch.Tensor | None, torch.Tensor]] = {}
        self._kernel_cache: dict[float, torch.Tensor] = {}
        self._rbuf: torch.Tensor | None = None
        self.iteration = 0
        self.llk_history: list[tuple[int, float]] = []
        self.set_support(np.ones(shape, bool) if support is None else support)
        if obj is None:
            self.obj = torch.ones(shape, dtype=torch.complex64, device=self.device)
        else:
            self.set_obj(obj)

    # -- accessors (centred numpy arrays at the public edge, like PyNX's shift=True)
    def set_obj(self, obj: Any, *, centred: bool = True) -> None:
        """Set the object from a complex array (centred unless ``centred=False``)."""
        o = _check_array(obj, "obj", self.shape)
        if not np.issubdtype(o.dtype, np.number):
            raise TypeError(f"obj must be numeric, got dtype {o.dtype}")
        o = np.fft.ifftshift(o) if centred else o
        self.obj = torch.from_numpy(np.ascontiguousarray(o.astype(np.complex64))).to(self.device)

    def get_obj(self, *, centred: bool = True) -> np.ndarray:
        """Current object as a complex64 numpy array, centred unless ``centred=False``."""
        o = self.obj.detach().cpu().numpy()
        return np.fft.fftshift(o) if centred else o

    def set_support(self, support: Any, *, centred: bool = True) -> None:
        """Set the support from a boolean array (centred unless ``centred=False``)."""
        s = _check_mask(support, "support", self.shape)
        if not s.any():
            raise ValueError("support is empty")
        s = np.fft.ifftshift(s) if centred else s
        self._set_support_tensor(torch.from_numpy(np.ascontiguousarray(s)).to(self.device, torch.float32))

    def get_support(self, *, centred: bool = True) -> np.ndarray:
        """Current support as a boolean numpy array, centred unless ``centred=False``."""
        s = self.support.detach().cpu().numpy() > 0.5
        return np.fft.fftshift(s) if centred else s

    def set_estimate_weight(self, weight: float) -> None:
        """Weight of the estimated voxels in the modulus projection, in [0, 1] (see the
        class parameters); the measured and free voxels are unchanged."""
        if self.estimated_mask is None:
            raise ValueError("this state has no estimated voxels (give estimated_mask)")
        weight = float(weight)
        if not 0 <= weight <= 1:
            raise ValueError(f"the estimate weight must be in [0, 1], got {weight}")
        if weight == self.estimate_weight:
            return
        est = self.estimated_mask > 0
        n_vox = 1.0 / self._inv_n
        self._amp_scaled = torch.where(est, self.amplitude * (weight / math.sqrt(n_vox)),
                                       self._amp_scaled)
        self._free_scaled = torch.where(est, (1.0 - weight) * self._inv_n, self._free_scaled)
        self.estimate_weight = weight

    def _release_step(self) -> None:
        """Lower the estimate weight along the release schedule (in steps of 1/32)."""
        done = self.iteration / max(self.release_iterations - 1, 1)
        self.set_estimate_weight(math.ceil(32 * max(0.0, 1.0 - done)) / 32)

    def _set_support_tensor(self, s: torch.Tensor) -> None:
        self.support = s
        self.n_support = int(s.sum().item())
        self._support_bool = (s > 0.5).contiguous()
        self._coef_cache.clear()

    def copy(self) -> "CDIState":
        """A new state sharing the (read-only) data tensors, with its own object and support."""
        new = object.__new__(CDIState)
        new.__dict__.update(self.__dict__)
        new.obj = self.obj.clone()
        new._coef_cache = {}
        new._set_support_tensor(self.support.clone())
        new._rbuf = None
        new.llk_history = list(self.llk_history)
        return new

    # -- numerics
    def _coefficients(self, kind: str, beta: float) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Real-space update ``obj = c_prev * obj_prev + c_p * P_M(obj_prev)``, per support.

        ER: c_p = S.  HIO: c_prev = 1 - S, c_p = S (1 + beta) - beta.
        RAAR (PyNX's form): c_prev = beta (1 - S), c_p = S + (1 - S)(1 - 2 beta).
        """
        key = (kind, float(beta))
        if key not in self._coef_cache:
            s = self.support
            if kind == "ER":
                c_prev, c_p = None, s
            elif kind == "HIO":
                c_prev, c_p = 1 - s, s * (1 + beta) - beta
            else:
                c_prev, c_p = beta * (1 - s), s + (1 - s) * (1 - 2 * beta)
            as_c = (lambda t: None if t is None else t.to(torch.complex64))
            self._coef_cache[key] = (as_c(c_prev), as_c(c_p))
        return self._coef_cache[key]

    def _llk_from_icalc(self, icalc: torch.Tensor) -> float:
        floored = icalc + _LLK_IMODEL_MIN * (icalc < _LLK_IMODEL_MIN)
        s = (torch.sum(icalc * self._constrained, dtype=torch.float64)
             - torch.sum(torch.xlogy(self._iobs_llk, floored), dtype=torch.float64))
        return 2 * (float(s) + self._llk_const) / max(self.n_constrained - self.n_support, 1)

    def _llk_from_unscaled(self, g: torch.Tensor) -> float:
        """LLK from ``g = sqrt(N) * FFT_ortho(obj)`` (the unscaled forward FFT)."""
        gr = torch.view_as_real(g)
        icalc = torch.mul(gr[..., 0], gr[..., 0])
        icalc.addcmul_(gr[..., 1], gr[..., 1]).mul_(self._inv_n)
        return self._llk_from_icalc(icalc)

    def _project_modulus(self, want_llk: bool) -> tuple[torch.Tensor, float | None]:
        """``IFFT(P_M(FFT(obj)))``; returns it (a new tensor, obj untouched) and the LLK of
        obj if asked.

        P_M scales F by r = amp / |F| on constrained voxels and by 1 on free ones. With the
        unscaled FFTs, r also carries the 1/N of the inverse (see ``__init__``). torch's
        ``out=`` FFTs compute into a temporary and copy, so the FFTs allocate their result;
        the projection runs in place on it.
        """
        g = torch.fft.fftn(self.obj, dim=self._dims, norm="backward")
        llk = self._llk_from_unscaled(g) if want_llk else None
        if self._kernels is not None and self.estimated_mask is None:
            self._kernels.project(g.view(-1).numpy(), self._amp_signed.view(-1).numpy(),
                                  np.float32(self._inv_n))
        else:
            gr = torch.view_as_real(g)
            re, im = gr[..., 0], gr[..., 1]
            if self._rbuf is None:
                # Reused every iteration: a fresh large tensor costs page faults on each touch.
                self._rbuf = torch.empty(self.shape, dtype=torch.float32, device=self.device)
            r = torch.mul(re, re, out=self._rbuf)
            r.addcmul_(im, im).clamp_(min=_TINY).rsqrt_()
            torch.addcmul(self._free_scaled, r, self._amp_scaled, out=r)
            re.mul_(r)
            im.mul_(r)
        return torch.fft.ifftn(g, dim=self._dims, norm="forward"), llk

    def llk(self) -> float:
        """Normalised Poisson LLK of the current object on the constrained voxels (one FFT)."""
        return self._llk_from_unscaled(torch.fft.fftn(self.obj, dim=self._dims, norm="backward"))

    def _smoothed_modulus(self, sigma: float) -> torch.Tensor:
        """|obj| convolved with a Gaussian of ``sigma`` voxels (periodic, via rFFT).

        The FFT layout wraps the object around index 0, so the periodic convolution is
        exactly the right one here.
        """
        mod = self.obj.abs()
        if sigma <= 0:
            return mod
        key = float(sigma)
        if key not in self._kernel_cache:
            freqs = [torch.fft.fftfreq(n, device=self.device) for n in self.shape[:-1]]
            freqs.append(torch.fft.rfftfreq(self.shape[-1], device=self.device))
            grids = torch.meshgrid(*freqs, indexing="ij")
            self._kernel_cache[key] = torch.exp(-2 * math.pi ** 2 * sigma ** 2 * sum(g * g for g in grids))
        spec = torch.fft.rfftn(mod, dim=self._dims)
        spec.mul_(self._kernel_cache[key])
        return torch.fft.irfftn(spec, s=self.shape, dim=self._dims)

    def __repr__(self) -> str:
        n_free = int(self.free_mask.sum().item())
        est = "" if self.estimated_mask is None else (
            f", estimated={int(self.estimated_mask.sum().item())} voxels (weight {self.estimate_weight:g})")
        return (f"CDIState(shape={self.shape}, device={self.device}, iteration={self.iteration}, "
                f"support={self.n_support} voxels, free={n_free} voxels{est})")


# -------------------------------------------------------------------------- operators
class Operator:
    """Base class: ``A * B`` chains (B first), ``A ** n`` repeats, ``A * state`` applies.

    Subclasses implement :meth:`apply`, which modifies the state in place and returns it,
    and may implement ``_pynx_apply(cdi, px)`` to run on PyNX's CDI object.
    """

    def apply(self, state: CDIState) -> CDIState:
        raise NotImplementedError

    def iterations(self) -> int:
        """Number of iterative cycles (ER/HIO/RAAR) this operator performs."""
        return 0

    def __mul__(self, other: Any) -> Any:
        if isinstance(other, CDIState):
            return self.apply(other)
        if isinstance(other, Operator):
            return _Chain(other, self)
        return NotImplemented

    def __pow__(self, n: int) -> "Operator":
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"an operator can only be raised to a non-negative integer power, got {n!r}")
        return _Repeat(self, int(n))


class _Chain(Operator):
    """Operators in execution order (the algebra's right-most first)."""

    def __init__(self, *ops: Operator) -> None:
        flat: list[Operator] = []
        for op in ops:
            flat.extend(op.ops if isinstance(op, _Chain) else [op])
        self.ops = tuple(flat)

    def apply(self, state: CDIState) -> CDIState:
        for op in self.ops:
            state = op.apply(state)
        return state

    def iterations(self) -> int:
        return sum(op.iterations() for op in self.ops)

    def __repr__(self) -> str:
        return " * ".join(repr(op) for op in reversed(self.ops))


class _Repeat(Operator):
    def __init__(self, op: Operator, n: int) -> None:
        self.op, self.n = op, n

    def apply(self, state: CDIState) -> CDIState:
        for _ in range(self.n):
            state = self.op.apply(state)
        return state

    def iterations(self) -> int:
        return self.n * self.op.iterations()

    def __repr__(self) -> str:
        inner = repr(self.op)
        return f"({inner})**{self.n}" if isinstance(self.op, _Chain) else f"{inner}**{self.n}"


def _pynx_apply(op: Operator, cdi: Any, px: Any) -> Any:
    method = getattr(op, "_pynx_apply", None)
    if method is None:
        raise TypeError(f"operator {op!r} has no PyNX equivalent; use backend='torch'")
    return method(cdi, px)


class ShrinkWrap(Operator):
    """Support update from the smoothed modulus (shrink-wrap, Marchesini et al. 2003).

    ``support = gaussian(|obj|, sigma) > threshold * reference``, the reference being the
    maximum of the smoothed modulus (``method="max"``) or its root mean square inside the
    current support (``"rms"``, PyNX's default). Applied alone it updates once; passed as
    ``support_update=`` to ER/HIO/RAAR it runs after every iteration whose global count
    (``state.iteration``) is a multiple of ``every``. In PyNX it is ``SupportUpdate``.

    Parameters
    ----------
    sigma : float
        Gaussian width in voxels.
    threshold : float in (0, 1)
        Relative threshold.
    every : int
        Period in iterations when used as ``support_update``.
    method : {"max", "rms"}
    """

    def __init__(self, sigma: float = 1.0, threshold: float = 0.2, every: int = 20,
                 method: str = "max") -> None:
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be >= 0 voxels, got {sigma}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if method not in ("max", "rms"):
            raise ValueError(f"method must be 'max' or 'rms', got {method!r}")
        self.sigma, self.threshold = float(sigma), float(threshold)
        self.every, self.method = int(every), method

    def apply(self, state: CDIState) -> CDIState:
        smooth = state._smoothed_modulus(self.sigma)
        if self.method == "max":
            ref = smooth.max()
        else:
            ref = torch.sqrt(torch.sum(smooth * smooth * state.support) / max(state.n_support, 1))
        new = (smooth > self.threshold * ref).to(torch.float32)
        if not bool(new.any()):
            raise SupportError(f"shrink-wrap emptied the support at iteration {state.iteration}")
        state._set_support_tensor(new)
        return state

    def _pynx_apply(self, cdi: Any, px: Any) -> Any:
        return px.SupportUpdate(threshold_relative=self.threshold, smooth_width=self.sigma,
                                method=self.method) * cdi

    def __repr__(self) -> str:
        return (f"ShrinkWrap(sigma={self.sigma}, threshold={self.threshold}, every={self.every}, "
                f"method={self.method!r})")


class _Iterative(Operator):
    kind = ""

    def __init__(self, beta: float = 0.9, support_update: ShrinkWrap | None = None) -> None:
        if not (0 < beta <= 1):
            raise ValueError(f"beta must be in (0, 1], got {beta}")
        if support_update is not None and not isinstance(support_update, ShrinkWrap):
            raise TypeError("support_update must be a ShrinkWrap or None, "
                            f"got {type(support_update).__name__}")
        self.beta = float(beta)
        self.support_update = support_update

    def iterations(self) -> int:
        return 1

    def _outside(self) -> tuple[float, float]:
        """``(a, b)``: outside the support the new object is ``a * obj_prev + b * P_M(obj_prev)``
        (HIO and RAAR; ER sets it to 0)."""
        if self.kind == "HIO":
            return 1.0, -self.beta
        return self.beta, 1.0 - 2.0 * self.beta

    def apply(self, state: CDIState) -> CDIState:
        if state.release_iterations is not None:
            state._release_step()
        want_llk = state.llk_every > 0 and state.iteration % state.llk_every == 0
        p, llk = state._project_modulus(want_llk)
        if state._kernels is not None:
            support = state._support_bool.view(-1).numpy()
            if self.kind == "ER":
                state._kernels.apply_support(p.view(-1).numpy(), support)
                state.obj = p
            else:
                a, b = self._outside()
                if not state.obj.is_contiguous() or state.obj.dtype != torch.complex64:
                    state.obj = state.obj.to(torch.complex64).contiguous()
                state._kernels.update(state.obj.view(-1).numpy(), p.view(-1).numpy(), support,
                                      np.float32(a), np.float32(b))
        else:
            c_prev, c_p = state._coefficients(self.kind, self.beta)
            if c_prev is None:
                state.obj = p.mul_(c_p)
            else:
                state.obj.mul_(c_prev).addcmul_(p, c_p)
        if llk is not None:
            state.llk_history.append((state.iteration, llk))
        state.iteration += 1
        su = self.support_update
        if su is not None and state.iteration % su.every == 0:
            su.apply(state)
        return state

    def _pynx_apply(self, cdi: Any, px: Any) -> Any:
        # PyNX's ER, HIO and RAAR with the same beta (ER has none).
        pynx_op = px.ER() if self.kind == "ER" else getattr(px, self.kind)(beta=self.beta)
        cdi = pynx_op * cdi
        su = self.support_update
        if su is not None and cdi.cycle % su.every == 0:
            cdi = su._pynx_apply(cdi, px)
        return cdi

    def __repr__(self) -> str:
        args = [] if self.kind == "ER" else [f"beta={self.beta}"]
        if self.support_update is not None:
            args.append(f"support_update={self.support_update!r}")
        return f"{self.kind}({', '.join(args)})"


class ER(_Iterative):
    """Error reduction: modulus projection, then zero outside the support."""

    kind = "ER"

    def __init__(self, support_update: ShrinkWrap | None = None) -> None:
        super().__init__(0.9, support_update)


class HIO(_Iterative):
    """Hybrid input-output (Fienup): outside the support ``obj_prev - beta * P_M(obj_prev)``."""

    kind = "HIO"


class RAAR(_Iterative):
    """Relaxed averaged alternating reflections (Luke), in PyNX's form:
    outside the support ``beta * obj_prev + (1 - 2 beta) * P_M(obj_prev)``."""

    kind = "RAAR"


class FourierApplyAmplitude(Operator):
    """The modulus projection alone: ``obj = IFFT(P_M(FFT(obj)))`` (no support constraint).

    On constrained voxels the amplitude becomes ``sqrt(I_obs)`` with the calculated phase;
    free voxels keep the calculated complex amplitude.
    """

    def apply(self, state: CDIState) -> CDIState:
        state.obj, _ = state._project_modulus(False)
        return state

    def _pynx_apply(self, cdi: Any, px: Any) -> Any:
        return px.FourierApplyAmplitude() * cdi

    def __repr__(self) -> str:
        return "FourierApplyAmplitude()"


class InitSupportAutocorrelation(Operator):
    """Initial support from the autocorrelation ``|IFFT(I_obs)|`` above ``threshold * max``.

    Free voxels count as zero intensity. The autocorrelation spans twice the object, a
    safely loose start for shrink-wrap. The object is multiplied by the new support.
    """

    def __init__(self, threshold: float = 0.1) -> None:
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = float(threshold)

    def apply(self, state: CDIState) -> CDIState:
        auto = torch.fft.ifftn(state._iobs.to(torch.complex64), dim=state._dims).abs()
        support = (auto > self.threshold * auto.max()).to(torch.float32)
        state._set_support_tensor(support)
        state.obj.mul_(support.to(torch.complex64))
        return state

    def _pynx_apply(self, cdi: Any, px: Any) -> Any:
        return px.AutoCorrelationSupport(threshold=self.threshold) * cdi

    def __repr__(self) -> str:
        return f"InitSupportAutocorrelation(threshold={self.threshold})"


class InitRandom(Operator):
    """Random object inside the support: ``S * U(amin, amax) * exp(i U(0, phase_range))``,
    scaled so that ``sum |obj|**2`` equals the observed photon count.

    The random numbers are drawn on the CPU from ``seed``, so a seed gives the same start
    on every device.
    """

    def __init__(self, seed: int | None = None, amin: float = 0.0, amax: float = 1.0,
                 phase_range: float = 2 * math.pi) -> None:
        if not 0 <= amin <= amax or amax <= 0:
            raise ValueError(f"need 0 <= amin <= amax and amax > 0, got amin={amin}, amax={amax}")
        self.seed, self.amin, self.amax, self.phase_range = seed, float(amin), float(amax), float(phase_range)

    def _draw(self, shape: tuple[int, ...]) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        a = rng.uniform(self.amin, self.amax, shape)
        phi = rng.uniform(0, self.phase_range, shape)
        return (a * np.exp(1j * phi)).astype(np.complex64)

    def apply(self, state: CDIState) -> CDIState:
        rnd = torch.from_numpy(self._draw(state.shape)).to(state.device)
        obj = rnd.mul_(state.support.to(torch.complex64))
        power = float(torch.sum(obj.abs() ** 2, dtype=torch.float64))
        if power > 0:
            obj.mul_(math.sqrt(state._photons / power))
        state.obj = obj
        return state

    def _pynx_apply(self, cdi: Any, px: Any) -> Any:
        # PyNX's InitObjRandom draws from numpy's global generator, and its ScaleObj fits the
        # Fourier amplitudes: use our own draw and scale instead, so that both backends start
        # from the same object for a given seed. The observed photons are the iobs >= 0
        # (masked voxels are negative); PyNX's object is the unitary one over sqrt(N).
        support = cdi.get_support().astype(np.float32)
        obj = self._draw(support.shape) * support
        power = float(np.sum(np.abs(obj.astype(np.complex128)) ** 2))
        iobs = cdi.get_iobs()
        photons = float(iobs[iobs >= 0].sum(dtype=np.float64))
        if power > 0:
            obj = obj * np.float32(math.sqrt(photons / power / obj.size))
        cdi.set_obj(obj.astype(np.complex64))
        return cdi

    def __repr__(self) -> str:
        return f"InitRandom(seed={self.seed})"


# ------------------------------------------------------------------ algorithm strings
_NAMES: dict[str, Callable[..., Operator]] = {
    "ER": ER, "HIO": HIO, "RAAR": RAAR, "Sup": ShrinkWrap, "ShrinkWrap": ShrinkWrap,
    "FourierApplyAmplitude": FourierApplyAmplitude,
}


def parse_algorithm(text: str) -> Operator:
    """Build an operator from a PyNX-style string, applied right to left.

    Grammar: names ``ER``, ``HIO``, ``RAAR``, ``Sup`` (= :class:`ShrinkWrap`, applied once)
    with optional keyword arguments (``HIO(beta=0.7)``, ``Sup(sigma=1, threshold=0.2)``),
    ``*`` to chain, ``**n`` to repeat, parentheses. Example: ``"ER**200 * (Sup * HIO**20)**30"``
    runs 30 times [20 HIO then one support update], then 200 ER.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("algorithm must be a non-empty string or an Operator")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"cannot parse algorithm {text!r}: {exc.msg}") from None

    def build(node: ast.AST) -> Operator:
        if isinstance(node, ast.Name) and node.id in _NAMES:
            return _NAMES[node.id]()
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _NAMES:
            if node.args:
                raise ValueError(f"use keyword arguments in {text!r}, e.g. HIO(beta=0.9)")
            kwargs = {}
            for kw in node.keywords:
                if kw.arg is None or not isinstance(kw.value, ast.Constant):
                    raise ValueError(f"only constant keyword arguments are allowed in {text!r}")
                kwargs[kw.arg] = kw.value.value
            try:
                return _NAMES[node.func.id](**kwargs)
            except TypeError as exc:
                raise ValueError(f"bad arguments in {text!r}: {exc}") from None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            return build(node.left) * build(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            if not (isinstance(node.right, ast.Constant) and isinstance(node.right.value, int)):
                raise ValueError(f"the exponent must be an integer constant in {text!r}")
            return build(node.left) ** node.right.value
        raise ValueError(f"unsupported element {ast.unparse(node)!r} in algorithm {text!r}; "
                         f"known names: {', '.join(_NAMES)}")

    return build(tree)


# ----------------------------------------------------------------------- the runner
@dataclass
class PhasingResult:
    """Outcome of :func:`phase_retrieval`.

    Attributes
    ----------
    obj : ndarray, complex64, shape (frames, rows, columns)
        Best (or averaged) object, centred, scaled so ``|FFT(obj)|**2`` (unitary FFT) is in
        the photons of the input.
    support : ndarray of bool, same shape
        Final support of the best start, centred.
    llk : float
        Normalised Poisson LLK of ``obj`` on the constrained voxels.
    llk_history : ndarray, shape (K, 2)
        ``(iteration, llk)`` of the best start, every ``llk_every`` iterations.
    llk_starts : ndarray, shape (n_starts,)
        Final LLK of every start (inf for a start whose support collapsed).
    best : int
        Index of the best start.
    backend : str
    averaged : list of int
        Starts averaged into ``obj``, best first (``[best]`` when ``n_average == 1``).
    """

    obj: np.ndarray
    support: np.ndarray
    llk: float
    llk_history: np.ndarray
    llk_starts: np.ndarray
    best: int
    backend: str
    averaged: list[int] = field(default_factory=list)


def _as_operator(algorithm: str | Operator) -> Operator:
    if isinstance(algorithm, Operator):
        return algorithm
    if isinstance(algorithm, str):
        return parse_algorithm(algorithm)
    raise TypeError(f"algorithm must be a string or an Operator, got {type(algorithm).__name__}")


def estimate_phasing_seconds(shape: Sequence[int], algorithm: str | Operator = DEFAULT_ALGORITHM, *,
                             n_starts: int = 4, n_runs: int = 1, device: str | torch.device | None = None) -> float:
    """Seconds that ``n_runs`` calls of :func:`phase_retrieval` with ``n_starts`` starts should
    take on this machine.

    Times five ER iterations on a random array of ``shape`` (after one warm-up iteration:
    FFT plans, kernel compilation) and scales by the iterations of ``algorithm``. An
    estimate: a released estimate and the shrink-wrap steps cost a little more than a plain
    iteration, and other jobs on the CPU change both (docs/benchmarks.md compares it with
    real runs).
    """
    op = _as_operator(algorithm)
    state = CDIState(np.random.default_rng(0).random(tuple(shape), dtype=np.float32), device=device)
    ER() * InitSupportAutocorrelation() * state
    t0 = time.perf_counter()
    ER() ** 5 * state
    per_iteration = (time.perf_counter() - t0) / 5
    return per_iteration * max(op.iterations(), 1) * int(n_starts) * int(n_runs)


def phase_retrieval(intensity: np.ndarray, *, free_mask: np.ndarray | None = None,
                    estimated_mask: np.ndarray | None = None, release: float = 0.75,
                    support: np.ndarray | None = None, algorithm: str | Operator = DEFAULT_ALGORITHM,
                    n_starts: int = 4, seed: int = 0, n_average: int = 1,
                    device: str | torch.device | None = None, backend: str = "torch",
                    support_threshold: float = 0.1, llk_every: int = 20) -> PhasingResult:
    """Phase a BCDI intensity from several random starts and keep the best by Poisson LLK.

    Each start is ``algorithm * InitRandom(seed + k) * InitSupportAutocorrelation()`` (the
    autocorrelation step only when no ``support`` is given).

    Parameters
    ----------
    intensity : ndarray, float, shape (frames, rows, columns)
        Observed intensity in photons, Bragg peak at the centre, non-negative.
    free_mask : ndarray of bool, same shape, optional
        Voxels left free by the modulus projection (e.g. a detector gap) and excluded from
        the LLK.
    estimated_mask : ndarray of bool, same shape, optional
        Voxels whose intensity is an estimate (e.g. the inpainted gap), *released* over each
        start: constrained to the estimate at the first iteration, free after a share
        ``release`` of the iterations, with a weight falling linearly in between (see
        :class:`CDIState`); never in the LLK, so the
        starts are ranked on the measured voxels only. Torch backend only. None: the given
        intensity is used as data everywhere (outside ``free_mask``).
    release : float
        Share of the algorithm's iterations over which the weight of ``estimated_mask``
        falls from 1 to 0, in (0, 1]; the rest run with the gap free. The default 0.75
        releases it over the 600 HIO of :data:`DEFAULT_ALGORITHM` and leaves the gap free
        for its 200 ER (docs/benchmarks.md, "Releasing the fill during phase retrieval",
        compares 0.25, 0.5, 0.75 and 1).
    support : ndarray of bool, same shape, optional
        Initial support (centred); default from the autocorrelation.
    algorithm : str or Operator
        Operators applied right to left (see :func:`parse_algorithm`), default
        ``"ER**200 * (Sup * HIO**20)**30"``.
    n_starts : int
        Random starts.
    seed : int
        Start k uses ``InitRandom(seed + k)``.
    n_average : int
        Average the ``n_average`` best starts after aligning them to the best (twin, shift,
        phase offset and ramp, :func:`bcdi_gapfill.core.metrics.align_to_reference`).
    device : str or torch.device, optional
        Torch device (default CUDA when available); ignored by the PyNX backend (CPU).
    backend : {"torch", "pynx"}
        ``"pynx"`` runs the same operators through ESRF PyNX's CPU operators (tested with
        PyNX 2022.1, CPU build; see the module docstring for GPU builds).
    support_threshold : float
        Threshold of the autocorrelation support.
    llk_every : int
        Period of the recorded LLK history.

    Returns
    -------
    PhasingResult
    """
    if backend not in ("torch", "pynx"):
        raise ValueError(f"backend must be 'torch' or 'pynx', got {backend!r}")
    for name, val, lo in (("n_starts", n_starts, 1), ("n_average", n_average, 1)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")
    if n_average > n_starts:
        raise ValueError(f"n_average ({n_average}) cannot exceed n_starts ({n_starts})")
    algo = _as_operator(algorithm)
    if algo.iterations() == 0:
        raise ValueError(f"algorithm {algo!r} performs no ER/HIO/RAAR iteration")
    # Building the state validates intensity, free_mask and support once for both backends;
    # it also evaluates the LLK of the PyNX objects, so that all starts share one definition.
    if isinstance(release, bool) or not isinstance(release, (int, float, np.integer, np.floating)) \
            or not 0 < release <= 1:
        raise ValueError(f"release must be a number in (0, 1], got {release!r}")
    if estimated_mask is not None and backend == "pynx":
        raise ValueError("estimated_mask (releasing an inpainted gap) needs backend='torch': PyNX's CPU "
                         "operators have no weighted projection; give the filled intensity without "
                         "estimated_mask, or the gap as free_mask")
    eval_device = "cpu" if backend == "pynx" else device
    base = CDIState(intensity, free_mask=free_mask, support=support, device=eval_device, llk_every=llk_every,
                    estimated_mask=estimated_mask,
                    release_iterations=None if estimated_mask is None
                    else max(1, round(release * algo.iterations())))
    init_support = None if support is not None else InitSupportAutocorrelation(support_threshold)

    runs: list[tuple[float, np.ndarray, np.ndarray, list]] = []
    for k in range(int(n_starts)):
        init: Operator = InitRandom(seed + k)
        if init_support is not None:
            init = init * init_support
        try:
            if backend == "torch":
                st = algo * init * base.copy()
                obj, sup, hist = st.get_obj(), st.get_support(), st.llk_history
                llk = st.llk()
            else:
                obj, sup, hist = _run_pynx(base, algo * init, llk_every)
                llk = _llk_of(base, obj, sup)
        except SupportError as exc:
            warnings.warn(f"start {k} discarded: {exc}", RuntimeWarning, stacklevel=2)
            runs.append((math.inf, None, None, []))
            continue
        runs.append((llk if math.isfinite(llk) else math.inf, obj, sup, hist))

    llks = np.array([r[0] for r in runs])
    order = [int(i) for i in np.argsort(llks, kind="stable") if np.isfinite(llks[i])]
    if not order:
        raise SupportError("every start lost its support; try a lower shrink-wrap threshold or more "
                           "iterations before the first support update")
    best = order[0]
    obj, sup, hist = runs[best][1], runs[best][2], runs[best][3]
    llk = runs[best][0]
    chosen = order[:n_average]
    if len(chosen) > 1:

        ref = obj
        acc = ref.astype(np.complex128)
        for i in chosen[1:]:
            acc += align_to_reference(runs[i][1], ref, sup)
        obj = (acc / len(chosen)).astype(np.complex64)
        llk = _llk_of(base, obj, sup)
    history = np.array(hist, dtype=float).reshape(-1, 2)
    return PhasingResult(obj=obj, support=sup, llk=float(llk), llk_history=history, llk_starts=llks,
                         best=best, backend=backend, averaged=chosen)


def _llk_of(base: CDIState, obj: np.ndarray, support: np.ndarray) -> float:
    """LLK of a centred object; the support only enters the normalisation."""
    st = base.copy()
    st.set_obj(obj)
    st.set_support(support)
    return st.llk()


# ------------------------------------------------------------------------ PyNX backend
def _import_pynx() -> Any:
    try:
        from pynx.cdi import CDI  # noqa: F401
        from pynx.cdi import cpu_operator as px  # noqa: F401  (CPU operators and CDI)
    except ImportError as exc:
        raise ImportError(
            "backend='pynx' needs ESRF's PyNX (import pynx.cdi), which is not on PyPI (the PyPI "
            "'pynx' is an unrelated tool): install the wheel, e.g. "
            "`pip install ../shared/third_party/pynx-2022.1-py3-none-any.whl`, or use backend='torch'"
        ) from exc
    return px


def _run_pynx(base: CDIState, op: Operator, llk_every: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Run ``op`` on a PyNX CDI object built from ``base``'s data (CPU operators).

    PyNX's CPU projection uses an unnormalised forward FFT and a 1/N inverse one, so its
    object is ``obj_ortho / sqrt(N)``; it is rescaled on the way out. Free voxels are PyNX's
    masked voxels (``iobs = -1.05e38``), which its amplitude projections (CPU and GPU) leave
    free. Tested with PyNX 2022.1, CPU build.
    """
    px = _import_pynx()
    from pynx.cdi import CDI

    iobs = base._iobs.cpu().numpy()
    mask = (base.free_mask.cpu().numpy() > 0.5).astype(np.int8)
    support = (base.support.cpu().numpy() > 0.5).astype(np.int8)
    cdi = CDI(iobs.copy(), support=support, obj=support.astype(np.complex64), mask=mask)
    history: list[tuple[int, float]] = []
    evaluator = base.copy()
    scale = math.sqrt(iobs.size)

    def record(c: Any) -> None:
        if llk_every and c.cycle % llk_every == 0:
            evaluator.set_obj(c.get_obj() * scale, centred=False)
            evaluator._set_support_tensor(torch.from_numpy(c.get_support() > 0).to(torch.float32))
            history.append((int(c.cycle), evaluator.llk()))

    from pynx.cdi.cdi import SupportTooSmall

    try:
        for leaf in _pynx_plan(op):
            if isinstance(leaf, _Iterative):
                record(cdi)
            cdi = _pynx_apply(leaf, cdi, px)
    except SupportTooSmall as exc:
        raise SupportError(f"PyNX support update: {exc}") from None
    obj = np.fft.fftshift(cdi.get_obj() * scale).astype(np.complex64)
    sup = np.fft.fftshift(cdi.get_support() > 0)
    if not sup.any():
        raise SupportError("PyNX support update emptied the support")
    return obj, sup, history


def _pynx_plan(op: Operator) -> Iterator[Operator]:
    """Leaf operators in execution order (repeats unrolled), for the PyNX walker."""
    if isinstance(op, _Chain):
        for o in op.ops:
            yield from _pynx_plan(o)
    elif isinstance(op, _Repeat):
        for _ in range(op.n):
            yield from _pynx_plan(op.op)
    else:
        yield op
