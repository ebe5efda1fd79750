"""Reliability and data safety (issue 8).

* property-based tests of ``inpaint`` (small model, classical fills) over shapes, masks, dtypes;
* bad input at every public edge gives a ValueError/TypeError naming the problem and the value;
* corrupted files give a ValueError (or FileNotFoundError) naming the path;
* a training run killed with SIGKILL leaves a loadable checkpoint and resumes from it;
* bit-identical results on CPU for the same input, weights and settings;
* a job that would not fit in memory is refused before allocating.

Everything is kept tiny (arrays <= 48^3, a 4/8-filter model) because the suite shares the CPU.
"""
from __future__ import annotations

import io as pyio
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from bcdi_gapfill.core import io as gio
from bcdi_gapfill.integrations.bcdi import fill_bcdi_arrays
from bcdi_gapfill.fill.classical import fill_gap
from bcdi_gapfill.cli.commands import main
from bcdi_gapfill.fill.inpainting import estimate_memory, inpaint
from bcdi_gapfill.nn.model import build_model

SMALL = {"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4], "prefill_iterations": 20}
F32_MAX = np.finfo(np.float32).max
DTYPES = ["uint8", "uint16", "uint32", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "bool"]
HYPO = dict(deadline=None, database=None, derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                   HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def net():
    """A small model whose output depends on its input window.

    A residual head starts at zero (the output is then the prefill, whatever the window), which
    would hide mis-ordered, mixed-up or mis-blended windows: its weights are drawn instead.
    """
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.5)
        model.head.bias.fill_(0.05)
    return model


def test_the_small_net_output_depends_on_the_window(net):
    rng = np.random.default_rng(0)
    windows = torch.from_numpy(rng.random((2, net.config.in_channels, 32, 32, 32), dtype=np.float32))
    windows[:, 1:] = (windows[:, 1:] > 0.9).float()   # gap channel(s): a few voxels
    gap = windows[:, 1:2] > 0.5
    with torch.no_grad():
        out = net(windows)
        base = net.prefill(windows[:, :1], gap)
    assert not torch.allclose(out[gap], base[gap], atol=1e-3)   # not the prefill passed through
    assert not torch.allclose(out[0], out[1], atol=1e-3)      # two windows, two outputs


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, net):
    """The small model as a weights file (the format `load_model` reads)."""
    path = tmp_path_factory.mktemp("weights") / "small.pt"
    torch.save({"config": net.config.to_dict(), "state_dict": net.state_dict()}, path)
    return path


# ---------------------------------------------------------------------------- generators

