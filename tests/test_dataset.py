import numpy as np
import pytest
import torch

from bcdi_gapfill.nn.dataset import (GapPortionDataset, MIN_SCALE, PortionBank, choose_portions, log_denormalise,
                                  log_normalise, peak_portion_corners, portion_gap_mask)


def test_log_normalise_round_trip_numpy_and_torch():
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.uniform(0, 300, (3, 32, 32, 32))).astype(np.float32)
    gap = np.zeros_like(counts, bool)
    gap[..., 14:20] = True
    log_norm, scale = log_normalise(counts, gap)
    assert log_norm.shape == counts.shape and scale.shape == (3,)
    assert log_norm.min() >= 0 and log_norm.max() == pytest.approx(1.0)
    assert np.all(log_norm[gap] == 0)
    back = log_denormalise(log_norm, scale)
    np.testing.assert_allclose(back[~gap], counts[~gap], rtol=1e-4, atol=1e-3)
    t_norm, t_scale = log_normalise(torch.from_numpy(counts), torch.from_numpy(gap))
    np.testing.assert_allclose(t_norm.numpy(), log_norm, rtol=1e-6)
    np.testing.assert_allclose(log_denormalise(t_norm, t_scale).numpy(), back, rtol=1e-4, atol=1e-3)


def test_normalisation_ignores_gap_content():
    counts = np.ones((32, 32, 32), np.float32) * 5
    gap = np.zeros_like(counts, bool)
    gap[:, :, 10:16] = True
    a, sa = log_normalise(counts, gap)
    counts2 = counts.copy()
    counts2[gap] = 1e6  # whatever is in the gap must not change the scale
    b, sb = log_normalise(counts2, gap)
    assert sa == sb and np.array_equal(a, b)


def test_empty_portion_has_minimum_scale():
    log_norm, scale = log_normalise(np.zeros((32, 32, 32), np.float32), np.zeros((32, 32, 32), bool))
    assert float(scale) == pytest.approx(MIN_SCALE) and not log_norm.any()


def test_choose_portions_never_empty_and_prefers_periphery():
    from bcdi_gapfill.core.simulate import simulate_pattern
    counts = simulate_pattern(128, 4, peak_counts=1e6, oversampling=3.0).counts
    corners = choose_portions(counts, 30, np.random.default_rng(0))
    assert len(corners) == 30
    means = []
    for f, r, c in corners:
        block = counts[f:f + 32, r:r + 32, c:c + 32]
        assert block.shape == (32, 32, 32) and (block > 0).mean() >= 0.02
        means.append(block.mean())
    # The periphery weighting makes the picked portions dimmer than non-empty uniform ones.
    uniform = [b.mean() for b in (counts[f:f + 32, r:r + 32, c:c + 32]
                                  for f, r, c in np.random.default_rng(1).integers(0, 97, (400, 3)))
               if (b > 0).mean() >= 0.02]
    assert np.median(means) < np.median(uniform)


def test_peak_portion_corners_centre_near_the_peak_and_stay_inside():
    intensity = np.zeros((64, 80, 96))
    intensity[40, 10, 70] = 5.0  # near an edge: windows must be clipped, not shifted out
    corners = peak_portion_corners(intensity, 200, np.random.default_rng(0), radius=12)
    assert len(corners) == 200
    for f, r, c in corners:
        assert 0 <= f <= 32 and 0 <= r <= 48 and 0 <= c <= 64
        # Unclipped axes: the window centre is within the radius of the peak.
        assert abs(f + 16 - 40) <= 12 and abs(c + 16 - 70) <= 12
    rows = {r for _, r, _ in corners}
    assert 0 in rows and rows <= set(range(7))  # row 10 - 16 + (-12..12), clipped at 0
    assert len({f for f, _, _ in corners}) > 10  # and the offsets do vary
    with pytest.raises(ValueError, match="smaller than"):
        peak_portion_corners(np.ones((16, 64, 64)), 3, np.random.default_rng(0))


