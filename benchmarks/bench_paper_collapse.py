"""Why the paper's architecture did not train here, and what lets it: short runs of the
`workflows/train_paper.yml` recipe with and without its two additions.

Each variant trains the paper network (`model: paper`, sigmoid head of slope 1.5) from the
same seed on the recipe's data for ``--steps`` batches, then reports the validation in-gap
PCC and loss (`bcdi_gapfill.nn.train.evaluate_loss`, the recipe's validation portions) and the
head's logits on one validation batch. Variants:

* ``published``: the paper's network and loss as they are (output 0.5 at initialisation);
* ``initial_output``: the head's bias set so that the output starts at 0.05;
* ``logit_penalty``: `bcdi_gapfill.nn.train.logit_penalty` (logits kept within +-4);
* ``both``: the recipe.

    .venv/bin/python benchmarks/bench_paper_collapse.py [--steps 80] [--variants ...]

Needs the recipe's cached portion banks (runs/cache, made by the first training run or by
`bcdi_gapfill.nn.dataset.cached_portion_bank`); simulates them otherwise (~10 min on 2 cores).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

VARIANTS = {
    "published": {"w_logit": 0.0, "initial_output": None},
    "initial_output": {"w_logit": 0.0, "initial_output": 0.05},
    "logit_penalty": {"w_logit": 1.0, "initial_output": None},
    "both": {"w_logit": 1.0, "initial_output": 0.05},
}


def run_variant(name: str, steps: int, out_root: Path) -> dict:
    import dataclasses

    import torch
    from torch.utils.data import DataLoader
    from bcdi_gapfill.nn.dataset import GapPortionDataset, cached_portion_bank
    from bcdi_gapfill.nn.model import PatchUNet, UNetConfig
    from bcdi_gapfill.nn.train import _signal_subset, load_train_config, train

    recipe = load_train_config(C.ROOT / "workflows" / "train_paper.yml")
    cfg = dataclasses.replace(recipe, out_dir=str(out_root / name), max_steps=steps, time_budget_s=None,
                              checkpoint_every=10 ** 6, cache_dir=str(C.ROOT / "runs" / "cache"),
                              **VARIANTS[name])
    t0 = time.perf_counter()
    metrics = train(cfg, progress=False)
    seconds = time.perf_counter() - t0
    ckpt = torch.load(Path(cfg.out_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)
    model = PatchUNet(UNetConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    val_bank = cached_portion_bank(cfg.simulate_val, cfg.val_first_seed, cfg.simulate_size, cfg.cache_dir)
    val = _signal_subset(val_bank, cfg.min_signal_pcc, cfg.noise_keep_fraction, cfg.seed + 1, 1)
    inputs, target, gap = next(iter(DataLoader(GapPortionDataset(val, cfg.widths, augment=False, fixed=True,
                                                                 seed=cfg.seed + 1), batch_size=32)))
    with torch.no_grad():
        out, logits = model.eval()(inputs[:, :1], gap, return_logits=True)
    return {"variant": name, "steps": metrics["step"], "seconds": round(seconds, 1),
            "val_pcc": metrics.get("val_pcc"), "val_loss": metrics.get("val_loss"),
            "gap_output_mean": float(out[gap].mean()), "gap_target_mean": float(target[gap].mean()),
            "logit_min": float(logits.min()), "logit_max": float(logits.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="paper_collapse")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            rows.append(run_variant(name, args.steps, Path(tmp)))
            print(rows[-1], flush=True)
    print(C.table(rows, [("variant", "variant"), ("steps", "steps"), ("val_pcc", "validation in-gap PCC"),
                         ("val_loss", "validation loss"), ("gap_output_mean", "in-gap output mean"),
                         ("gap_target_mean", "in-gap target mean"), ("logit_min", "logit min"),
                         ("logit_max", "logit max"), ("seconds", "s")]))
    path = C.save(args.name, {"machine": C.machine(), "steps": args.steps, "rows": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
