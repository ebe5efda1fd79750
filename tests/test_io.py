"""Tests of bcdi_gapfill.core.io: round trips, atomic writes, refusals and clear errors."""
from __future__ import annotations

import os
import re
import stat

import h5py
import numpy as np
import pytest

from bcdi_gapfill.core import io as bio
from bcdi_gapfill.core.io import (
    CXI_DATA_PATH,
    CXI_MASK_PATH,
    atomic_write_bytes,
    atomic_write_text,
    load_array,
    load_data_and_mask,
    load_metadata,
    save_array,
)

ATTRS = {
    "detector": "Maxipix",
    "scan": 128,
    "energy_ev": 9000.5,
    "binned": False,
    "roi": [0, 256, 10, 266],
    "model": {"gap": "cross:9", "epochs": [1, 2]},
}


@pytest.fixture
def stack():
    rng = np.random.default_rng(0)
    data = rng.poisson(5.0, size=(4, 12, 10)).astype(np.float32)
    mask = np.zeros(data.shape, dtype=np.int8)
    mask[:, 5:7, :] = 1
    mask[2, 0, 0] = 1
    return data, mask


def _files(directory):
    return sorted(os.listdir(directory))


# --- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".hdf5", ".cxi"])
def test_round_trip_with_mask_and_attrs(tmp_path, stack, suffix):
    data, mask = stack
    path = tmp_path / f"S128_pynx{suffix}"
    assert save_array(path, data, mask=mask, attrs=ATTRS) == path
    loaded, loaded_mask = load_data_and_mask(path)
    assert loaded.dtype == data.dtype
    np.testing.assert_array_equal(loaded, data)
    np.testing.assert_array_equal(loaded_mask != 0, mask != 0)
    np.testing.assert_array_equal(load_array(path), data)
    assert load_metadata(path) == ATTRS
    assert _files(tmp_path) == [path.name]


def test_npy_round_trip_and_refusals(tmp_path, stack):
    data, mask = stack
    path = tmp_path / "data.npy"
    save_array(path, data)
    np.testing.assert_array_equal(load_array(path), data)
    assert load_data_and_mask(path)[1] is None
    assert load_metadata(path) == {}
    for kwargs in ({"mask": mask}, {"attrs": {"a": 1}}, {"key": "x"}):
        with pytest.raises(ValueError, match="single array"):
            save_array(tmp_path / "other.npy", data, **kwargs)
    with pytest.raises(ValueError, match="single array"):
        load_array(path, key="data")


def test_h5_keys_and_cxi_paths(tmp_path, stack):
    data, mask = stack
    h5_path = tmp_path / "out.h5"
    save_array(h5_path, data, mask=mask, key="entry/intensity")
    np.testing.assert_array_equal(load_array(h5_path, key="entry/intensity"), data)
    np.testing.assert_array_equal(load_array(h5_path, key="/mask"), mask)

    cxi_path = tmp_path / "out.cxi"
    save_array(cxi_path, data, mask=mask)
    with h5py.File(cxi_path, "r") as h5:
        assert h5["entry_1/instrument_1/detector_1/data"].shape == data.shape
        assert h5[CXI_DATA_PATH].id == h5["entry_1/instrument_1/detector_1/data"].id
        assert h5[CXI_MASK_PATH].dtype == np.int8
        assert h5.attrs["file_name"] == str(cxi_path)  # the final name, not the temporary
    np.testing.assert_array_equal(load_array(cxi_path, key=CXI_MASK_PATH), mask)


def test_bcdi_npz_convention(tmp_path, stack):
    data, mask = stack
    np.savez_compressed(tmp_path / "S1_pynx_norm_128_128_128.npz", data=data)
    np.savez_compressed(tmp_path / "S1_maskpynx_norm_128_128_128.npz", mask=mask)
    loaded, loaded_mask = load_data_and_mask(
        tmp_path / "S1_pynx_norm_128_128_128.npz", tmp_path / "S1_maskpynx_norm_128_128_128.npz"
    )
    np.testing.assert_array_equal(loaded, data)
    np.testing.assert_array_equal(loaded_mask, mask)
    # a lone array under another name is taken, as bcdi and PyNX do
    np.savez(tmp_path / "lone.npz", data * 2)
    np.testing.assert_array_equal(load_array(tmp_path / "lone.npz"), data * 2)


def test_h5_without_key_takes_the_only_3d_dataset(tmp_path, stack):
    data, mask = stack
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as h5:
        h5["scan/frames/intensity"] = data
        h5["scan/motor"] = np.arange(4.0)
    np.testing.assert_array_equal(load_array(path), data)
    with h5py.File(path, "a") as h5:
        h5["scan/frames/other"] = mask
    with pytest.raises(ValueError, match="ambiguous") as info:
        load_array(path)
    assert "scan/frames/intensity" in str(info.value) and "scan/frames/other" in str(info.value)