def _counts(rng: np.random.Generator, shape, dtype: str, scale: float) -> np.ndarray:
    """Non-negative photon-count-like data of a dtype, with a bright peak and zeros."""
    if dtype == "bool":
        return rng.random(shape) < 0.5
    integer = np.dtype(dtype).kind in "iu"
    info = np.iinfo(dtype) if integer else np.finfo(dtype)
    # float(int64 max) rounds up to 2**63, which would wrap around to a negative int64
    top = min(float(info.max) * (1 - 2.0 ** -20 if integer else 1.0), scale)
    values = rng.exponential(0.05 * top, shape)
    values[tuple(n // 2 for n in shape)] = top  # the Bragg peak
    values[rng.random(shape) < 0.2] = 0.0       # dark voxels
    values = np.clip(values, 0, top)
    return (np.floor(values) if integer else values).astype(dtype)


def _mask(rng: np.random.Generator, shape, kind: str, width: int) -> np.ndarray:
    gap = np.zeros(shape, bool)
    if kind == "empty":
        return gap
    if kind == "scattered":
        return rng.random(shape) < rng.uniform(0.001, 0.15)
    axes = {"columns": [2], "rows": [1], "cross": [1, 2], "frames": [0]}[kind]
    for axis in axes:
        w = min(width, shape[axis] - 1)
        start = int(rng.integers(0, shape[axis] - w + 1))
        index = [slice(None)] * 3
        index[axis] = slice(start, start + w)
        gap[tuple(index)] = True
    return gap


def _check_output(out, data, data_before, gap, gap_before):
    assert out.dtype == np.float32 and out.shape == data.shape
    expected = data.astype(np.float32)
    # measured voxels bit-identical to data.astype(float32)
    assert np.array_equal(out[~gap].view(np.uint32), expected[~gap].view(np.uint32))
    assert np.isfinite(out[gap]).all() and (out[gap] >= 0).all()
    # inputs unchanged
    assert data.dtype == data_before.dtype and np.array_equal(data, data_before)
    assert gap.dtype == bool and np.array_equal(gap, gap_before)


# ------------------------------------------------------------------- property-based tests

@settings(max_examples=20, **HYPO)
@given(shape=st.tuples(*[st.integers(32, 48)] * 3), dtype=st.sampled_from(DTYPES),
       kind=st.sampled_from(["columns", "rows", "cross", "scattered", "empty", "frames"]),
       width=st.integers(1, 8), scale=st.sampled_from([1.0, 50.0, 1e4, 1e9]), seed=st.integers(0, 2**16))
def test_inpaint_model_properties(net, shape, dtype, kind, width, scale, seed):
    rng = np.random.default_rng(seed)
    data = _counts(rng, shape, dtype, scale)
    gap = _mask(rng, shape, kind, width)
    data_before, gap_before = data.copy(), gap.copy()
    out = inpaint(data, gap, model=net, device="cpu", batch_size=8)
    _check_output(out, data, data_before, gap, gap_before)


@settings(max_examples=60, **HYPO)
@given(shape=st.tuples(*[st.integers(1, 14)] * 3), dtype=st.sampled_from(DTYPES),
       kind=st.sampled_from(["columns", "rows", "cross", "scattered", "empty", "frames"]),
       width=st.integers(1, 6), scale=st.sampled_from([1.0, 50.0, 1e4, 1e9, 1e30]),
       seed=st.integers(0, 2**16),
       method=st.sampled_from(["biharmonic", "biharmonic", "linear", "cubic", "nearest", "zero"]))
def test_inpaint_classical_properties(shape, dtype, kind, width, scale, seed, method):
    rng = np.random.default_rng(seed)
    data = _counts(rng, shape, dtype, scale)
    gap = _mask(rng, shape, kind, width)
    assume(not gap.all())
    data_before, gap_before = data.copy(), gap.copy()
    out = inpaint(data, gap, method=method)
    _check_output(out, data, data_before, gap, gap_before)


def test_gap_stays_finite_at_the_top_of_the_float32_range(net):
    # log1p(F32_MAX) ~ 88.7: a prediction a little above it used to overflow expm1 to inf
    shape = (32, 32, 32)
    data = np.full(shape, F32_MAX, np.float32)
    gap = _mask(np.random.default_rng(0), shape, "columns", 4)
    for method in ("model", "biharmonic"):
        out = inpaint(data, gap, method=method, model=net, device="cpu")
        assert np.isfinite(out).all() and np.array_equal(out[~gap], data[~gap])


# ------------------------------------------------------------------------- bad input

S = (32, 32, 32)
_GAP = np.zeros(S, bool)
_GAP[:, :, 14:17] = True


def _ones(dtype=np.float32, shape=S):
    return np.ones(shape, dtype)


def _with(value, at=(0, 0, 0), dtype=np.float64):
    data = _ones(dtype)
    data[at] = value
    return data


# (id, data, mask, exception, regex naming the problem and the value seen)
INPAINT_BAD = [
    ("nan", _with(np.nan), _GAP, ValueError, r"1 NaN or infinite.*gap_mask"),
    ("inf", _with(np.inf), _GAP, ValueError, r"1 NaN or infinite"),
    ("negative", _with(-3.0), _GAP, ValueError, r"1 negative values \(min -3\.0\).*gap_mask"),
    ("complex", _ones(np.complex64), _GAP, TypeError, r"real numbers.*complex64"),
    ("object", _ones(object), _GAP, TypeError, r"real numbers.*object"),
    ("str", np.full(S, "7"), _GAP, TypeError, r"real numbers.*<U1"),
    ("2d", _ones(shape=(32, 32)), _GAP[0], ValueError, r"3D.*2D.*\(32, 32\)"),
    ("4d", _ones(shape=(2, *S)), np.stack([_GAP] * 2), ValueError, r"3D.*4D.*\(2, 32, 32, 32\)"),
    ("mask shape", _ones(), _GAP[:, :, :31], ValueError, r"gap_mask shape \(32, 32, 31\).*\(32, 32, 32\)"),
    ("mask uint8", _ones(), _GAP.astype(np.uint8), TypeError, r"boolean.*uint8"),
    ("mask float", _ones(), _GAP.astype(float), TypeError, r"boolean.*float64"),
    ("mask None", _ones(), None, TypeError, r"boolean.*object"),
    ("empty", _ones(shape=(0, 32, 32)), np.zeros((0, 32, 32), bool), ValueError, r"empty.*\(0, 32, 32\)"),
    ("all gap", _ones(), np.ones(S, bool), ValueError, r"every voxel"),
    ("beyond float32", _with(1e39), _GAP, ValueError, r"1e\+39.*float32 range"),
    ("masked array", np.ma.masked_array(_ones(), mask=True), _GAP, TypeError, r"not a masked array"),
]
MODEL_ONLY_BAD = [
    ("too small", _ones(shape=(16, 40, 40)), np.pad(np.ones((16, 40, 2), bool), ((0, 0), (0, 0), (20, 18))),
     ValueError, r"\(16, 40, 40\) is smaller than the 32\^3 window"),
    ("too wide", _ones(), np.pad(np.ones((32, 32, 26), bool), ((0, 0), (0, 0), (3, 3))), ValueError,
     r"gap band of 26 pixels.*wider than the model serves \(24\)"),
]


@pytest.mark.parametrize("method", ["model", "biharmonic"])
@pytest.mark.parametrize("case", INPAINT_BAD, ids=[c[0] for c in INPAINT_BAD])
def test_inpaint_bad_input(net, method, case):
    _, data, mask, exc, match = case
    with pytest.raises(exc, match=match):
        inpaint(data, mask, method=method, model=net, device="cpu")


@pytest.mark.parametrize("case", MODEL_ONLY_BAD, ids=[c[0] for c in MODEL_ONLY_BAD])
def test_inpaint_model_bad_geometry(net, case):
    _, data, mask, exc, match = case
    with pytest.raises(exc, match=match):
        inpaint(data, mask, model=net, device="cpu")
    inpaint(data, mask, method="biharmonic")  # the classical fills serve such arrays


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"method": "cnn"}, ValueError, r"unknown method 'cnn'"),
    ({"blend": "max"}, ValueError, r"unknown blend 'max'"),
    ({"stride": 0}, ValueError, r"stride must be >= 1, got 0"),
    ({"precision": "int8"}, ValueError, r"unknown precision 'int8'"),
    ({"precision": "float16"}, ValueError, r"only available on CUDA.*'cpu'"),
    ({"batch_size": 0}, ValueError, r"batch_size must be an integer >= 1 or None, got 0"),
    ({"batch_size": 2.5}, ValueError, r"batch_size must be an integer >= 1 or None, got 2\.5"),
])
def test_inpaint_bad_options(net, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        inpaint(_ones(), _GAP, model=net, device="cpu", **kwargs)


def test_inpaint_bad_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "none.pt"))):
        inpaint(_ones(), _GAP, model=tmp_path / "none.pt", device="cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match=r"cannot load model weights from .*junk\.pt"):
        inpaint(_ones(), _GAP, model=junk, device="cpu")


FILL_GAP_BAD = [
    ("nan", _with(np.nan), _GAP, r"1 NaN and 0 infinite"),
    ("inf", _with(-np.inf), _GAP, r"0 NaN and 1 infinite"),
    ("negative", _with(-3.0), _GAP, r"1 negative measured values \(min -3\.0\).*gap_mask"),
    ("complex", _ones(np.complex64), _GAP, r"real.*complex64"),
    ("object", _ones(object), _GAP, r"real.*object"),
    ("str", np.full(S, "7"), _GAP, r"real.*<U1"),
    ("2d", _ones(shape=(32, 32)), _GAP[0], r"3D.*\(32, 32\)"),
    ("4d", _ones(shape=(2, *S)), np.stack([_GAP] * 2), r"3D.*\(2, 32, 32, 32\)"),
    ("mask shape", _ones(), _GAP[:, :, :31], r"gap_mask shape \(32, 32, 31\).*\(32, 32, 32\)"),
    ("mask uint8", _ones(), _GAP.astype(np.uint8), r"boolean.*uint8"),
    ("empty", _ones(shape=(0, 32, 32)), np.zeros((0, 32, 32), bool), r"empty.*\(0, 32, 32\)"),
    ("all gap", _ones(), np.ones(S, bool), r"every voxel"),
]


@pytest.mark.parametrize("case", FILL_GAP_BAD, ids=[c[0] for c in FILL_GAP_BAD])
def test_fill_gap_bad_input(case):
    _, data, mask, match = case
    with pytest.raises((ValueError, TypeError), match=match):
        fill_gap(data, mask)


BCDI_BAD = [
    ("complex", _ones(np.complex64), _GAP, TypeError, r"real numeric.*complex64"),
    ("object", _ones(object), _GAP, TypeError, r"real numeric.*object"),
    ("str", np.full(S, "7"), _GAP, TypeError, r"real numeric.*<U1"),
    ("2d", _ones(shape=(32, 32)), _GAP[0], ValueError, r"3D.*\(32, 32\)"),
    ("4d", _ones(shape=(2, *S)), np.stack([_GAP] * 2), ValueError, r"3D.*\(2, 32, 32, 32\)"),
    ("mask shape", _ones(), _GAP[:, :, :31], ValueError, r"mask shape \(32, 32, 31\).*\(32, 32, 32\)"),
    ("mask object", _ones(), _GAP.astype(object), TypeError, r"mask.*object"),
    ("no mask", _ones(), None, ValueError, r"without a mask"),
    ("empty", _ones(shape=(0, 32, 32)), np.zeros((0, 32, 32), np.int8), ValueError, r"empty.*\(0, 32, 32\)"),
    ("all gap", _ones(), np.ones(S, np.int8), ValueError, r"every voxel"),
    ("too wide", _ones(), np.pad(np.ones((32, 32, 26), np.int8), ((0, 0), (0, 0), (3, 3))), ValueError,
     r"gap band of 26 pixels"),
    ("too small", _ones(shape=(16, 40, 40)),
     np.pad(np.ones((16, 40, 3), np.int8), ((0, 0), (0, 0), (18, 19))), ValueError,
     r"\(16, 40, 40\) is smaller than the 32\^3 window"),
]


@pytest.mark.parametrize("case", BCDI_BAD, ids=[c[0] for c in BCDI_BAD])
def test_fill_bcdi_arrays_bad_input(net, case):
    _, data, mask, exc, match = case
    with pytest.raises(exc, match=match):
        fill_bcdi_arrays(data, mask, model=net, device="cpu")


def test_fill_bcdi_arrays_reads_bad_values_as_zero_and_keeps_them():
    """bcdi's data may hold NaN and negative values (background subtraction): documented as read
    as 0 by the filler and kept as they are outside the gap."""
    data = np.random.default_rng(1).poisson(20, S).astype(np.float64)
    data[0, 0, 0], data[1, 1, 1], data[2, 2, 2] = np.nan, -5.0, np.inf
    mask = _GAP.astype(np.int8)
    before = data.copy()
    filled, new_mask, record = fill_bcdi_arrays(data, mask, method="biharmonic")
    assert np.array_equal(data, before, equal_nan=True)  # input untouched
    assert np.isfinite(filled[_GAP]).all() and (filled[_GAP] >= 0).all()
    assert np.array_equal(filled[~_GAP], data[~_GAP], equal_nan=True)
    assert not new_mask[_GAP].any() and record["gap_voxels_filled"] == int(_GAP.sum())


# --- validate (only the checks that run before any phase retrieval)

@pytest.mark.parametrize("kwargs, exc, match", [
    ({"mode": "fast"}, ValueError, r"mode must be one of.*'fast'"),
    ({"methods": []}, ValueError, r"non-empty sequence"),
    ({"methods": ["magic"]}, ValueError, r"unknown method\(s\) \['magic'\]"),
    ({"methods": ["zero_fill", "zero_fill"]}, ValueError, r"duplicates.*'zero_fill', 'zero_fill'"),
    ({"counts": -1.0}, ValueError, r"positive peak photon count.*-1\.0"),
    ({"counts": float("nan")}, ValueError, r"positive peak photon count.*nan"),
    ({"n_starts": 0}, ValueError, r"n_starts.*>= 1, got 0"),
    ({"obj": np.ones((16, 16))}, ValueError, r"3D numeric.*\(16, 16\)"),
    ({"obj": np.full((16, 16, 16), "a")}, ValueError, r"3D numeric.*<U1"),
    ({"obj": np.full((16, 16, 16), np.nan, complex)}, ValueError, r"finite"),
    ({"obj": np.zeros((16, 16, 16), complex)}, ValueError, r"identically zero"),
    ({"gap": np.zeros((16, 16, 15), bool)}, ValueError, r"gap mask shape \(16, 16, 15\).*\(16, 16, 16\)"),
    ({"gap": np.zeros((16, 16, 16), np.uint8)}, TypeError, r"boolean.*uint8"),
    ({"gap": "cross:x"}, ValueError, r"'cross:x'"),
    ({"gap": 3}, TypeError, r"gap must be a spec.*got 3"),
    ({"gap_offset": 1.5}, TypeError, r"gap_offset.*1\.5"),
])
def test_validate_bad_input(kwargs, exc, match):
    from bcdi_gapfill.validation.core import validate
    args = {"obj": np.pad(np.ones((4, 4, 4), complex), 6), "methods": ["zero_fill"], "progress": False,
            **kwargs}
    with pytest.raises(exc, match=match):
        validate(**args)


# --- the PyNX operator

@pytest.mark.pynx
def test_pynx_operator_bad_input():
    pc = pytest.importorskip("pynx.cdi", reason="PyNX (pynx.cdi) is not installed")
    from bcdi_gapfill.integrations.pynx import InpaintGaps
    for kwargs, exc, match in [
        ({"method": "cnn"}, ValueError, r"unknown method 'cnn'"),
        ({"mode": "guess"}, ValueError, r"unknown mode 'guess'"),
        ({"method": "biharmonic", "uncertainty_threshold": 1.0}, ValueError, r"needs method='model'"),
        ({"uncertainty_threshold": float("nan")}, ValueError, r"finite and >= 0, got nan"),
        ({"uncertainty_threshold": -1.0}, ValueError, r"finite and >= 0, got -1\.0"),
        ({"gap_mask": _GAP.astype(np.uint8)}, TypeError, r"boolean.*uint8"),
        ({"gap_mask": _GAP[0]}, ValueError, r"3D.*\(32, 32\)"),
        ({"return_uncertainty": True}, TypeError, r"return_uncertainty"),
    ]:
        with pytest.raises(exc, match=match):
            InpaintGaps(**kwargs)
    iobs = np.random.default_rng(0).poisson(5, S).astype(np.float32)
    mask = _GAP.astype(np.int8)
    cdi = pc.CDI(np.fft.fftshift(iobs), mask=np.fft.fftshift(mask))
    with pytest.raises(ValueError, match=r"gap_mask shape \(32, 32, 31\) differs from iobs shape"):
        InpaintGaps(method="biharmonic", gap_mask=_GAP[:, :, :31]) * cdi
    bad = iobs.copy()
    bad[3, 3, 3] = np.nan
    cdi = pc.CDI(np.fft.fftshift(bad), mask=np.fft.fftshift(mask))
    with pytest.raises(ValueError, match=r"1 NaN or infinite"):
        InpaintGaps(method="biharmonic") * cdi
    cdi = pc.CDI(np.fft.fftshift(iobs[0]), mask=np.fft.fftshift(mask[0]))
    with pytest.raises(ValueError, match=r"3D data.*\(32, 32\)"):
        InpaintGaps(method="biharmonic") * cdi


# --- the command line: every error is one line on stderr and exit status 2, never a traceback

@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    good = np.random.default_rng(0).poisson(5, S).astype(np.float32)
    files = {"good": good, "nan": _with(np.nan, dtype=np.float32), "neg": -good, "cplx": good.astype(complex),
             "flat": good[0], "empty": np.zeros((0, 32, 32), np.float32), "text": np.full(S, "a"),
             "m_short": np.zeros((31, 32, 32), np.int8), "m_all": np.ones(S, np.int8)}
    for name, array in files.items():
        np.save(d / f"{name}.npy", array)
    (d / "junk.npy").write_bytes(os.urandom(300))
    (d / "zero.h5").write_bytes(b"")
    return d


@pytest.mark.parametrize("argv, match", [
    (["inpaint", "{d}/missing.npy", "-o", "{d}/o.npz", "--gap", "cross:4"], r"no such file: .*missing\.npy"),
    (["inpaint", "{d}/junk.npy", "-o", "{d}/o.npz", "--gap", "cross:4"], r"cannot read .*junk\.npy"),
    (["inpaint", "{d}/zero.h5", "-o", "{d}/o.npz", "--gap", "cross:4"], r"cannot read .*zero\.h5"),
    (["inpaint", "{d}/text.npy", "-o", "{d}/o.npz", "--gap", "cross:4"], r"text\.npy.*dtype <U1"),
    (["inpaint", "{d}/nan.npy", "-o", "{d}/o.npz", "--gap", "cross:4", "--method", "biharmonic"],
     r"1 NaN or infinite"),
    (["inpaint", "{d}/neg.npy", "-o", "{d}/o.npz", "--gap", "cross:4", "--method", "biharmonic"],
     r"negative values \(min -\d+\.0\).*gap_mask"),
    (["inpaint", "{d}/cplx.npy", "-o", "{d}/o.npz", "--gap", "cross:4"], r"complex128"),
    (["inpaint", "{d}/flat.npy", "-o", "{d}/o.npz", "--gap", "cross:4"], r"3D.*\(32, 32\)"),
    (["inpaint", "{d}/empty.npy", "-o", "{d}/o.npz", "--gap", "cross:4"], r"must be >= 1, got 0"),
    (["inpaint", "{d}/good.npy", "--mask", "{d}/m_short.npy", "-o", "{d}/o.npz"],
     r"mask shape \(31, 32, 32\).*\(32, 32, 32\)"),
    (["inpaint", "{d}/good.npy", "--mask", "{d}/m_all.npy", "-o", "{d}/o.npz", "--method", "biharmonic"],
     r"every voxel"),
    (["inpaint", "{d}/good.npy", "-o", "{d}/o.npz", "--gap", "cross:x"], r"'cross:x'.*'x'"),
    (["inpaint", "{d}/good.npy", "-o", "{d}/o.npz", "--gap", "cross:40"], r"gap width 40 exceeds"),
    (["inpaint", "{d}/good.npy", "-o", "{d}/o.npz", "--gap", "vertical:26", "--weights", "{w}"],
     r"gap band of 26 pixels"),
    (["inpaint", "{d}/good.npy", "-o", "{d}/o.npz", "--detector", "nosuch"], r"unknown detector 'nosuch'"),
    (["inpaint", "{d}/good.npy", "-o", "{d}/o.npz", "--gap", "cross:4", "--method", "cnn"],
     r"unknown method 'cnn'"),
    (["inpaint", "{d}/good.npy", "-o", "{d}/o.npz", "--gap", "cross:4", "--weights", "{d}/none.pt"],
     r"model weights not found: .*none\.pt"),
    (["inpaint", "{d}/good.npy", "-o", "{d}/o.npz", "--gap", "cross:4", "--weights", "{d}/junk.npy"],
     r"cannot load model weights from .*junk\.npy"),
    (["inpaint", "{d}/good.npy", "-o", "{d}/o.npz", "--gap", "cross:4", "--weights", "{w}", "--stride", "0"],
     r"stride must be >= 1, got 0"),
    (["inpaint", "{d}/good.npy", "-o", "{d}/o.txt", "--gap", "cross:4", "--method", "zero"],
     r"unsupported file suffix '\.txt'"),
    (["inpaint", "{d}/good.npy", "-o", "{d}/good.npz", "--gap", "cross:4", "--method", "zero", "--key", "x"],
     r"key='x' does not apply"),
    (["inpaint", "{d}/good.npy", "-o", "{d}/nodir/o.npz", "--gap", "cross:4", "--method", "zero"],
     r"directory .*nodir does not exist"),
    (["bcdi", "{d}/junk.npy"], r"cannot read .*junk\.npy"),
    (["bcdi", "{d}/good.npy"], r"without a mask"),
    (["bcdi", "{d}/good.npy", "{d}/m_short.npy"], r"mask shape \(31, 32, 32\)"),
    (["bcdi", "{d}/good.npy", "{d}/m_all.npy", "--method", "biharmonic"], r"every voxel"),
    (["train", "--config", "{d}/missing.yml"], r"missing\.yml"),
    (["validate", "--object", "{d}/good.npy", "--out", "{d}/v"], r"good\.npy.*key='obj'"),
])
def test_cli_errors(cli_files, weights_file, capsys, argv, match):
    argv = [a.format(d=cli_files, w=weights_file) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bcdi-gapfill {argv[0]}: error: ") and "Traceback" not in err
    assert re.search(match, err), err
    assert not (cli_files / "o.npz").exists()  # nothing written on error


def test_cli_never_writes_over_its_input(cli_files, capsys):
    source = cli_files / "input.npz"
    gio.save_array(source, np.load(cli_files / "good.npy"), overwrite=True)
    before = source.read_bytes()
    argv = ["inpaint", str(source), "-o", str(source), "--gap", "cross:4", "--method", "zero", "--overwrite"]
    assert main(argv) == 2
    assert re.search(r"refusing to write .*input\.npz: it is the protected input", capsys.readouterr().err)
    assert source.read_bytes() == before
    assert not [p for p in os.listdir(cli_files) if p.endswith(".part")]


# -------------------------------------------------------------------- file reader fuzzing

@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Raw bytes of a valid file of each format, holding a 6^3 array and its mask."""
    d = tmp_path_factory.mktemp("pristine")
    a = (np.arange(6 ** 3) % 7).astype(np.float32).reshape(6, 6, 6)
    gio.save_array(d / "x.npy", a)
    gio.save_array(d / "x.npz", a, mask=a > 3)
    gio.save_array(d / "x.h5", a, mask=a > 3)
    gio.save_array(d / "x.cxi", a, mask=a > 3)
    with open(d / "u.npz", "wb") as fh:  # uncompressed: flips reach the .npy headers inside
        np.savez(fh, data=a, mask=a > 3)
    raws = {s: (d / f"x{s}").read_bytes() for s in (".npy", ".npz", ".h5", ".cxi")}
    raws["u.npz"] = (d / "u.npz").read_bytes()
    return raws


def _read_all(path):
    """Both readers either succeed or raise ValueError/FileNotFoundError naming the path."""
    for reader in (gio.load_array, gio.load_data_and_mask):
        try:
            reader(path)
        except (ValueError, FileNotFoundError) as exc:
            assert str(path) in str(exc), str(exc)


@settings(max_examples=150, **HYPO)
@given(fmt=st.sampled_from([".npy", ".npz", ".h5", ".cxi", "u.npz"]), data=st.data())
def test_fuzz_readers_byte_flips(tmp_path, pristine, fmt, data):
    raw = bytearray(pristine[fmt])
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)),
                               min_size=1, max_size=4))
    for pos, xor in flips:
        raw[pos] ^= xor
    path = tmp_path / f"flipped{fmt[-4:]}"
    path.write_bytes(bytes(raw))
    _read_all(path)


@settings(max_examples=60, **HYPO)
@given(fmt=st.sampled_from([".npy", ".npz", ".h5", ".cxi", "u.npz"]), data=st.data())
def test_fuzz_readers_truncated(tmp_path, pristine, fmt, data):
    raw = pristine[fmt]
    cut = data.draw(st.integers(0, len(raw) - 1))
    path = tmp_path / f"cut{fmt[-4:]}"
    path.write_bytes(raw[:cut])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        gio.load_array(path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        gio.load_data_and_mask(path)


@settings(max_examples=30, **HYPO)
@given(suffix=st.sampled_from([".npy", ".npz", ".h5", ".hdf5", ".cxi"]),
       blob=st.binary(min_size=0, max_size=600))
def test_fuzz_readers_random_bytes(tmp_path, suffix, blob):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(blob)
    _read_all(path)


def test_reader_special_files(tmp_path, pristine):
    def refused(path, match=""):
        for reader in (gio.load_array, gio.load_data_and_mask):
            with pytest.raises(ValueError, match=re.escape(str(path)) + match):
                reader(path)

    for suffix in (".npy", ".npz", ".h5", ".cxi"):
        (tmp_path / f"zero{suffix}").write_bytes(b"")
        refused(tmp_path / f"zero{suffix}")
    # the contents of another format under a suffix
    for contents, suffix in [(".h5", ".npy"), (".npy", ".h5"), (".npz", ".npy"), (".npy", ".npz"),
                             (".h5", ".npz"), (".npz", ".cxi")]:
        path = tmp_path / f"{contents[1:]}_as{suffix}"
        path.write_bytes(pristine[contents])
        refused(path)
    # npz members that are not arrays
    path = tmp_path / "text_member.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data.txt", "not an array")
    refused(path, r".*'data\.txt' is not a numpy array \(got bytes\)")
    path = tmp_path / "bare_member.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data", "not an array")
    refused(path, r".*not a numpy array")
    path = tmp_path / "pickled.npz"
    np.savez(path, data=np.array([{"a": 1}], dtype=object))
    refused(path, r".*allow_pickle")
    path = tmp_path / "strings.npz"
    np.savez(path, data=np.full((2, 2, 2), "abc"))
    refused(path, r".*dtype <U3, not a numeric array")
    path = tmp_path / "strings.npy"
    np.save(path, np.full((2, 2, 2), "abc"))
    refused(path, r".*dtype <U3, not a numeric array")
    # a .npy header declaring an array of exabytes
    path = tmp_path / "huge.npy"
    header = pyio.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (10 ** 6, 10 ** 6, 10 ** 6)})
    path.write_bytes(header.getvalue() + bytes(64))
    refused(path)
    # HDF5 files without a usable dataset
    path = tmp_path / "nothing.h5"
    h5py.File(path, "w").close()
    refused(path, r".*holds the datasets: none")
    path = tmp_path / "group.h5"
    with h5py.File(path, "w") as h5:
        h5.create_group("data")
    refused(path)
    path = tmp_path / "text.h5"
    with h5py.File(path, "w") as h5:
        h5["data"] = "hello"
    refused(path, r".*not a numeric array")
    path = tmp_path / "dangling.cxi"
    with h5py.File(path, "w") as h5:
        h5["entry_1/data_1/data"] = h5py.SoftLink("/nowhere")
    refused(path)
    # a directory and a missing file
    (tmp_path / "dir.npy").mkdir()
    refused(tmp_path / "dir.npy", " is a directory")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing.h5"))):
        gio.load_array(tmp_path / "missing.h5")


# ------------------------------------------------------------------ killed training run

TRAIN_MODEL = {"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4], "prefill": "zero", "head": "sigmoid"}


def test_training_killed_with_sigkill_resumes(tmp_path, tiny_bank, capsys):
    from bcdi_gapfill.nn.train import TrainConfig, train

    bank = tmp_path / "bank.h5"
    tiny_bank.save(bank)
    base = dict(out_dir=str(tmp_path / "run"), model=TRAIN_MODEL, train_data=[str(bank)], batch_size=4,
                epochs=1000, checkpoint_every=2, cache_dir=None, num_threads=1, widths=[6],
                cross_probability=0.0)
    code = ("import json, sys\nfrom bcdi_gapfill.nn.train import TrainConfig, train\n"
            "train(TrainConfig(**json.loads(sys.argv[1])), progress=False)\n")
    log = open(tmp_path / "train.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps({**base, "max_steps": 100_000})],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log, stderr=subprocess.STDOUT)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    deadline = time.monotonic() + 600
    try:
        while not ckpt.exists():
            assert proc.poll() is None, f"training ended: {(tmp_path / 'train.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint after 600 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL

    # the checkpoint on disk is complete (written to a temporary name, then renamed)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert {"model", "optimiser", "scheduler", "state", "torch_rng", "loader_rng"} <= set(saved)
    step = saved["state"]["step"]
    assert step >= 2 and step % 2 == 0
    build_model(TRAIN_MODEL).load_state_dict(saved["model"])

    capsys.readouterr()
    metrics = train(TrainConfig(**base, max_steps=step + 2), progress=False)
    assert f"resuming from {ckpt} at step {step}" in capsys.readouterr().out
    assert metrics["step"] == step + 2
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["state"]["step"] == step + 2


def test_checkpoint_write_failure_keeps_the_previous_one(tmp_path, monkeypatch):
    from bcdi_gapfill.nn.train import _atomic_torch_save

    path = tmp_path / "checkpoint.pt"
    _atomic_torch_save({"state": {"step": 4}}, path)

    def dies_half_way(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="simulated"):
        _atomic_torch_save({"state": {"step": 6}}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["state"]["step"] == 4


# ---------------------------------------------------------------------- reproducibility

def _band_scene():
    """A band through the whole array: all 6 windows share one gap mask."""
    shape = (40, 48, 40)
    data = np.random.default_rng(3).poisson(30, shape).astype(np.float32)
    gap = np.zeros(shape, bool)
    gap[:, :, 18:22] = True
    return data, gap


def test_inpaint_bit_identical_on_repeat(net):
    data, gap = _band_scene()
    for kwargs in ({}, {"flips": True, "return_uncertainty": True}):
        a = inpaint(data, gap, model=net, device="cpu", **kwargs)
        b = inpaint(data, gap, model=net, device="cpu", **kwargs)
        for x, y in zip(*((a, b) if isinstance(a, tuple) else ((a,), (b,)))):
            assert np.array_equal(x.view(np.uint32), y.view(np.uint32))


def _cross_scene():
    """Two crossing bands: windows with several different gap masks, some of them unique."""
    shape = (40, 40, 40)
    data = np.random.default_rng(4).poisson(30, shape).astype(np.float32)
    gap = np.zeros(shape, bool)
    gap[:, 18:21, :] = True
    gap[:, :, 10:13] = True
    gap[5, 30, 33] = True  # a dead pixel
    return data, gap


def _assert_same_fill(out, ref, gap):
    """Measured voxels bit for bit; gap voxels to float32 rounding.

    oneDNN picks its convolution kernels by batch size, so batches of 1 or 3 windows round a
    few gap voxels differently from batches of 2 or 4 (2e-6 relative measured with this net);
    a window mixed up or misplaced would differ by its whole correction.
    """
    assert np.array_equal(out[~gap].view(np.uint32), ref[~gap].view(np.uint32))
    np.testing.assert_allclose(out[gap], ref[gap], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scene", [_band_scene, _cross_scene])
def test_inpaint_identical_across_batch_sizes(net, scene):
    """Batch size is a speed setting only: the same windows give the same fill in any batching
    (and so when the memory check shrinks the batch)."""
    from bcdi_gapfill.fill.inpainting import plan_windows
    data, gap = scene()
    n_windows = len(plan_windows(gap, 32, 8))
    assert n_windows >= 6
    ref = inpaint(data, gap, model=net, device="cpu", batch_size=n_windows)
    for batch_size in (1, 2, 3, 4):
        out = inpaint(data, gap, model=net, device="cpu", batch_size=batch_size)
        _assert_same_fill(out, ref, gap)


# ------------------------------------------------------------------------------- memory

def test_estimate_memory_grows_with_the_job():
    small = estimate_memory((32, 32, 32), 1000)
    big = estimate_memory((512, 512, 512), 10 ** 6)
    assert big["arrays"] > 100 * small["arrays"] and small["total"] == small["arrays"] + small["batch"]
    plain = estimate_memory((64,) * 3, 10)
    assert estimate_memory((64,) * 3, 10, return_uncertainty=True)["arrays"] > plain["arrays"]
    assert estimate_memory((64,) * 3, 10, flips=True)["batch"] > plain["batch"]
    # The whole array's fill (prefill="global") is freed before the batches: the larger counts.
    huge = estimate_memory((512,) * 3, 3 * 10 ** 6)
    assert huge["prefill"] > huge["batch"] and huge["total"] == huge["arrays"] + huge["prefill"]
    assert estimate_memory((512,) * 3, 3 * 10 ** 6, prefill="window")["prefill"] == 0


def test_memory_check_names_the_global_fill(monkeypatch):
    import bcdi_gapfill.fill.inpainting as inp

    data, gap = _band_scene()

    def no_allocation(*args, **kwargs):
        raise AssertionError("the model ran although the job does not fit")

    monkeypatch.setattr(inp, "_inpaint_model", no_allocation)
    with pytest.raises(MemoryError, match="whole array's biharmonic fill.*prefill='window'"):
        inpaint(data, gap, model="absent.pt", device="cpu", memory_limit=2 ** 20)


def test_memory_check_refuses_before_allocating(monkeypatch, tmp_path):
    import bcdi_gapfill.fill.inpainting as inp

    monkeypatch.setattr(inp, "_available_memory", lambda: 2 ** 20)  # a 1 MiB machine
    data, gap = _band_scene()

    def no_allocation(*args, **kwargs):
        raise AssertionError("the model ran although the job does not fit")

    monkeypatch.setattr(inp, "_inpaint_model", no_allocation)
    # the check comes before the weights are even looked at
    with pytest.raises(MemoryError, match=r"40x48x40 array with 7680 gap voxels needs .* available") as info:
        inpaint(data, gap, model=tmp_path / "absent.pt", device="cpu")
    assert isinstance(info.value, ValueError)  # so every public edge reports it as bad input
    with pytest.raises(MemoryError, match="is available"):
        inpaint(data, gap, model=tmp_path / "absent.pt", device="cpu", memory_limit=2 ** 20)


def test_memory_check_shrinks_the_batch(net):
    data, gap = _band_scene()
    need = estimate_memory(data.shape, int(gap.sum()), batch_size=2)["total"]
    with pytest.warns(RuntimeWarning, match="batch_size reduced from 16 to 2"):
        out = inpaint(data, gap, model=net, device="cpu", batch_size=16, memory_limit=need)
    assert np.isfinite(out).all()


def test_memory_error_at_the_cli(monkeypatch, cli_files, weights_file, capsys):
    import bcdi_gapfill.fill.inpainting as inp

    monkeypatch.setattr(inp, "_available_memory", lambda: 2 ** 20)
    out = cli_files / "mem.npz"
    rc = main(["inpaint", str(cli_files / "good.npy"), "-o", str(out), "--gap", "cross:4",
               "--weights", str(weights_file)])
    err = capsys.readouterr().err
    assert rc == 2 and "is available" in err and "Traceback" not in err and not out.exists()


# ----------------------------------------------------------- out of memory on the device

def _forward_with_memory_of(limit, error):
    """PatchUNet.forward that fails as an out-of-memory device would for batches above ``limit``."""
    from bcdi_gapfill.nn.model import PatchUNet

    forward = PatchUNet.forward
    seen = []

    def limited(self, x, *args, **kwargs):
        seen.append(int(x.shape[0]))
        if x.shape[0] > limit:
            raise error
        return forward(self, x, *args, **kwargs)

    return limited, seen


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)"),
    RuntimeError("CUDA error: out of memory (simulated)"),
], ids=["OutOfMemoryError", "RuntimeError"])
def test_out_of_memory_halves_the_batch_and_keeps_the_fill(net, monkeypatch, error):
    """A batch that does not fit is halved and its windows retried; the result is the same fill."""
    from bcdi_gapfill.nn.model import PatchUNet
    data, gap = _cross_scene()
    before = data.copy()
    ref = inpaint(data, gap, model=net, device="cpu", batch_size=8, flips=True)
    limited, seen = _forward_with_memory_of(3, error)
    monkeypatch.setattr(PatchUNet, "forward", limited)
    info = {}
    with pytest.warns(RuntimeWarning) as caught:
        out = inpaint(data, gap, model=net, device="cpu", batch_size=8, flips=True, run_info=info)
    messages = [str(w.message) for w in caught if "out of memory" in str(w.message)]
    assert messages == [f"out of memory on cpu with {n} windows per batch; retrying with batch_size {n // 2}"
                        for n in (8, 4)]
    assert info["batch_size"] == 2 and info["n_windows"] > 8 and max(seen) == 8
    _assert_same_fill(out, ref, gap)
    assert np.array_equal(data, before)


def test_out_of_memory_with_one_window_is_a_clear_memory_error(net, monkeypatch):
    from bcdi_gapfill.nn.model import PatchUNet
    data, gap = _band_scene()
    limited, _ = _forward_with_memory_of(0, torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)"))
    monkeypatch.setattr(PatchUNet, "forward", limited)
    with pytest.warns(RuntimeWarning, match="retrying with batch_size 1"):
        with pytest.raises(MemoryError, match=r"40x48x40 array even with one 32\^3 window per batch "
                                              r"\(CUDA out of memory \(simulated\)\).*device='cpu'.*crops"):
            inpaint(data, gap, model=net, device="cpu", batch_size=2)


def test_other_runtime_errors_are_not_taken_for_out_of_memory(net, monkeypatch):
    from bcdi_gapfill.nn.model import PatchUNet
    data, gap = _band_scene()
    limited, seen = _forward_with_memory_of(0, RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"))
    monkeypatch.setattr(PatchUNet, "forward", limited)
    with pytest.raises(RuntimeError, match="CUDNN_STATUS_NOT_SUPPORTED"):
        inpaint(data, gap, model=net, device="cpu", batch_size=4)
    assert seen == [4]  # not retried


def test_cli_records_the_batch_size_used(monkeypatch, tmp_path, weights_file, capsys):
    from bcdi_gapfill.nn.model import PatchUNet
    data, gap = _band_scene()
    source = tmp_path / "band.npz"
    gio.save_array(source, data, mask=gap.astype(np.int8))
    limited, _ = _forward_with_memory_of(2, torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)"))
    monkeypatch.setattr(PatchUNet, "forward", limited)
    out = tmp_path / "oom.npz"
    with pytest.warns(RuntimeWarning, match="with 4 windows per batch; retrying with batch_size 2"):
        assert main(["inpaint", str(source), "-o", str(out), "--weights", str(weights_file), "--device", "cpu",
                     "--batch-size", "4", "--stride", "8"]) == 0
    assert "batch size 2 ->" in capsys.readouterr().out
    record = gio.load_metadata(out)
    assert record["batch_size"] == 2 and record["device"] == "cpu" and record["windows"] == 6
    assert record["weights_sha256"] == gio.file_sha256(weights_file)
    stored = json.loads(str(np.load(tmp_path / "oom_gapfill_record.npz")["metadata"]))
    assert stored["batch_size"] == 2


# ------------------------------------------------ the gap-width limit of a loaded model object

def test_model_object_from_load_model_keeps_the_card_limit(tmp_path, net):
    from bcdi_gapfill.fill.inpainting import load_model
    path = tmp_path / "carded.pt"
    torch.save({"config": net.config.to_dict(), "state_dict": net.state_dict()}, path)
    path.with_suffix(".json").write_text(json.dumps({"sha256": gio.file_sha256(path), "max_gap_width": 6}))
    data = _ones(shape=(40, 40, 40))
    gap = np.zeros(data.shape, bool)
    gap[:, :, 16:24] = True  # an 8-pixel band: within the window's 24, beyond the card's 6
    loaded, info = load_model(path, "cpu")
    assert info["max_gap_width"] == 6 and loaded.gapfill_info["max_gap_width"] == 6
    for model in (path, loaded):
        with pytest.raises(ValueError, match=r"gap band of 8 pixels.*wider than the model serves \(6\)"):
            inpaint(data, gap, model=model, device="cpu")
    run_info = {}
    inpaint(data, gap, model=net, device="cpu", run_info=run_info)  # no card: the window's limit
    assert run_info["max_gap_width"] == 24


def test_shipped_model_object_keeps_the_card_limit():
    from bcdi_gapfill.fill.inpainting import DEFAULT_WEIGHTS, load_model
    card = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    width = card["max_gap_width"] + 2
    data = _ones(shape=(40, 40, 40))
    gap = np.zeros(data.shape, bool)
    gap[:, :, 10:10 + width] = True
    for model in (None, load_model(None, "cpu")[0]):
        with pytest.raises(ValueError, match=rf"gap band of {width} pixels.*serves \({card['max_gap_width']}\)"):
            inpaint(data, gap, model=model, device="cpu")


# ------------------------------------------- the command line reports every user error in one line

def _raiser(exc):
    def command(args):
        raise exc
    return command


@pytest.mark.parametrize("exc, match", [
    (NotADirectoryError("out exists and is not a directory"), r"out exists and is not a directory"),
    (IsADirectoryError(21, "Is a directory", "cfg"), r"\[Errno 21\] Is a directory: 'cfg'"),
    (PermissionError(13, "Permission denied", "/data/S1.npz"), r"Permission denied: '/data/S1.npz'"),
    (OSError(28, "No space left on device"), r"No space left on device"),
    (ImportError("backend='pynx' needs ESRF's PyNX"), r"needs ESRF's PyNX"),
    (MemoryError(), r"out of memory \(MemoryError\)"),
    (MemoryError("Unable to allocate 12.0 GiB"), r"Unable to allocate 12\.0 GiB"),
])
def test_cli_reports_file_import_and_memory_errors(monkeypatch, capsys, exc, match):
    import bcdi_gapfill.cli.commands as cli
    monkeypatch.setattr(cli, "_cmd_demo", _raiser(exc))
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bcdi-gapfill demo: error: ") and "Traceback" not in err
    assert re.search(match, err), err


def test_cli_reports_the_package_errors(monkeypatch, capsys):
    import bcdi_gapfill.cli.commands as cli
    from bcdi_gapfill.fill.inpainting import InsufficientMemoryError
    from bcdi_gapfill.phasing.engine import SupportError
    for exc in (SupportError("every start lost its support; try a lower shrink-wrap threshold"),
                InsufficientMemoryError("needs about 12 GiB")):
        monkeypatch.setattr(cli, "_cmd_validate", _raiser(exc))
        assert main(["validate", "--simulate", "0", "--out", "x"]) == 2
        err = capsys.readouterr().err
        assert err == f"bcdi-gapfill validate: error: {exc}\n"


def test_cli_keeps_the_traceback_of_a_bug(monkeypatch):
    import bcdi_gapfill.cli.commands as cli
    monkeypatch.setattr(cli, "_cmd_demo", _raiser(KeyError("a bug")))
    with pytest.raises(KeyError):
        main(["demo"])


def test_cli_real_directory_errors(tmp_path, capsys):
    """What the library raises on a directory where a file is expected, through the real commands."""
    assert main(["train", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bcdi-gapfill train: error: ") and "Is a directory" in err
    blocker = tmp_path / "report_here"
    blocker.write_text("not a directory")
    assert main(["validate", "--simulate", "0", "--size", "16", "--methods", "zero_fill", "--out",
                 str(blocker)]) == 2
    err = capsys.readouterr().err  # after validate's progress bar
    assert err.splitlines()[-1] == f"bcdi-gapfill validate: error: {blocker} exists and is not a directory"
    assert "Traceback" not in err


def test_cli_error_from_the_entry_point_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bcdi_gapfill.cli", "train", "--config", str(tmp_path)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("bcdi-gapfill train: error: ") and "Traceback" not in proc.stderr
