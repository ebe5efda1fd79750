"""Phasing speed per ER/HIO/RAAR iteration: our engine against ESRF PyNX's CPU operators.

In one process, on the same simulated pattern (a crystal at oversampling 3, a fixed support
one voxel wider than it, a 2-row free band beside the Bragg peak) and the same starting
object, it times one iteration of HIO (beta 0.9), RAAR (beta 0.9) and ER for

* ``ours``: :mod:`bcdi_gapfill.phasing.engine` as it runs by default (fused numba kernels on CPU
  when numba is installed; torch operations on CUDA);
* ``ours, torch ops``: the same engine forced onto its torch-operation path (CPU only);
* ``ours, released estimate``: the band given as an estimate being released
  (``CDIState(estimated_mask=band)`` at weight 0.5) instead of free: the weighted projection,
  which runs on torch operations (CPU only; its end LLK differs, the band being constrained);
* ``PyNX CPU``: PyNX's ``pynx.cdi.cpu_operator`` ``HIO``/``RAAR``/``ER`` (skipped when PyNX is
  not installed);
* ``FFT floor``: ``torch.fft.fftn`` then ``ifftn`` of the same complex64 array, the two
  transforms an iteration cannot avoid, with the norms the engine uses (no scaling pass).

The engines are timed in turn, one iteration each per round (so that load changes on a
shared machine hit them alike), ``--rounds`` rounds after two warm-up iterations; the
tables give the median (and the minimum) per iteration. Every engine runs the same chain
(HIO, then RAAR, then ER iterations), so the LLK each reaches at the end, evaluated with
one definition (PyNX's normalised Poisson LLK, see ``tests/test_pynx_parity.py``), shows
that equal iteration counts are equal work. LLK evaluation inside the iterations is off
for every engine (``llk_every=0``; PyNX's ``calc_llk=False``).

Threads: ``torch.set_num_threads(--threads)`` (default 1) for our engine and the floor;
PyNX's CPU operators use scipy.fftpack and numpy, which run on one thread. One thread
each is the fair comparison on a CPU shared with other jobs.

    .venv/bin/python benchmarks/bench_phasing.py [--quick] [--sizes 128 256] [--threads 1]
        [--rounds 7] [--devices cpu cuda] [--no-pynx]

Writes ``benchmarks/results/phasing.json`` (``phasing_quick.json`` with ``--quick``).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ALGORITHMS = ("HIO", "RAAR", "ER")
BETA = 0.9


def _data(size: int):
    """(counts, support, free) of a simulated crystal, cached on disk (256^3 takes ~20 s)."""
    import numpy as np
    from scipy import ndimage
    from bcdi_gapfill.core.simulate import simulate_pattern

    C.CACHE.mkdir(parents=True, exist_ok=True)
    path = C.CACHE / f"phasing_{size}.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["counts"], f["support"], f["free"]
    pattern = simulate_pattern(size, 3, oversampling=3.0, detector_frame=False, peak_offset=(0, 0, 0),
                               coherence_sigma=0.0, background=0.0, phase="random", phase_amplitude=0.6,
                               peak_counts=1e5)
    modulus = np.abs(pattern.obj)
    support = ndimage.binary_dilation(modulus > 0.1 * modulus.max(), iterations=1)
    free = np.zeros(pattern.counts.shape, bool)
    free[:, size // 2 + 4:size // 2 + 6, :] = True
    np.savez(path, counts=pattern.counts, support=support, free=free)
    return pattern.counts, support, free


def _sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _Ours:
    def __init__(self, counts, support, free, device: str, torch_ops: bool, start, estimate: bool = False):
        from bcdi_gapfill.phasing import engine as P
        masks = {"estimated_mask": free} if estimate else {"free_mask": free}
        self.state = P.CDIState(counts, support=support, device=device, llk_every=0, **masks)
        if estimate:
            self.state.set_estimate_weight(0.5)  # mid-release: both terms of the projection
        if torch_ops:
            self.state._kernels = None
        self.state.set_obj(start)
        self.ops = {"HIO": P.HIO(BETA), "RAAR": P.RAAR(BETA), "ER": P.ER()}
        self.device = device

    def step(self, algo: str) -> None:
        self.ops[algo] * self.state
        _sync(self.device)

    def obj(self):
        return self.state.get_obj()


class _PyNX:
    def __init__(self, counts, support, free, start):
        import numpy as np
        from pynx.cdi import CDI
        from pynx.cdi import cpu_operator as px
        ish = np.fft.ifftshift
        self.scale = math.sqrt(counts.size)  # PyNX's object is the unitary one over sqrt(N)
        self.cdi = CDI(ish(counts).astype(np.float32), support=ish(support).astype(np.int8),
                       obj=(ish(start) / self.scale).astype(np.complex64), mask=ish(free).astype(np.int8))
        self.ops = {"HIO": px.HIO(beta=BETA), "RAAR": px.RAAR(beta=BETA), "ER": px.ER()}

    def step(self, algo: str) -> None:
        self.cdi = self.ops[algo] * self.cdi

    def obj(self):
        import numpy as np
        return np.fft.fftshift(self.cdi.get_obj()) * self.scale


class _Floor:
    def __init__(self, start, device: str):
        import numpy as np
        import torch
        self.x = torch.from_numpy(np.ascontiguousarray(np.fft.ifftshift(start))).to(device)
        self.device = device

    def step(self, algo: str) -> None:
        import torch
        g = torch.fft.fftn(self.x, norm="backward")
        torch.fft.ifftn(g, norm="forward")
        _sync(self.device)


def _measure_size(size: int, opts, pynx_label: str | None) -> list[dict]:
    import numpy as np
    from bcdi_gapfill.phasing import engine as P

    counts, support, free = _data(size)
    init = P.InitRandom(0) * P.CDIState(counts, support=support, free_mask=free, device="cpu", llk_every=0)
    start = init.get_obj()
    engines: dict[str, object] = {}
    for device in opts.devices:
        engines[f"FFT floor ({device})"] = _Floor(start, device)
        engines[f"ours ({device})"] = _Ours(counts, support, free, device, False, start)
        if device == "cpu" and P._numba_kernels() is not None:
            engines["ours, torch ops (cpu)"] = _Ours(counts, support, free, device, True, start)
        if device == "cpu":
            engines["ours, released estimate (cpu)"] = _Ours(counts, support, free, device, False, start,
                                                             estimate=True)
    if pynx_label:
        engines[pynx_label] = _PyNX(counts, support, free, start)
    kernels = "numba kernels" if P._numba_kernels() is not None else "torch ops (numba not installed)"

    rows = []
    for algo in ALGORITHMS:
        times: dict[str, list[float]] = {name: [] for name in engines}
        load0 = C.os.getloadavg()[0]
        for _ in range(2):  # warm-up: FFT plans, numba compilation, allocator
            for eng in engines.values():
                eng.step(algo)
        for _ in range(opts.rounds):
            for name, eng in engines.items():
                t0 = time.perf_counter()
                eng.step(algo)
                times[name].append(time.perf_counter() - t0)
        load1 = C.os.getloadavg()[0]
        for name, ts in times.items():
            device = name[name.rfind("(") + 1:-1] if name.endswith(")") else "cpu"
            floor_ts = times.get(f"FFT floor ({device})")
            floor = float(np.median(floor_ts)) if floor_ts else None
            pynx = float(np.median(times[pynx_label])) if pynx_label else None
            med = float(np.median(ts))
            rows.append({"size": size, "algorithm": algo, "engine": name, "ms_median": round(med * 1e3, 2),
                         "ms_min": round(min(ts) * 1e3, 2),
                         "x_floor": None if (floor is None or name.startswith("FFT")) else round(med / floor, 2),
                         "x_pynx": None if (pynx is None or name.startswith("FFT")) else round(med / pynx, 2),
                         "rounds": len(ts), "load1_before": round(load0, 2), "load1_after": round(load1, 2)})
    # Same chain for every engine from the same start: compare where they ended.
    for name, eng in engines.items():
        if name.startswith("FFT"):
            continue
        state = P.CDIState(counts, support=support, free_mask=free, obj=eng.obj(), device="cpu")
        llk = state.llk()
        for r in rows:
            if r["engine"] == name:
                r["llk_end"] = round(llk, 5)
    for r in rows:
        r["kernels"] = kernels if r["engine"].startswith("ours (cpu") else None
    return rows


def main(argv=None) -> dict:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="128^3 only, 5 rounds")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="cube sides (default 128 256)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=None, help="timed iterations per engine and algorithm (default 7)")
    ap.add_argument("--devices", nargs="+", default=None,
                    help="torch devices for our engine (default: cpu, plus cuda when available)")
    ap.add_argument("--no-pynx", action="store_true", help="leave PyNX out")
    ap.add_argument("--name", default="phasing")
    opts = ap.parse_args(argv)
    opts.sizes = opts.sizes or ([128] if opts.quick else [128, 256])
    opts.rounds = opts.rounds or (5 if opts.quick else 7)
    if opts.devices is None:
        opts.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for d in opts.devices:
        if d.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit(f"device {d!r} asked for, but torch sees no CUDA device")
    pynx_version = None
    if not opts.no_pynx:
        try:
            import pynx.cdi  # noqa: F401
            from pynx.version import __version__ as pynx_version
        except ImportError:
            print("PyNX not installed: its rows are left out (see shared/third_party/README.md)")
    pynx_label = f"PyNX {pynx_version} CPU" if pynx_version else None

    threads_before = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    try:
        rows = []
        for size in opts.sizes:
            rows += _measure_size(size, opts, pynx_label)
    finally:
        torch.set_num_threads(threads_before)

    machine = C.machine()
    if any(d.startswith("cuda") for d in opts.devices):
        machine["gpu"] = torch.cuda.get_device_name(0)
    columns = [("size", "size^3"), ("algorithm", "algorithm"), ("engine", "engine"),
               ("ms_median", "ms/iteration (median)"), ("ms_min", "min"), ("x_floor", "x FFT floor"),
               ("x_pynx", "x PyNX"), ("llk_end", "LLK at the end")]
    title = f"time per iteration ({opts.threads} thread(s), {opts.rounds} rounds)"
    tables = {title: C.table(rows, columns)}
    print(f"\n### {title}, load {machine['loadavg'][0]:.2f}\n{tables[title]}")
    from bcdi_gapfill.phasing.engine import _numba_kernels
    numba_version = None
    if _numba_kernels() is not None:
        import numba
        numba_version = numba.__version__
    payload = {"benchmark": "phasing", "quick": opts.quick, "machine": machine, "threads": opts.threads,
               "rounds": opts.rounds, "sizes": opts.sizes, "devices": opts.devices,
               "pynx_version": pynx_version, "numba_version": numba_version, "command": "benchmarks/bench_phasing.py " + " ".join(argv or sys.argv[1:]),
               "rows": rows, "tables": tables}
    print(f"wrote {C.save(opts.name + ('_quick' if opts.quick else ''), payload)}")
    return payload


if __name__ == "__main__":
    main()