def test_mask_from_the_data_file_under_a_given_key(tmp_path, stack):
    data, mask = stack
    path = tmp_path / "pair.npz"
    np.savez(path, intensity=data, bad=mask)
    loaded, loaded_mask = load_data_and_mask(path, data_key="intensity", mask_key="bad")
    np.testing.assert_array_equal(loaded_mask, mask)
    with pytest.raises(ValueError, match="'nomask'"):
        load_data_and_mask(path, data_key="intensity", mask_key="nomask")


# --- clear errors on reading -----------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".cxi"])
def test_unknown_key_lists_what_the_file_holds(tmp_path, stack, suffix):
    data, mask = stack
    path = tmp_path / f"out{suffix}"
    save_array(path, data, mask=mask)
    with pytest.raises(ValueError, match="'intensity'") as info:
        load_array(path, key="intensity")
    message = str(info.value)
    assert str(path) in message and "mask" in message and "data" in message


def test_ambiguous_npz_lists_its_entries(tmp_path, stack):
    data, mask = stack
    path = tmp_path / "two.npz"
    np.savez(path, first=data, second=data)
    with pytest.raises(ValueError, match=r"ambiguous.*\['first', 'second'\]"):
        load_array(path)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".h5", ".cxi"])
def test_truncated_file_gives_value_error_naming_the_path(tmp_path, suffix):
    data = np.random.default_rng(1).random((8, 32, 32))
    path = tmp_path / f"cut{suffix}"
    save_array(path, data)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_array(path)


def test_wrong_format_and_missing_files(tmp_path):
    text_file = tmp_path / "notes.h5"
    text_file.write_text("not hdf5")
    with pytest.raises(ValueError, match=re.escape(str(text_file))):
        load_array(text_file)
    fake_npz = tmp_path / "fake.npz"
    np.save(tmp_path / "fake.npy", np.zeros(3))
    os.replace(tmp_path / "fake.npy", fake_npz)
    with pytest.raises(ValueError, match="is a .npy file, not a .npz"):
        load_array(fake_npz)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_array(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="unsupported file suffix '.tif'"):
        load_array(tmp_path / "data.tif")
    directory = tmp_path / "dir.h5"
    directory.mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        load_array(directory)


def test_shape_checks_in_load_data_and_mask(tmp_path, stack):
    data, mask = stack
    save_array(tmp_path / "data.npz", data)
    save_array(tmp_path / "mask.npz", mask[:, :, :5], key="mask_values")
    with pytest.raises(ValueError, match=r"\(4, 12, 5\).*\(4, 12, 10\)"):
        load_data_and_mask(tmp_path / "data.npz", tmp_path / "mask.npz")
    save_array(tmp_path / "flat.npy", data[0])
    with pytest.raises(ValueError, match="must be 3D"):
        load_data_and_mask(tmp_path / "flat.npy")


# --- writing: refusals and atomicity ---------------------------------------------------


def test_existing_output_is_refused_unless_overwrite(tmp_path, stack):
    data, _ = stack
    path = tmp_path / "out.npz"
    save_array(path, data)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_array(path, data * 0)
    np.testing.assert_array_equal(load_array(path), data)
    save_array(path, data * 0, overwrite=True)
    np.testing.assert_array_equal(load_array(path), data * 0)
    assert _files(tmp_path) == ["out.npz"]


def test_existing_output_is_refused_before_anything_is_written(tmp_path, monkeypatch, stack):
    data, _ = stack
    path = tmp_path / "out.h5"
    save_array(path, data)
    monkeypatch.setattr(bio, "_write_h5", _fail_midway)  # must not even be called
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        save_array(path, data)


def test_protected_input_is_refused_even_with_overwrite(tmp_path, stack):
    data, _ = stack
    source = tmp_path / "S1_pynx.npz"
    save_array(source, data)
    before = source.read_bytes()
    spellings = [source, str(source), tmp_path / "sub" / ".." / "S1_pynx.npz"]
    (tmp_path / "sub").mkdir()
    os.symlink(source, tmp_path / "link.npz")
    os.link(source, tmp_path / "hardlink.npz")
    spellings += [tmp_path / "link.npz", tmp_path / "hardlink.npz"]
    for target in spellings:
        with pytest.raises(ValueError, match="protected input"):
            save_array(target, data * 0, overwrite=True, protect=[source])
    with pytest.raises(ValueError, match="protected input"):
        atomic_write_text(source, "x", overwrite=True, protect=source)
    assert source.read_bytes() == before


def _fail_midway(target, *args, **kwargs):
    """Stand-in for a writer step: leaves partial output behind, then fails."""
    if hasattr(target, "write"):  # np.save / np.savez_compressed get the file handle
        target.write(b"partial output")
    # write_h5_attrs is called once the data dataset is already in the HDF5 file
    raise RuntimeError("disk full (simulated)")


