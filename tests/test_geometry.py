"""Tests of bcdi_gapfill.core.geometry: detector layouts against bcdi, masks, gap recovery."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bcdi_gapfill.core import geometry
from bcdi_gapfill.core.geometry import (
    DETECTORS,
    DetectorLayout,
    detector_gap_map,
    detector_gap_mask,
    gap_mask_from_mask,
    gap_width,
    get_detector,
    parse_gap_spec,
    synthetic_gap_mask,
)


def _bcdi_detector(name):
    import bcdi.experiment.detector as detector_module  # a test extra: missing fails, never skips
    return detector_module.create_detector(name=name)


def _bcdi_gap_mask(name):
    """The 2D mask bcdi's own Detector._mask_gaps produces on a blank frame."""
    detector = _bcdi_detector(name)
    data = np.zeros(detector.unbinned_pixel_number)
    mask = np.zeros(detector.unbinned_pixel_number)
    _, mask = detector._mask_gaps(data, mask)
    return mask


# --- layouts ---------------------------------------------------------------------------


def test_maxipix_gap_map_is_exactly_the_6_pixel_cross():
    gap_map = detector_gap_map("Maxipix")
    assert gap_map.shape == (516, 516)
    assert gap_map.dtype == bool
    expected = np.zeros((516, 516), dtype=bool)
    expected[255:261, :] = True
    expected[:, 255:261] = True
    np.testing.assert_array_equal(gap_map, expected)
    assert gap_map.sum() == 2 * 6 * 516 - 6 * 6


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_gap_map_matches_bcdi_mask_gaps(name):
    bcdi_mask = _bcdi_gap_mask(name)
    gap_map = detector_gap_map(name)
    assert gap_map.shape == bcdi_mask.shape
    mismatches = np.argwhere(gap_map != (bcdi_mask != 0))
    assert mismatches.size == 0, f"{name}: {len(mismatches)} pixels differ, first {mismatches[:5]}"


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_layout_shape_and_pixel_size_match_bcdi(name):
    detector = _bcdi_detector(name)
    layout = DETECTORS[name]
    assert layout.shape == tuple(detector.unbinned_pixel_number)
    assert layout.pixel_size_m == pytest.approx(detector.unbinned_pixel_size[0])


def test_get_detector_ignores_case_and_returns_layouts_unchanged():
    assert get_detector("maxipix") is DETECTORS["Maxipix"]
    assert get_detector(" EIGER2M ") is DETECTORS["Eiger2M"]
    custom = DetectorLayout("toy", (8, 8), gap_cols=[(3, 4)])
    assert get_detector(custom) is custom


def test_unknown_detector_names_itself_and_the_known_ones():
    with pytest.raises(ValueError, match="Pilatus300K") as info:
        get_detector("Pilatus300K")
    assert "Maxipix" in str(info.value) and "Eiger4M" in str(info.value)
    with pytest.raises(ValueError, match="Pilatus300K"):
        detector_gap_mask("Pilatus300K", 4)


def test_registry_and_layouts_are_read_only():
    with pytest.raises(TypeError):
        DETECTORS["mine"] = DETECTORS["Maxipix"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        DETECTORS["Maxipix"].shape = (1, 1)  # type: ignore[misc]


def test_user_defined_layout_builds_its_map():
    layout = DetectorLayout(
        "toy", [6, 10], gap_rows=[[1, 2]], gap_cols=[(4, 6)], pixel_size_m=75e-6,
        gap_blocks=[(3, 5, 0, 2)],
    )
    assert layout.shape == (6, 10) and layout.gap_rows == ((1, 2),)
    expected = np.zeros((6, 10), dtype=bool)
    expected[1, :] = True
    expected[:, 4:6] = True
    expected[3:5, 0:2] = True
    np.testing.assert_array_equal(detector_gap_map(layout), expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gap_rows": [(4, 9)]}, "gap_rows range \\(4, 9\\)"),
        ({"gap_cols": [(3, 3)]}, "gap_cols range \\(3, 3\\)"),
        ({"gap_cols": [(-1, 2)]}, "gap_cols range \\(-1, 2\\)"),
        ({"gap_blocks": [(0, 2, 0)]}, "gap block"),
        ({"pixel_size_m": 0.0}, "pixel_size_m"),
    ],
)
def test_invalid_user_layout_is_refused_naming_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        DetectorLayout("toy", (8, 8), **kwargs)
    assert "toy" in str(info.value)


