"""Shipped and user weights: where they live, their model cards, loading (once, cached) with
the SHA-256 check.

A weights file ``NAME.pt`` holds ``{"config": <UNetConfig dict>, "state_dict": ...}``; its
model card ``NAME.json`` holds the file's SHA-256 (checked at every load) and what the model
serves (``max_gap_width``), how it was trained and measured.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from bcdi_gapfill.core.io import file_sha256

__all__ = ["WEIGHTS_DIR", "DEFAULT_WEIGHTS", "card_path", "load_model", "default_model_info", "resolve_device",
           "clear_model_cache"]

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "gapfill_default.pt"


def card_path(weights: Path) -> Path:
    """The model card (JSON) that goes with a weights file."""
    return weights.with_suffix(".json")


@functools.lru_cache(maxsize=4)
def _load_cached(path_str: str, device_str: str):
    import torch

    from bcdi_gapfill.nn.model import build_model

    path = Path(path_str)
    if not path.is_file():
        raise FileNotFoundError(f"model weights not found: {path}")
    card_file = card_path(path)
    card: dict[str, Any] = {}
    if card_file.is_file():
        card = json.loads(card_file.read_text())
        expected = card.get("sha256")
        if expected and file_sha256(path) != expected:
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
    info = {"weights": str(path), "sha256": card.get("sha256") or file_sha256(path),
            "config": payload["config"], **{k: v for k, v in card.items() if k in ("max_gap_width", "name")}}
    # The model object carries its card, so that inpaint(model=net) serves the same gap
    # widths as inpaint(model=path).
    model.gapfill_info = dict(info)
    return model, info


def resolve_device(device: str | None) -> str:
    """``device``, or "cuda" when torch sees a GPU and "cpu" otherwise."""
    import torch
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def load_model(weights: str | Path | None = None, device: str | None = None):
    """Load (once, then cached) a model and its info dict; ``None`` is the shipped default.

    The info dict (weights path, SHA-256, architecture and the model card's ``max_gap_width``
    and ``name``) is also the model's ``gapfill_info`` attribute, so that passing the loaded
    model object to :func:`inpaint` applies the card's gap-width limit, as passing the path does.
    """
    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    return _load_cached(str(path.resolve()), resolve_device(device))


def default_model_info() -> dict:
    """Path, SHA-256 and configuration of the shipped default weights."""
    return dict(load_model(None, "cpu")[1])


def clear_model_cache() -> None:
    """Forget the loaded models: a weights file replaced under the same path is read again."""
    _load_cached.cache_clear()
