"""Shared helpers of the benchmark scripts: machine description, model choice, isolated runs,
tables and JSON results.

Each measured configuration runs in a fresh Python process (``run_child``); its peak resident
memory during the measured call is the kernel's VmHWM, reset just before the call through
``/proc/self/clear_refs``. numpy's own peak is measured with ``tracemalloc`` (torch's
allocations are not traced; they show in the resident memory). The machine's load average is recorded before and after every timing:
timings on a shared CPU are only comparable at similar load.
"""
from __future__ import annotations

import json
import os
import tempfile
import platform
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# Simulated patterns shared by the child processes (outside the repository).
CACHE = Path(tempfile.gettempdir()) / "bcdi_gapfill_bench"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    import numpy as np
    import torch
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads_default": default_threads(), "numpy": np.__version__,
            "python": platform.python_version(), "loadavg": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def default_threads() -> int:
    """torch's thread count in a fresh process (this one's may have been changed)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def load_model(weights: str | None):
    """(model, description). ``weights``: None = the shipped default weights when present,
    else an untrained ``build_model("gapfill")`` (same architecture and cost); a path to a
    weights file, or to a training checkpoint (``checkpoint.pt`` / ``best.pt``)."""
    import torch
    from bcdi_gapfill.fill.inpainting import DEFAULT_WEIGHTS
    from bcdi_gapfill.nn.model import build_model

    if weights is None:
        if DEFAULT_WEIGHTS.is_file():
            weights = str(DEFAULT_WEIGHTS)
        else:
            torch.manual_seed(0)
            return build_model("gapfill").eval(), "untrained build_model('gapfill') (shipped weights absent)"
    payload = torch.load(weights, map_location="cpu", weights_only=False)
    config = payload.get("config") or payload.get("model_config")
    state = payload.get("state_dict") or payload.get("model")
    model = build_model(config)
    model.load_state_dict(state)
    step = payload.get("state", {}).get("step")
    return model.eval(), f"{weights}" + (f" (training step {step})" if step is not None else "")


def simulated(size, seed: int):
    """A simulated pattern, cached on disk so that every child process reads the same one."""
    import numpy as np
    from bcdi_gapfill.core.simulate import simulate_pattern
    shape = (size,) * 3 if isinstance(size, int) else tuple(size)
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"sim_{'x'.join(map(str, shape))}_{seed}.npy"
    if path.is_file():
        return np.load(path)
    counts = simulate_pattern(shape if len(set(shape)) > 1 else shape[0], seed).counts.astype(np.float32)
    np.save(path, counts)
    return counts


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """Run ``fn`` once: wall time, numpy's peak (tracemalloc) and the peak resident memory.

    ``rss_before_mb``: resident memory before the call; ``peak_rss_mb``: the highest resident
    memory during the call (VmHWM reset just before it; torch's allocations show here, not in
    tracemalloc). ``ru_maxrss`` is not used: it survives exec and would report the parent's
    size for a child process.
    """
    load0 = os.getloadavg()[0]
    rss0 = _proc_status_mb("VmRSS")
    reset = _reset_peak_rss()
    tracemalloc.start()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm = _proc_status_mb("VmHWM") if reset else None
    return result, {"seconds": round(seconds, 3), "numpy_peak_mb": round(peak / 2**20, 1),
                    "rss_before_mb": rss0, "peak_rss_mb": hwm, "load1_before": round(load0, 2),
                    "load1_after": round(os.getloadavg()[0], 2)}


def rss_mb() -> float | None:
    """Current resident memory (MB)."""
    return _proc_status_mb("VmRSS")


def run_child(script: str, args: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run ``script --child '<json>'`` in a fresh interpreter; it prints one JSON line last."""
    cmd = [sys.executable, str(Path(script).resolve()), "--child", json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1], **args}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_main(run: Callable[[dict], dict]) -> bool:
    """If invoked as a child, run one configuration, print its JSON and return True."""
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        args = json.loads(sys.argv[2])
        if args.get("threads"):
            import torch
            torch.set_num_threads(int(args["threads"]))
        print(json.dumps(run(args)))
        return True
    return False


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Markdown table of ``rows`` with (key, header) columns."""
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path
