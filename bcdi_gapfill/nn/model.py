"""The patching 3D U-Net (paper Fig. 2, section 2.3), in PyTorch.

Two configurations share one class:

* ``paper``: the authors' published layer sizes (their TensorFlow code): encoder filters
  32, 64, 128, 256; block 1 concatenates its input with four kernel-3 convolutions at
  dilations (4, 3, 2, 1), block 2 with four kernel-2 convolutions at dilations (3, 2, 2, 1),
  each branch a quarter of the block's filters; one kernel-2 convolution in blocks 3-4; each
  block then max-pools and applies LeakyReLU(0.2); the pooled map is the skip. The decoder,
  as in their code: a transposed convolution (kernel 2, stride 1) of the 2^3 bottleneck to
  478 channels, upsampled; then three blocks that concatenate the skip of encoder blocks 3, 2,
  1, apply a transposed convolution (kernel 2, stride 1; 222, 96, 32 filters) and upsample,
  each followed by LeakyReLU(0.2). Final convolutions of 24 (kernel 4), 12 (kernel 3), 6
  (kernel 2) filters and a 1x1 convolution with a sigmoid of slope 1.5. One input channel (the
  masked log-normalised portion).

* ``gapfill`` (our default): the same U-Net topology (dilated concatenations in the first two
  encoder blocks, plain convolutions in the last two, LeakyReLU 0.2, three extra
  convolutions) with two convolutions per level, a second input channel carrying the gap
  mask, and a *residual* head: the gap is first filled by a log-domain biharmonic fill of
  the window (`prefill="biharmonic"`) and the network predicts the correction to it. The
  network then starts from the best classical fill instead of from zero.

Input (N, C, D, H, W) with D = H = W = 32 (any multiple of 16 works); output (N, 1, D, H, W)
normalised log intensity in 0..1 (see `bcdi_gapfill.nn.dataset.log_normalise`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from bcdi_gapfill.nn.prefill import biharmonic_fill_torch

__all__ = ["UNetConfig", "PatchUNet", "CONFIGS", "build_model", "compute_prefill", "receptive_field"]


@dataclass
class UNetConfig:
    """Architecture of a `PatchUNet`; saved with the weights so a checkpoint rebuilds itself."""

    name: str = "gapfill"
    in_channels: int = 2
    filters: Sequence[int] = (8, 16, 32, 64)
    # Per encoder block: kernel size, dilation rates of its branches (empty: plain conv block).
    kernels: Sequence[int] = (3, 3, 3, 3)
    dilations: Sequence[Sequence[int]] = ((1, 2, 3, 4), (1, 2, 3, 4), (), ())
    convs_per_block: int = 2
    decoder: str = "upsample_conv"  # or "paper": concat, transposed conv (k2, s1), upsample
    # Filters of the decoder blocks, bottom-up; empty: the encoder's filters in reverse.
    decoder_filters: Sequence[int] = ()
    final_filters: Sequence[int] = (8, 8, 8)
    final_kernels: Sequence[int] = (3, 3, 3)
    head: str = "residual"  # "sigmoid" (paper) or "residual" (correction added to the prefill)
    sigmoid_slope: float = 1.0
    # Residual head: the correction is bound * tanh(raw / bound). An unbounded linear
    # correction diverged in training here (epoch 2, loss 0.13 -> 2.8 at lr 1e-3).
    residual_bound: float | None = 1.0
    # Residual head, at inference: the output's ceiling in window-normalised log units (1 =
    # the window's brightest measured voxel). Above 1, a fill can raise a Bragg peak that the
    # gap hides above everything the window still measures; training clips its target there.
    output_cap: float = 1.0
    prefill: str = "biharmonic"  # "zero" or "biharmonic": how gap voxels enter channel 0
    prefill_iterations: int = 80
    prefill_init: str = "linear"  # start of the CG iterations: "linear" (across-gap) or "zero"
    window: int = 32
    # Weight initialisation: "kaiming" (He, for LeakyReLU 0.2), "glorot" (Keras' default,
    # which the authors' TensorFlow code used) or "default" (PyTorch's, with which the shipped
    # weights before version 0.2 were trained).
    init: str = "kaiming"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (tuples become lists)."""
        return asdict(self)