def test_peak_bank_is_cached_apart(tmp_path):
    from bcdi_gapfill.nn.dataset import build_portion_bank, cached_portion_bank
    peak = cached_portion_bank(2, 5, 64, tmp_path, workers=1, portions_per_pattern=6, placement="peak")
    periphery = cached_portion_bank(2, 5, 64, tmp_path, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim_64_5_2.h5", "sim_64_5_2_peak6.h5"]
    assert len(peak) == 12
    again = cached_portion_bank(2, 5, 64, tmp_path, portions_per_pattern=6, placement="peak")
    assert np.array_equal(again.log_counts, peak.log_counts)
    assert not np.array_equal(peak.log_counts[:6], periphery.log_counts[:6])
    with pytest.raises(ValueError, match="placement"):
        build_portion_bank(1, size=64, placement="middle")


def test_centre_placement_puts_the_peak_under_the_portion_gap_band():
    from bcdi_gapfill.nn.dataset import CENTRE_RADIUS, portion_gap_mask
    from bcdi_gapfill.core.simulate import simulate_pattern
    pattern = simulate_pattern(64, 4)
    peak = np.array(np.unravel_index(np.argmax(pattern.expected), pattern.expected.shape))
    corners = peak_portion_corners(pattern.expected, 100, np.random.default_rng(1), radius=CENTRE_RADIUS)
    offsets = np.array([peak - np.array(c) - 16 for c in corners])
    inside = [(peak >= c) & (peak < np.array(c) + 32) for c in corners]
    assert all(i.all() for i in inside)
    # Across the band (columns) the peak is at most 4 voxels from the window's centre (column
    # 16), so a 12-px band (columns 10..21) always covers it; narrower bands cover it on some
    # portions and pass beside it on the others.
    assert np.abs(offsets[:, 2]).max() <= 4 and np.abs(offsets[:, :2]).max() > 4
    band = np.flatnonzero(portion_gap_mask(12, np.random.default_rng(0), cross_probability=0)[0, 0])
    assert all(band[0] <= peak[2] - c[2] <= band[-1] for c in corners)


def test_banks_of_larger_windows_are_cached_apart_and_get_their_own_gaps(tmp_path):
    from bcdi_gapfill.nn.dataset import cached_portion_bank
    bank = cached_portion_bank(1, 5, 64, tmp_path, workers=1, portions_per_pattern=3, placement="centre", window=48)
    assert [p.name for p in tmp_path.iterdir()] == ["sim_64_5_1_centre3_w48.h5"]
    assert bank.log_counts.shape == (3, 48, 48, 48)
    inputs, target, gap = GapPortionDataset(bank, [9], cross_probability=0, augment=False, fixed=True)[0]
    assert inputs.shape == (2, 48, 48, 48) and gap.shape == (1, 48, 48, 48)
    # the band in the middle of the 48-voxel window: columns 19..27
    assert np.flatnonzero(gap[0, 0, 0].numpy()).tolist() == list(range(19, 28))


def test_target_cap_lets_a_hidden_peak_rise_above_the_window_maximum():
    log_expected = np.zeros((1, 32, 32, 32), np.float16)
    log_expected[0, 16, 16, :] = 8.0   # the peak column, inside the central band
    log_expected[0, 16, 16, :10] = 4.0  # what the window still measures (the band is columns 10..21)
    log_expected[0, 16, 16, 22:] = 4.0
    bank = PortionBank(log_expected, log_expected, np.ones(1, np.float32), np.full(1, 3.0, np.float32))
    capped = GapPortionDataset(bank, [12], cross_probability=0, augment=False, fixed=True)[0][1]
    raised = GapPortionDataset(bank, [12], cross_probability=0, augment=False, fixed=True, target_cap=1.6)[0][1]
    assert float(capped.max()) == 1.0 and float(raised.max()) == pytest.approx(1.6)


def test_choose_portions_refuses_small_arrays():
    with pytest.raises(ValueError, match="smaller than"):
        choose_portions(np.ones((16, 64, 64)), 3, np.random.default_rng(0))


@pytest.mark.parametrize("width", [3, 6, 9, 12])
def test_portion_gap_mask_centred_band(width):
    gap = portion_gap_mask(width, np.random.default_rng(0), cross_probability=0.0)
    cols = np.nonzero(gap.all(axis=(0, 1)))[0]
    assert len(cols) == width and gap.sum() == 32 * 32 * width
    assert abs((cols[0] + cols[-1]) / 2 - 15.5) <= 0.5


def test_portion_gap_mask_cross():
    gap = portion_gap_mask(6, np.random.default_rng(0), cross_probability=1.0)
    assert gap.all(axis=(0, 1)).sum() == 6 and gap.all(axis=(0, 2)).sum() == 6


def test_gap_portion_dataset_items(tiny_bank):
    ds = GapPortionDataset(tiny_bank, (3, 6), fixed=True, augment=True, seed=3)
    inputs, target, gap = ds[2]
    assert inputs.shape == (2, 32, 32, 32) and target.shape == (1, 32, 32, 32) and gap.dtype == torch.bool
    assert torch.equal(inputs[1] > 0.5, gap[0])
    assert torch.all(inputs[0][gap[0]] == 0)
    assert 0 <= float(target.min()) and float(target.max()) <= 1
    again = ds[2]
    assert all(torch.equal(a, b) for a, b in zip((inputs, target, gap), again))  # fixed: reproducible


def test_portion_bank_save_load(tmp_path, tiny_bank):
    tiny_bank.save(tmp_path / "bank.h5")
    loaded = PortionBank.load(tmp_path / "bank.h5")
    assert len(loaded) == len(tiny_bank)
    assert np.array_equal(loaded.log_counts, tiny_bank.log_counts)
