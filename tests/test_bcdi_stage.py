"""bcdi_gapfill.integrations.bcdi against the real bcdi 0.3.1.

Frames are built as bcdi builds them: a simulated 64^3 pattern is placed on full 516 x 516
Maxipix frames around the chip cross, each frame goes through bcdi's own
``Detector.mask_detector`` (hot pixels, chip gaps, saturation), then is cropped to the ROI
[226, 290, 226, 290] as bcdi's loader does. The stage must find the gap (from the mask, or
from the detector object), fill it, release it from the mask and leave everything else alone.
Fills use the biharmonic method, or a tiny untrained model for the model path, so the
shipped weights are not needed.
"""
import argparse
import hashlib
import json

import numpy as np
import pytest

from bcdi_gapfill.cli import bcdi as bcdi_cli
from bcdi_gapfill.integrations import bcdi as bcdi_stage
from bcdi_gapfill.integrations.bcdi import fill_bcdi_arrays, fill_bcdi_files, output_paths
from bcdi_gapfill.core.geometry import detector_gap_mask

import bcdi.experiment.detector as bcdi_detector  # noqa: E402  (a test extra: missing fails the suite)

ROI = [226, 290, 226, 290]
N = 64
HOT = (10, 12)               # hot pixel in the ROI (row, column), masked in every frame
ALIEN = (slice(20, 24), slice(40, 43), slice(45, 48))   # masked in a few frames only


def _maxipix(**kwargs):
    return bcdi_detector.create_detector(name="Maxipix", roi=list(ROI), **kwargs)


@pytest.fixture(scope="module")
def bcdi_scan():
    """(truth, data, mask) as bcdi holds them after loading and masking, float64 like bcdi."""
    from bcdi_gapfill.core.simulate import simulate_pattern
    truth = simulate_pattern(N, 7, peak_counts=1e5).counts.astype(np.float64)
    detector = _maxipix()
    hotpixels = np.zeros(detector.unbinned_pixel_number)
    hotpixels[ROI[0] + HOT[0], ROI[2] + HOT[1]] = 1
    data = np.empty((N, N, N))
    mask = np.empty((N, N, N))
    for z in range(N):
        frame = np.zeros(detector.unbinned_pixel_number)
        frame[ROI[0]:ROI[1], ROI[2]:ROI[3]] = truth[z]
        mask2d = np.zeros(detector.unbinned_pixel_number)
        frame, mask2d = detector.mask_detector(frame, mask2d, hotpixels=hotpixels)
        data[z] = frame[ROI[0]:ROI[1], ROI[2]:ROI[3]]
        mask[z] = mask2d[ROI[0]:ROI[1], ROI[2]:ROI[3]]
    data[ALIEN] = 0
    mask[ALIEN] = 1
    return truth, data, mask


def _gap():
    return detector_gap_mask("Maxipix", N, roi=ROI)


def test_bcdi_masked_the_cross(bcdi_scan):
    truth, data, mask = bcdi_scan
    gap = _gap()
    assert gap[0, 29:35].all() and gap[0, :, 29:35].all() and gap.sum() == N * (6 * N * 2 - 36)
    assert np.all(mask[gap] == 1) and np.all(data[gap] == 0)


def _check_stage_output(truth, data, mask, filled, new_mask):
    gap = _gap()
    other = (mask != 0) & ~gap
    assert filled.dtype == data.dtype and new_mask.dtype == mask.dtype
    # gap filled: finite, >= 0, and nearer the truth than bcdi's zeros (log1p error)
    assert np.all(np.isfinite(filled[gap])) and np.all(filled[gap] >= 0)
    err_fill = np.abs(np.log1p(filled[gap]) - np.log1p(truth[gap])).mean()
    err_zero = np.abs(np.log1p(truth[gap])).mean()
    assert err_fill < 0.5 * err_zero, (err_fill, err_zero)
    # mask: gap released, hot pixel and alien still masked, nothing else changed
    assert np.all(new_mask[gap] == 0)
    assert other[:, HOT[0], HOT[1]].all() and other[ALIEN].all()
    assert np.array_equal(new_mask[~gap], mask[~gap])
    # measured and other masked voxels bit-identical
    assert np.array_equal(filled[~gap], data[~gap])