@pytest.mark.parametrize(
    "suffix, target",
    [
        (".npy", (np, "save")),
        (".npz", (np, "savez_compressed")),
        (".h5", (bio, "write_h5_attrs")),  # fails after the data dataset is written
        (".cxi", (bio, "write_h5_attrs")),
    ],
)
@pytest.mark.parametrize("existing", [False, True])
def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, stack, suffix, target,
                                             existing):
    data, mask = stack
    path = tmp_path / f"out{suffix}"
    if existing:
        save_array(path, data + 1)
        before = path.read_bytes()
    owner, name = target
    monkeypatch.setattr(owner, name, _fail_midway)
    kwargs = {} if suffix == ".npy" else {"mask": mask, "attrs": {"a": 1}}
    with pytest.raises(RuntimeError, match="simulated"):
        save_array(path, data, overwrite=existing, **kwargs)
    monkeypatch.undo()
    if existing:
        assert _files(tmp_path) == [path.name]
        assert path.read_bytes() == before
    else:
        assert _files(tmp_path) == []


def test_failed_rename_removes_the_temporary_file(tmp_path, monkeypatch, stack):
    data, _ = stack
    path = tmp_path / "out.h5"
    save_array(path, data)
    before = path.read_bytes()

    def refuse(*args, **kwargs):
        raise OSError("rename failed (simulated)")

    monkeypatch.setattr(bio.os, "replace", refuse)
    with pytest.raises(OSError, match="simulated"):
        save_array(path, data * 2, overwrite=True)
    monkeypatch.undo()
    assert _files(tmp_path) == ["out.h5"]
    assert path.read_bytes() == before


def test_written_file_honours_the_umask(tmp_path, stack):
    umask = os.umask(0o022)
    os.umask(umask)
    path = save_array(tmp_path / "out.npz", stack[0])
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_save_array_validates_its_arguments(tmp_path, stack):
    data, mask = stack
    with pytest.raises(ValueError, match=r"mask shape \(4, 12, 9\) differs"):
        save_array(tmp_path / "a.npz", data, mask=mask[..., :9])
    with pytest.raises(TypeError, match="dtype object"):
        save_array(tmp_path / "a.npz", np.array([object()]))
    with pytest.raises(TypeError, match=r"attrs\['when'\]"):
        save_array(tmp_path / "a.h5", data, attrs={"when": object()})
    with pytest.raises(ValueError, match="unsupported file suffix"):
        save_array(tmp_path / "a.tiff", data)
    with pytest.raises(ValueError, match="reserved"):
        save_array(tmp_path / "a.npz", data, key="metadata")
    with pytest.raises(ValueError, match="reserved"):
        save_array(tmp_path / "a.h5", data, mask=mask, key="mask")
    with pytest.raises(ValueError, match="CXI layout is fixed"):
        save_array(tmp_path / "a.cxi", data, key="data")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_array(tmp_path / "no_dir" / "a.npz", data)
    assert _files(tmp_path) == []


def test_atomic_text_and_bytes(tmp_path):
    path = tmp_path / "record.json"
    assert atomic_write_text(path, '{"psnr": 31.5}\n') == path
    assert path.read_text() == '{"psnr": 31.5}\n'
    with pytest.raises(FileExistsError):
        atomic_write_text(path, "{}")
    atomic_write_bytes(path, b"{}", overwrite=True)
    assert path.read_bytes() == b"{}"
    with pytest.raises(TypeError, match="bytes"):
        atomic_write_bytes(tmp_path / "x", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="str"):
        atomic_write_text(tmp_path / "x", b"bytes")  # type: ignore[arg-type]
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(tmp_path / "x", "é", encoding="ascii")
    assert _files(tmp_path) == ["record.json"]


# --- other readers ---------------------------------------------------------------------


@pytest.mark.pynx
def test_cxi_output_is_read_by_pynx(tmp_path, stack, capsys):
    runner = pytest.importorskip(
        "pynx.cdi.runner.runner", reason="PyNX is not installed (optional)"
    )
    data, mask = stack
    path = tmp_path / "S1_pynx.cxi"
    save_array(path, data, mask=mask)
    scan = runner.CDIRunnerScan(params={"data": str(path)}, scan=None)
    scan.load_data()
    np.testing.assert_array_equal(scan.iobs, data)
    np.testing.assert_array_equal(scan.mask, mask)


def test_cxi_and_npz_output_are_read_by_bcdi(tmp_path, stack):
    import bcdi.utils.utilities as utilities
    data, mask = stack
    save_array(tmp_path / "out.cxi", data, mask=mask)
    save_array(tmp_path / "out.npz", data, mask=mask, attrs={"a": 1})
    np.testing.assert_array_equal(utilities.load_file(str(tmp_path / "out.cxi"))[0], data)
    np.testing.assert_array_equal(utilities.load_file(str(tmp_path / "out.npz"))[0], data)


def test_check_config_keys_names_each_unknown_key_with_a_hint():
    from bcdi_gapfill.core.io import check_config_keys
    check_config_keys({"stride": 8}, ("stride", "batch_size"), "the gapfill section")  # known: no error
    with pytest.raises(ValueError, match=r"unknown keys in the gapfill section: 'strid' \(did you mean "
                                         r"'stride'\?\), 'zzz'; known: \['batch_size', 'stride'\]"):
        check_config_keys({"strid": 8, "stride": 4, "zzz": 1}, {"stride": 16, "batch_size": 4},
                          "the gapfill section")