# --- ROI and binning -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, roi, binning",
    [
        ("Maxipix", None, (1, 1, 1)),
        ("Maxipix", (100, 400, 37, 516), (1, 2, 3)),
        ("Maxipix", (250, 271, 250, 271), (2, 4, 4)),
        ("Merlin", (0, 515, 200, 330), (3, 5, 2)),
        ("Eiger2M", (400, 1700, 50, 700), (1, 3, 4)),
    ],
)
def test_gap_mask_roi_and_binning_match_bcdi(name, roi, binning):
    import bcdi.utils.utilities as utilities
    n_frames = 7
    bcdi_mask2d = _bcdi_gap_mask(name)
    if roi is not None:
        # bcdi's loader crops the 2D mask with mask2d[roi[0]:roi[1], roi[2]:roi[3]]
        bcdi_mask2d = bcdi_mask2d[roi[0] : roi[1], roi[2] : roi[3]]
    stack = np.repeat(bcdi_mask2d[np.newaxis], n_frames, axis=0)
    binned = utilities.bin_data(stack, binning, debugging=False)
    binned[np.nonzero(binned)] = 1  # what bcdi's preprocessing does after binning a mask

    gap_mask = detector_gap_mask(name, n_frames, roi=roi, binning=binning)
    assert gap_mask.dtype == bool
    assert gap_mask.shape == binned.shape
    np.testing.assert_array_equal(gap_mask, binned != 0)


def test_binned_pixel_is_a_gap_if_any_of_its_pixels_is():
    layout = DetectorLayout("toy", (9, 9), gap_cols=[(3, 4)])
    gap_mask = detector_gap_mask(layout, 5, binning=(2, 2, 2))
    # 9 // 2 = 4 along each detector axis and 5 // 2 = 2 frames: remainders dropped
    assert gap_mask.shape == (2, 4, 4)
    expected = np.zeros((4, 4), dtype=bool)
    expected[:, 1] = True  # binned column 1 gathers columns 2 and 3
    np.testing.assert_array_equal(gap_mask[0], expected)
    np.testing.assert_array_equal(gap_mask[1], expected)


def test_gap_mask_is_writable_and_the_same_in_every_frame():
    gap_mask = detector_gap_mask("Merlin", 3, roi=(200, 300, 200, 300))
    assert gap_mask.flags.writeable
    assert np.all(gap_mask == gap_mask[0])
    assert gap_mask[0, 55:60, :].all() and gap_mask[0, :, 55:60].all()
    assert gap_mask.sum() == 3 * (2 * 5 * 100 - 25)


@pytest.mark.parametrize(
    "roi", [(0, 517, 0, 516), (-1, 100, 0, 100), (0, 100, 400, 600), (0, 100, 0, 520)]
)
def test_roi_outside_the_detector_is_refused(roi):
    with pytest.raises(ValueError, match="outside the Maxipix detector") as info:
        detector_gap_mask("Maxipix", 4, roi=roi)
    assert str(list(roi)) in str(info.value)