def test_fill_arrays_gap_from_mask(bcdi_scan):
    truth, data, mask = bcdi_scan
    data_before, mask_before = data.copy(), mask.copy()
    filled, new_mask, record = fill_bcdi_arrays(data, mask, method="biharmonic")
    _check_stage_output(truth, data, mask, filled, new_mask)
    assert np.array_equal(data, data_before) and np.array_equal(mask, mask_before)  # inputs untouched
    assert record["gap_source"] == "mask"
    assert record["gap_voxels_filled"] == int(_gap().sum())
    assert record["method"] == "biharmonic" and "weights_sha256" not in record
    json.dumps(record)


def test_fill_arrays_with_bcdi_detector_object(bcdi_scan):
    truth, data, mask = bcdi_scan
    filled, new_mask, record = fill_bcdi_arrays(data, mask, detector=_maxipix(), method="biharmonic")
    _check_stage_output(truth, data, mask, filled, new_mask)
    assert record["gap_source"] == "detector" and record["detector"] == "Maxipix"
    assert record["roi"] == ROI and record["binning"] == [1, 1, 1]
    # the same fill as with the gap found from the mask
    ref, _, _ = fill_bcdi_arrays(data, mask, method="biharmonic")
    assert np.array_equal(filled, ref)
    # a detector name with an explicit ROI works the same way
    by_name, _, _ = fill_bcdi_arrays(data, mask, detector="maxipix", roi=ROI, method="biharmonic")
    assert np.array_equal(by_name, ref)


def test_detector_object_binned_in_detector_plane(bcdi_scan):
    from bcdi.utils.utilities import bin_data
    truth, data, mask = bcdi_scan
    detector = _maxipix(binning=(1, 2, 2))
    # as bcdi's loader does with bin_during_loading: bin rows/columns, flag binned mask
    data_b = bin_data(data, (1, 2, 2))
    mask_b = bin_data(mask, (1, 2, 2))
    mask_b[np.nonzero(mask_b)] = 1
    detector.current_binning = [1, 2, 2]
    filled, new_mask, record = fill_bcdi_arrays(data_b, mask_b, detector=detector, method="biharmonic")
    gap = detector_gap_mask("Maxipix", N, roi=ROI, binning=(1, 2, 2))
    assert record["binning"] == [1, 2, 2] and record["gap_voxels_filled"] == int(gap.sum())
    assert np.all(new_mask[gap] == 0) and np.array_equal(new_mask[~gap], mask_b[~gap])
    assert np.all(np.isfinite(filled[gap])) and np.array_equal(filled[~gap], data_b[~gap])


def test_layout_that_does_not_match_the_mask_is_refused(bcdi_scan):
    truth, data, mask = bcdi_scan
    shifted = _maxipix()
    shifted.roi = [ROI[0] + 8, ROI[1] + 8, ROI[2], ROI[3]]
    with pytest.raises(ValueError, match="not masked"):
        fill_bcdi_arrays(data, mask, detector=shifted, method="biharmonic")
    with pytest.raises(ValueError, match="shape"):
        fill_bcdi_arrays(data, mask, detector="Maxipix", roi=[0, 70, 0, 70], method="biharmonic")
    with pytest.raises(ValueError, match="detector="):
        fill_bcdi_arrays(data, mask, roi=ROI, method="biharmonic")


def test_no_gap_warns_and_returns_copies(bcdi_scan):
    truth, data, mask = bcdi_scan
    only_alien = np.zeros_like(mask)
    only_alien[ALIEN] = 1
    with pytest.warns(UserWarning, match="no detector gap"):
        filled, new_mask, record = fill_bcdi_arrays(data, only_alien, method="biharmonic")
    assert record["gap_voxels_filled"] == 0
    assert np.array_equal(filled, data) and np.array_equal(new_mask, only_alien)


def test_integer_data_become_float64(bcdi_scan):
    truth, data, mask = bcdi_scan
    filled, _, record = fill_bcdi_arrays(data.astype(int), mask.astype(int), method="linear")
    assert filled.dtype == np.float64 and record["output_dtype"] == "float64"
    assert np.array_equal(filled[~_gap()], data[~_gap()])