CONFIGS: dict[str, UNetConfig] = {
    "paper": UNetConfig(
        name="paper", in_channels=1, filters=(32, 64, 128, 256), kernels=(3, 2, 2, 2),
        dilations=((4, 3, 2, 1), (3, 2, 2, 1), (), ()), convs_per_block=1, decoder="paper",
        decoder_filters=(478, 222, 96, 32), init="glorot",
        final_filters=(24, 12, 6), final_kernels=(4, 3, 2), head="sigmoid", sigmoid_slope=1.5,
        prefill="zero"),
    "gapfill": UNetConfig(),
    "gapfill-wide": UNetConfig(name="gapfill-wide", filters=(16, 32, 64, 128), final_filters=(24, 12, 8)),
}


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class _SpaceToBatchConv3d(nn.Conv3d):
    """Dilated 'same' convolution computed as a plain convolution on d^3 interleaved sub-grids.

    Mathematically identical to ``nn.Conv3d(..., dilation=d, padding="same")`` for odd
    kernels, but it runs on the fast (oneDNN) convolution path: PyTorch's CPU backward of a
    dilated 3D convolution falls back to a slow reference kernel, measured here at about
    50x the time of the same undilated convolution.
    """

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int):
        if kernel % 2 == 0:
            raise ValueError("space-to-batch dilated convolution needs an odd kernel")
        super().__init__(cin, cout, kernel, padding=kernel // 2)
        self.rate = dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.rate
        if d == 1:
            return super().forward(x)
        n, c, *dims = x.shape
        padded = [-(-s // d) * d for s in dims]
        x = F.pad(x, [0, padded[2] - dims[2], 0, padded[1] - dims[1], 0, padded[0] - dims[0]])
        a, b, e = (p // d for p in padded)
        # (N, C, a, d, b, d, e, d) -> (N * d^3, C, a, b, e): each sub-grid is one batch item.
        x = x.reshape(n, c, a, d, b, d, e, d).permute(0, 3, 5, 7, 1, 2, 4, 6).reshape(n * d ** 3, c, a, b, e)
        y = super().forward(x)
        co = y.shape[1]
        y = y.reshape(n, d, d, d, co, a, b, e).permute(0, 4, 5, 1, 6, 2, 7, 3).reshape(n, co, *padded)
        return y[:, :, :dims[0], :dims[1], :dims[2]]


class _DilatedConcat(nn.Module):
    """Input concatenated with four convolutions of itself at different dilation rates."""

    def __init__(self, cin: int, filters: int, kernel: int, dilations: Sequence[int]):
        super().__init__()
        branch = max(filters // len(dilations), 1)
        # Even kernels (the paper's block 2) keep PyTorch's asymmetric 'same' padding.
        self.branches = nn.ModuleList(
            _SpaceToBatchConv3d(cin, branch, kernel, d) if kernel % 2 else
            nn.Conv3d(cin, branch, kernel, dilation=d, padding="same") for d in dilations)
        self.out_channels = cin + branch * len(dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, *[b(x) for b in self.branches]], dim=1)


class _EncoderBlock(nn.Module):
    def __init__(self, cin: int, filters: int, kernel: int, dilations: Sequence[int], n_convs: int,
                 paper_style: bool):
        super().__init__()
        layers: list[nn.Module] = []
        c = cin
        if dilations:
            dil = _DilatedConcat(c, filters, kernel, dilations)
            layers.append(dil)
            c = dil.out_channels
            if not paper_style:
                layers.append(_act())
        for _ in range(n_convs if not dilations or not paper_style else 0):
            layers += [nn.Conv3d(c, filters, kernel, padding="same")] + ([] if paper_style else [_act()])
            c = filters
        self.body = nn.Sequential(*layers)
        self.paper_style = paper_style
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.body(x)
        if self.paper_style:
            # Paper: pool then activate; the pooled map is both the skip and the next input.
            y = F.leaky_relu(F.max_pool3d(y, 2), 0.2)
            return y, y
        return F.max_pool3d(y, 2), y


class PatchUNet(nn.Module):
    """3D U-Net that inpaints the gap of a (N, C, 32, 32, 32) batch of portions.

    Channel 0 of the input is the log-normalised portion with gap voxels at 0; channel 1 (when
    ``in_channels == 2``) is the gap mask (1 in the gap). One-channel models (the paper's) are
    given the gap by ``forward(x, gap)``. Output: (N, 1, D, H, W), the full portion, in 0..1
    at inference.
    """

    def __init__(self, config: UNetConfig | str = "gapfill"):
        super().__init__()
        cfg = CONFIGS[config] if isinstance(config, str) else config
        self.config = cfg
        paper = cfg.decoder == "paper"
        self.encoders = nn.ModuleList()
        c = cfg.in_channels
        skip_channels = []
        for filters, kernel, dil in zip(cfg.filters, cfg.kernels, cfg.dilations):
            block = _EncoderBlock(c, filters, kernel, dil, cfg.convs_per_block, paper)
            self.encoders.append(block)
            skip_channels.append(block.out_channels)
            c = block.out_channels
        self.decoders = nn.ModuleList()
        decoder_filters = list(cfg.decoder_filters) or list(reversed(list(cfg.filters)))
        if len(decoder_filters) != len(cfg.filters):
            raise ValueError(f"decoder_filters {list(cfg.decoder_filters)} needs one entry per encoder block "
                             f"({len(cfg.filters)})")
        if paper:
            # Bottom-up: the bottleneck alone (the last block's pooled map is the input, not
            # also a skip), then concat(x, skip at the same size); each a transposed conv k2 s1
            # and an upsampling x2.
            for skip_c, filters in zip([0, *reversed(skip_channels[:-1])], decoder_filters):
                self.decoders.append(nn.ConvTranspose3d(c + skip_c, filters, 2, stride=1))
                c = filters
        else:
            for skip_c, filters in zip(reversed(skip_channels), decoder_filters):
                self.decoders.append(nn.Sequential(
                    nn.Conv3d(c + skip_c, filters, 3, padding="same"), _act(),
                    nn.Conv3d(filters, filters, 3, padding="same"), _act()))
                c = filters
        final: list[nn.Module] = []
        for filters, kernel in zip(cfg.final_filters, cfg.final_kernels):
            final += [nn.Conv3d(c, filters, kernel, padding="same"), _act()]
            c = filters
        self.final = nn.Sequential(*final)
        self.head = nn.Conv3d(c, 1, 1)
        # PyTorch's default convolution init shrinks the signal at every layer; through the
        # ~20 convolutions of this U-Net (no normalisation layers) the features under the head
        # came out ~1e-3 of the input, and a residual head on them could not learn (a batch of
        # 16 did not overfit in 60 steps). He init for LeakyReLU(0.2) keeps the activations at
        # the input's scale; Glorot is what the authors' Keras layers used.
        init_weight = {"kaiming": partial(nn.init.kaiming_normal_, a=0.2, nonlinearity="leaky_relu"),
                       "glorot": nn.init.xavier_uniform_, "default": None}
        if cfg.init not in init_weight:
            raise ValueError(f"unknown init {cfg.init!r}; choose 'kaiming', 'glorot' or 'default'")
        if init_weight[cfg.init] is not None:
            for module in self.modules():
                if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                    init_weight[cfg.init](module.weight)
                    nn.init.zeros_(module.bias)
        if cfg.head == "residual":
            # Start as the identity on the prefill: the correction is zero at initialisation.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def prefill(self, log_norm: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        """Channel 0 with gap voxels filled as the configuration says (see `compute_prefill`)."""
        return compute_prefill(log_norm, gap, self.config)

    def trunk(self, h: torch.Tensor) -> torch.Tensor:
        """Encoder and decoder: (N, in_channels, D, H, W) -> (N, filters[0], D, H, W)."""
        skips = []
        for enc in self.encoders:
            h, skip = enc(h)
            skips.append(skip)
        paper = self.config.decoder == "paper"
        for dec, skip in zip(self.decoders, [None, *reversed(skips[:-1])] if paper else reversed(skips)):
            if paper:
                # Transposed conv k2 s1 grows each axis by one; keep the first D voxels ('same').
                h = dec(h if skip is None else torch.cat([h, skip], dim=1))[..., :-1, :-1, :-1]
                h = F.interpolate(F.leaky_relu(h, 0.2), scale_factor=2, mode="nearest")
            else:
                h = F.interpolate(h, size=skip.shape[-3:], mode="trilinear", align_corners=False)
                h = dec(torch.cat([h, skip], dim=1))
        return h

    def forward(self, x: torch.Tensor, gap: torch.Tensor | None = None,
                base: torch.Tensor | None = None, return_logits: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Predict the full portion.

        Parameters
        ----------
        x : (N, in_channels, D, H, W) float tensor
        gap : (N, 1, D, H, W) bool tensor, optional
            Required for one-channel models; for two-channel models it defaults to channel 1.
        base : (N, 1, D, H, W) float tensor, optional
            ``self.prefill(x[:, :1], gap)`` computed beforehand (training computes it in the
            data-loading worker, off the optimisation thread); computed here when absent.
        return_logits : bool
            Also return the head's raw output (N, 1, D, H, W), before the sigmoid or the
            residual's tanh bound: training penalises sigmoid logits that leave the live range
            (`bcdi_gapfill.nn.train.logit_penalty`).
        """
        if gap is None:
            if self.config.in_channels < 2:
                raise ValueError("a one-channel model needs the gap mask passed as `gap`")
            gap = x[:, 1:2] > 0.5
        if base is None:
            base = self.prefill(x[:, :1], gap)
        h = torch.cat([base, x[:, 1:]], dim=1) if self.config.in_channels > 1 else base
        # Channels-last 3D puts CPU convolutions on oneDNN's fast path (backward ~7x faster
        # measured here); the layout does not change the arithmetic.
        h = h.contiguous(memory_format=torch.channels_last_3d)
        logits = self.head(self.final(self.trunk(h)))
        if self.config.head == "sigmoid":
            out = torch.sigmoid(self.config.sigmoid_slope * logits)
        else:
            bound = self.config.residual_bound
            out = base + (bound * torch.tanh(logits / bound) if bound else logits)
            if not self.training:
                # At most output_cap (1: the window's measured maximum), or the base where the
                # base is brighter: a base computed over the whole array may rise above the
                # window's maximum where the gap hides the Bragg peak, and a cap would flatten it.
                out = torch.minimum(out.clamp_min(0.0), base.clamp_min(self.config.output_cap))
        return (out, logits) if return_logits else out


def compute_prefill(log_norm: torch.Tensor, gap: torch.Tensor, config: UNetConfig) -> torch.Tensor:
    """The gap voxels of ``log_norm`` (N, 1, D, H, W) filled as ``config.prefill`` says:
    zeros, or the log-domain biharmonic fill of each window on its own.

    A module-level function so that data-loading workers can compute it for training.
    """
    if config.prefill == "biharmonic":
        # A fixed preprocessing: nothing to learn through it, so no graph is kept.
        # A fixed iteration count (no tolerance) keeps each window's prefill independent of
        # the other windows in its batch, so results do not depend on the batch size.
        with torch.no_grad():
            return biharmonic_fill_torch(log_norm.contiguous(), gap, n_iter=config.prefill_iterations,
                                         tol=None, init=config.prefill_init)
    return log_norm * ~gap


def build_model(config: UNetConfig | str | dict = "gapfill") -> PatchUNet:
    """Build a `PatchUNet` from a configuration name, a `UNetConfig` or its dict."""
    if isinstance(config, dict):
        config = UNetConfig(**config)
    if isinstance(config, str) and config not in CONFIGS:
        raise ValueError(f"unknown model configuration {config!r}; choose one of {sorted(CONFIGS)}")
    return PatchUNet(config)


def receptive_field(model: PatchUNet, size: int = 32) -> torch.Tensor:
    """Voxels of a (size^3) input that influence the central output voxel (bool, (D, H, W)).

    Measured by back-propagating from the centre; used by tests and to document how far from
    the gap the network looks.
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(1, model.config.in_channels, size, size, size, requires_grad=True)
    with torch.enable_grad():
        # From the features under the head: a residual head starts at zero and would hide them.
        features = model.final(model.trunk(x))
        features[0, :, size // 2, size // 2, size // 2].sum().backward()
    model.train(was_training)
    return x.grad[0].abs().sum(0) > 0

