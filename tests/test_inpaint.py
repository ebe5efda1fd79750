import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from bcdi_gapfill.core.geometry import synthetic_gap_mask
from bcdi_gapfill.fill.inpainting import inpaint, load_model, plan_windows
from bcdi_gapfill.nn.model import build_model

SMALL = {"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4], "prefill_iterations": 20}


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    # Give the residual head non-zero weights so the network's correction matters in the tests.
    with torch.no_grad():
        model.head.weight.normal_(0, 0.05)
    return model


def _covered(gap, origins, window=32):
    cover = np.zeros_like(gap)
    for f, r, c in origins:
        cover[f:f + window, r:r + window, c:c + window] = True
    return cover


@pytest.mark.parametrize("kind,width,pos", [("vertical", 6, 0), ("horizontal", 3, 61), ("cross", 9, 30),
                                            ("cross", 12, 52), ("vertical", 6, 58)])
def test_windows_cover_every_gap_voxel(kind, width, pos):
    shape = (40, 64, 70)
    gap = synthetic_gap_mask(shape, kind, width, position=min(pos, shape[2] - width),
                             **({"position2": min(pos, shape[1] - width)} if kind == "cross" else {}))
    origins = plan_windows(gap, 32, 8)
    assert np.all(_covered(gap, origins)[gap])
    for o in origins:  # every window lies inside the array
        assert all(0 <= o[a] <= shape[a] - 32 for a in range(3))


def test_windows_cover_several_gaps_and_scattered_pixels():
    shape = (33, 80, 96)
    gap = synthetic_gap_mask(shape, "vertical", 4, position=10) | synthetic_gap_mask(shape, "vertical", 6, position=70)
    rng = np.random.default_rng(0)
    gap[tuple(rng.integers(0, s, 40) for s in shape)] = True
    origins = plan_windows(gap, 32, 16)
    assert np.all(_covered(gap, origins)[gap])


@settings(max_examples=25, deadline=None)
@given(st.tuples(st.integers(32, 50), st.integers(32, 60), st.integers(32, 60)), st.integers(1, 40),
       st.integers(1, 32), st.integers(0, 2**31 - 1))
def test_windows_cover_random_masks(shape, n_voxels, stride, seed):
    rng = np.random.default_rng(seed)
    gap = np.zeros(shape, bool)
    gap[tuple(rng.integers(0, s, n_voxels) for s in shape)] = True
    assert np.all(_covered(gap, plan_windows(gap, 32, stride))[gap])


def test_band_centred_windows_slide_along_the_gap():
    gap = synthetic_gap_mask((64, 64, 64), "vertical", 6, position=20)
    origins = plan_windows(gap, 32, 8)
    assert {o[2] for o in origins} == {20 + 3 - 16}
    assert sorted({o[1] for o in origins}) == [0, 8, 16, 24, 32]


def test_inpaint_contract(small_model, small_pattern):
    data = small_pattern.counts.copy()
    gap = synthetic_gap_mask(data.shape, "cross", 6)
    before, gap_before = data.copy(), gap.copy()
    filled, unc = inpaint(data, gap, model=small_model, return_uncertainty=True, flips=True)
    assert filled.dtype == np.float32 and filled.shape == data.shape
    assert np.array_equal(filled[~gap], data[~gap])  # measured voxels bit-identical
    assert np.isfinite(filled).all() and (filled >= 0).all()
    assert np.array_equal(data, before) and np.array_equal(gap, gap_before)  # caller's arrays untouched
    assert unc.shape == data.shape and np.all(unc[~gap] == 0) and np.all(unc[gap] >= 0) and unc[gap].max() > 0


def test_inpaint_integer_input_and_no_gap(small_model):
    data = np.random.default_rng(0).poisson(3, (32, 40, 36)).astype(np.uint16)
    out = inpaint(data, np.zeros(data.shape, bool), model=small_model)
    assert out.dtype == np.float32 and np.array_equal(out, data.astype(np.float32))


def test_uncertainty_zero_where_a_single_prediction_covers():
    model = build_model(SMALL).eval()
    data = np.random.default_rng(1).poisson(5, (32, 32, 32)).astype(np.float32)
    gap = synthetic_gap_mask(data.shape, "vertical", 4)
    _, unc = inpaint(data, gap, model=model, return_uncertainty=True)  # one window, no flips
    assert np.all(unc == 0)


def test_global_prefill_is_the_whole_arrays_biharmonic_fill_when_the_correction_is_zero(small_pattern):
    """He init zeroes the residual head: the network returns its base, so in the gap the
    result is the log-biharmonic fill of the whole array (global) or of each window."""
    from bcdi_gapfill.fill.classical import fill_gap
    model = build_model(SMALL).eval()
    data = small_pattern.counts
    gap = synthetic_gap_mask(data.shape, "cross", 9)
    info: dict = {}
    filled = inpaint(data, gap, model=model, run_info=info)
    assert info["prefill"] == "global"
    expected = fill_gap(data, gap, method="biharmonic", log=True)
    np.testing.assert_allclose(np.log1p(filled[gap]), np.log1p(expected[gap]), atol=1e-4)
    windowed = inpaint(data, gap, model=model, prefill="window", run_info=info)
    assert info["prefill"] == "window"
    assert np.abs(np.log1p(windowed[gap]) - np.log1p(expected[gap])).max() > 1e-2
    with pytest.raises(ValueError, match="unknown prefill 'local'"):
        inpaint(data, gap, model=model, prefill="local")


def test_hann_and_mean_blending_agree_with_a_single_window(small_model):
    data = np.random.default_rng(2).poisson(20, (32, 32, 32)).astype(np.float32)
    gap = synthetic_gap_mask(data.shape, "vertical", 6)
    a = inpaint(data, gap, model=small_model, blend="hann")
    b = inpaint(data, gap, model=small_model, blend="mean")
    np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("prefill", ["window", "global"])
def test_fast_path_matches_plain_per_window_path(small_model, small_pattern, prefill):
    """Batched, blended inference equals a plain loop over the same windows, one at a time.

    ``prefill="global"``: each window's base is the whole array's log-biharmonic fill,
    normalised as the window is; ``"window"``: the model computes its own prefill.
    """
    from bcdi_gapfill.fill.classical import fill_gap
    from bcdi_gapfill.nn.dataset import log_normalise
    from bcdi_gapfill.fill.inpainting import _taper
    data = small_pattern.counts
    gap = synthetic_gap_mask(data.shape, "cross", 6)
    fast = inpaint(data, gap, model=small_model, stride=16, batch_size=7, prefill=prefill)
    global_fill = fill_gap(data, gap, method="biharmonic", log=True)
    num = np.zeros(data.shape, np.float64)
    den = np.zeros(data.shape, np.float64)
    taper = _taper(32, "hann")
    with torch.no_grad():
        for f, r, c in plan_windows(gap, 32, 16):
            sl = (slice(f, f + 32), slice(r, r + 32), slice(c, c + 32))
            counts = torch.from_numpy(data[sl].copy())[None]
            g = torch.from_numpy(gap[sl].copy())[None]
            log_norm, scale = log_normalise(counts, g)
            base = None
            if prefill == "global":
                fill = torch.from_numpy(np.log1p(global_fill[sl]))[None] / scale
                base = torch.where(g, fill, log_norm)[:, None]
            out = small_model(torch.stack([log_norm, g.float()], 1), g[:, None], base=base)[0, 0] * scale[0]
            num[sl] += taper * out.numpy()
            den[sl] += taper
    plain = data.astype(np.float32).copy()
    plain[gap] = np.maximum(np.expm1(num[gap] / den[gap]), 0)
    np.testing.assert_allclose(fast, plain, rtol=2e-4, atol=1e-3)


@pytest.mark.parametrize("method", ["biharmonic", "linear", "zero"])
def test_classical_methods_through_inpaint(method, small_pattern):
    gap = synthetic_gap_mask(small_pattern.counts.shape, "vertical", 6)
    out = inpaint(small_pattern.counts, gap, method=method)
    assert np.array_equal(out[~gap], small_pattern.counts[~gap]) and np.isfinite(out).all()


@pytest.mark.parametrize("data,mask,exc,match", [
    (np.full((32, 32, 32), np.nan), np.zeros((32, 32, 32), bool), ValueError, "NaN"),
    (-np.ones((32, 32, 32)), np.zeros((32, 32, 32), bool), ValueError, "negative"),
    (np.ones((32, 32)), np.zeros((32, 32), bool), ValueError, "3D"),
    (np.ones((32, 32, 32, 2)), np.zeros((32, 32, 32, 2), bool), ValueError, "3D"),
    (np.ones((32, 32, 32), complex), np.zeros((32, 32, 32), bool), TypeError, "real numbers"),
    (np.ones((32, 32, 32)), np.zeros((32, 32, 31), bool), ValueError, "does not match"),
    (np.ones((32, 32, 32)), np.zeros((32, 32, 32), int), TypeError, "boolean"),
    (np.ones((32, 32, 32)), np.ones((32, 32, 32), bool), ValueError, "every voxel"),
    (np.ones((0, 32, 32)), np.zeros((0, 32, 32), bool), ValueError, "empty"),
])
def test_bad_input_clear_errors(data, mask, exc, match, small_model):
    with pytest.raises(exc, match=match):
        inpaint(data, mask, model=small_model)


def test_small_array_and_wide_gap_refused(small_model):
    data = np.ones((16, 40, 40))
    gap = np.zeros(data.shape, bool)
    gap[..., 20:22] = True
    with pytest.raises(ValueError, match="smaller than the 32"):
        inpaint(data, gap, model=small_model)
    data = np.ones((32, 64, 64))
    gap = synthetic_gap_mask(data.shape, "vertical", 30)
    with pytest.raises(ValueError, match="wider than the model serves"):
        inpaint(data, gap, model=small_model)


def test_corrupted_weights_file_is_reported(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot load model weights"):
        load_model(bad)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")