def test_model_path_records_weights_hash(bcdi_scan):
    from bcdi_gapfill.nn.model import build_model
    truth, data, mask = bcdi_scan
    model = build_model({"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4], "prefill_iterations": 20}).eval()
    filled, new_mask, record = fill_bcdi_arrays(data, mask, detector=_maxipix(), model=model, stride=16)
    gap = _gap()
    assert np.all(np.isfinite(filled[gap])) and np.all(filled[gap] >= 0)
    assert np.array_equal(filled[~gap], data[~gap]) and np.all(new_mask[gap] == 0)
    assert record["method"] == "model" and record["stride"] == 16
    assert record["weights_sha256_of"] == "state_dict" and len(record["weights_sha256"]) == 64


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_bcdi_pair(directory, data, mask):
    # exactly as bcdi's PreprocessingAnalysis.save_data / save_mask write them
    data_path = directory / "S1_pynx_64_64_64_1_1_1.npz"
    mask_path = directory / "S1_maskpynx_64_64_64_1_1_1.npz"
    np.savez_compressed(data_path, data=data)
    np.savez_compressed(mask_path, mask=mask.astype(int))
    return data_path, mask_path


def test_fill_files(tmp_path, bcdi_scan):
    truth, data, mask = bcdi_scan
    data_path, mask_path = _write_bcdi_pair(tmp_path, data, mask)
    sha_before = (_sha(data_path), _sha(mask_path))

    paths = fill_bcdi_files(data_path, mask_path, method="biharmonic")
    assert paths["data"].name == "S1_pynx_64_64_64_1_1_1_gapfilled.npz"
    assert paths["mask"].name == "S1_maskpynx_64_64_64_1_1_1_gapfilled.npz"
    assert paths["record"].name == "S1_pynx_64_64_64_1_1_1_gapfilled.json"
    assert (_sha(data_path), _sha(mask_path)) == sha_before  # originals untouched

    with np.load(paths["data"]) as npz:
        assert npz.files == ["data"]
        filled = npz["data"]
    with np.load(paths["mask"]) as npz:
        assert npz.files == ["mask"]
        new_mask = npz["mask"]
    _check_stage_output(truth, data, mask.astype(int), filled, new_mask)
    ref, ref_mask, _ = fill_bcdi_arrays(data, mask.astype(int), method="biharmonic")
    assert np.array_equal(filled, ref) and np.array_equal(new_mask, ref_mask)

    record = json.loads(paths["record"].read_text())
    assert record["gap_voxels_filled"] == int(_gap().sum())
    assert record["inputs"]["data_sha256"] == sha_before[0] and record["inputs"]["mask_sha256"] == sha_before[1]
    assert set(record["outputs"]) == {"data", "mask", "record"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]  # no temporary left

    # existing outputs are refused before any work, replaced with overwrite
    with pytest.raises(FileExistsError, match="overwrite"):
        fill_bcdi_files(data_path, mask_path, method="biharmonic")
    fill_bcdi_files(data_path, mask_path, method="zero", overwrite=True)
    with np.load(paths["data"]) as npz:
        assert np.all(npz["data"][_gap()] == 0)
    # the inputs can never be the outputs
    with pytest.raises(ValueError):
        output_paths(data_path, mask_path, suffix="")
    assert (_sha(data_path), _sha(mask_path)) == sha_before


def test_fill_files_out_dir_and_detector(tmp_path, bcdi_scan):
    truth, data, mask = bcdi_scan
    data_path, mask_path = _write_bcdi_pair(tmp_path, data, mask)
    out = tmp_path / "out"
    out.mkdir()
    paths = fill_bcdi_files(data_path, mask_path, out_dir=out, detector="Maxipix", roi=ROI, method="biharmonic")
    assert all(p.parent == out for p in paths.values())
    record = json.loads(paths["record"].read_text())
    assert record["gap_source"] == "detector" and record["roi"] == ROI


def test_cmd_bcdi(tmp_path, bcdi_scan, capsys):
    truth, data, mask = bcdi_scan
    data_path, mask_path = _write_bcdi_pair(tmp_path, data, mask)
    parser = argparse.ArgumentParser(prog="bcdi-gapfill")
    bcdi_cli.add_bcdi_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bcdi", str(data_path), str(mask_path), "--method", "biharmonic",
                              "--detector", "Maxipix", "--roi", *map(str, ROI), "--binning", "1", "1", "1",
                              "--out-dir", str(tmp_path), "--suffix", "_filled"])
    assert args.func is bcdi_cli.cmd_bcdi
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert f"filled {int(_gap().sum())} gap voxels" in printed
    with np.load(tmp_path / "S1_pynx_64_64_64_1_1_1_filled.npz") as npz:
        assert np.all(np.isfinite(npz["data"]))
    assert (tmp_path / "S1_maskpynx_64_64_64_1_1_1_filled.npz").is_file()