def test_bad_roi_binning_and_frames_are_refused():
    with pytest.raises(ValueError, match="increasing"):
        detector_gap_mask("Maxipix", 4, roi=(100, 50, 0, 100))
    with pytest.raises(ValueError, match="row_start, row_stop"):
        detector_gap_mask("Maxipix", 4, roi=(0, 100))
    with pytest.raises(ValueError, match="empty axis"):
        detector_gap_mask("Maxipix", 4, roi=(0, 3, 0, 100), binning=(1, 4, 1))
    with pytest.raises(ValueError, match="binning along rows must be >= 1"):
        detector_gap_mask("Maxipix", 4, binning=(1, 0, 1))
    with pytest.raises(TypeError, match="n_frames must be an integer"):
        detector_gap_mask("Maxipix", 4.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_frames must be >= 1"):
        detector_gap_mask("Maxipix", 0)


# --- synthetic gaps --------------------------------------------------------------------


def test_vertical_band_covers_the_requested_columns_only():
    gap_mask = synthetic_gap_mask((3, 20, 30), "vertical", 6, position=10)
    assert gap_mask.shape == (3, 20, 30) and gap_mask.dtype == bool
    expected = np.zeros((20, 30), dtype=bool)
    expected[:, 10:16] = True
    for frame in gap_mask:
        np.testing.assert_array_equal(frame, expected)


def test_horizontal_band_is_centred_by_default():
    gap_mask = synthetic_gap_mask((2, 21, 8), "horizontal", 3)
    rows = np.flatnonzero(gap_mask[0].all(axis=1))
    np.testing.assert_array_equal(rows, [9, 10, 11])
    assert gap_mask.sum() == 2 * 3 * 8


def test_cross_places_each_band():
    gap_mask = synthetic_gap_mask((2, 20, 30), "cross", 4, position=3, position2=15)
    expected = np.zeros((20, 30), dtype=bool)
    expected[:, 3:7] = True
    expected[15:19, :] = True
    np.testing.assert_array_equal(gap_mask[1], expected)
    centred = synthetic_gap_mask((1, 20, 30), "cross", 4)
    assert centred[0, :, 13:17].all() and centred[0, 8:12, :].all()
    assert centred.sum() == 4 * 20 + 4 * 30 - 16


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        (((2, 10, 10), "diagonal", 3), {}, ValueError, "'diagonal'"),
        (((2, 10, 10), "vertical", 11), {}, ValueError, "width 11 exceeds"),
        (((2, 10, 10), "vertical", 3), {"position": 8}, ValueError, "got position 8"),
        (((2, 10, 10), "vertical", 3), {"position": -1}, ValueError, "got position -1"),
        (((2, 10, 10), "vertical", 3), {"position2": 1}, ValueError, "position2"),
        (((2, 10, 10), "cross", 3), {"position2": 9}, ValueError, "got position 9"),
        (((2, 10, 10), "vertical", 0), {}, ValueError, "width must be >= 1"),
        (((10, 10), "vertical", 3), {}, ValueError, "frames, rows, columns"),
        (((2, 10, 10), "vertical", 2.5), {}, TypeError, "2.5"),
    ],
)
def test_synthetic_gap_mask_refuses_bad_arguments(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        synthetic_gap_mask(*args, **kwargs)


@pytest.mark.parametrize(
    "spec, expected",
    [("cross:9", ("cross", 9)), ("vertical:6", ("vertical", 6)),
     ("horizontal:3", ("horizontal", 3)), (" Cross : 12 ", ("cross", 12))],
)
def test_parse_gap_spec(spec, expected):
    assert parse_gap_spec(spec) == expected


@pytest.mark.parametrize(
    "spec, message",
    [("cross", "kind:width"), ("cross:", "positive integer"), ("cross:0", "positive integer"),
     ("cross:-3", "positive integer"), ("cross:2.5", "positive integer"),
     ("ring:4", "'ring'"), (":4", "kind must be")],
)
def test_parse_gap_spec_refuses_malformed_specs(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_gap_spec(spec)
    assert repr(spec) in str(info.value)


def test_parse_gap_spec_refuses_non_strings():
    with pytest.raises(TypeError):
        parse_gap_spec(9)  # type: ignore[arg-type]


# --- gap recovery from a bcdi/PyNX mask ------------------------------------------------


def _maxipix_mask_with_artefacts():
    n_frames = 5
    mask = detector_gap_mask("Maxipix", n_frames).astype(np.int8)
    expected = mask.astype(bool)
    mask[:, 40, 77] = 1  # hot pixel, masked in every frame
    mask[:, 400:403, 30:33] = 1  # small dead cluster, every frame
    mask[1:3, 100:140, 300:340] = 1  # alien, a few frames only
    mask[2, 10, :] = 1  # a full-width line, but in one frame only
    mask[:, 430:510, 420:500] = 1  # beamstop: 80 x 80, every frame
    return mask, expected


def test_gap_mask_from_mask_recovers_the_maxipix_cross_only():
    mask, expected = _maxipix_mask_with_artefacts()
    recovered = gap_mask_from_mask(mask)
    assert recovered.shape == mask.shape and recovered.dtype == bool
    np.testing.assert_array_equal(recovered, expected)


def test_gap_mask_from_mask_accepts_float_masks_and_cropped_binned_data():
    expected = detector_gap_mask("Maxipix", 4, roi=(128, 384, 100, 356), binning=(1, 2, 2))
    mask = expected.astype(float)
    mask[:, 5, 5] = 1.0  # hot pixel
    np.testing.assert_array_equal(gap_mask_from_mask(mask), expected)


def test_gap_mask_from_mask_recovers_every_eiger2m_gap_with_a_short_min_length():
    # bcdi's Eiger2M also masks partial gaps and 1-pixel dead columns (42 px long)
    expected = detector_gap_map("Eiger2M")
    recovered = gap_mask_from_mask(expected[np.newaxis], min_length=20)
    np.testing.assert_array_equal(recovered[0], expected)
    # the default keeps only bands spanning at least half the detector
    default = gap_mask_from_mask(expected[np.newaxis])[0]
    assert default[511:552, :].all() and default[:, 513:517].all()
    assert not default[1248:1290, 478].any()


def test_thick_always_masked_region_is_not_a_gap():
    mask = np.zeros((3, 200, 200), dtype=bool)
    mask[:, :, 0:120] = True  # masked detector half: long runs, but no band
    mask[:, 150:155, :] = True  # a real 5-row gap crossing it
    recovered = gap_mask_from_mask(mask)[0]
    assert not recovered[:, :100].any()  # inside the half: not returned
    assert recovered[150:155, 125:].all()
    assert gap_mask_from_mask(mask, max_width=None)[0][:, :120].all()


def test_gap_mask_from_mask_validates_its_input():
    with pytest.raises(ValueError, match="3D"):
        gap_mask_from_mask(np.zeros((10, 10)))
    with pytest.raises(ValueError, match="min_length must be >= 1"):
        gap_mask_from_mask(np.zeros((2, 10, 10)), min_length=0)
    with pytest.raises(TypeError, match="dtype"):
        gap_mask_from_mask(np.full((2, 3, 3), "x"))


@settings(max_examples=40, deadline=None)
@given(
    n_rows=st.integers(8, 48),
    n_cols=st.integers(8, 48),
    kind=st.sampled_from(geometry.GAP_KINDS),
    data=st.data(),
)
def test_synthetic_gaps_are_recovered_and_measured(n_rows, n_cols, kind, data):
    width = data.draw(st.integers(1, min(n_rows, n_cols) - 1), label="width")
    gap_mask = synthetic_gap_mask((2, n_rows, n_cols), kind, width)
    np.testing.assert_array_equal(gap_mask_from_mask(gap_mask), gap_mask)
    assert gap_width(gap_mask) == width


# --- gap width -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, width", [("Maxipix", 6), ("Merlin", 5), ("MerlinSixS", 3), ("Eiger2M", 41),
                    ("Eiger4M", 39), ("Timepix", 0)],
)
def test_gap_width_of_detectors(name, width):
    assert gap_width(detector_gap_map(name)) == width


def test_gap_width_of_cross_is_the_band_width_not_the_intersection():
    assert gap_width(synthetic_gap_mask((3, 64, 80), "cross", 9)) == 9
    assert gap_width(synthetic_gap_mask((3, 64, 80), "vertical", 3)) == 3


def test_gap_width_uses_pixels_gapped_in_every_frame():
    gap_mask = synthetic_gap_mask((3, 40, 40), "vertical", 4)
    gap_mask[1, :, 10:30] = True  # wider, but in one frame only
    assert gap_width(gap_mask) == 4
    assert gap_width(np.zeros((2, 5, 5), dtype=bool)) == 0
    with pytest.raises(ValueError, match="3D .* or 2D"):
        gap_width(np.zeros(5))
