import json
import re

import numpy as np
import pytest

from bcdi_gapfill.core import io
from bcdi_gapfill.cli.commands import main
from bcdi_gapfill.fill.inpainting import DEFAULT_WEIGHTS


@pytest.fixture()
def pattern_file(tmp_path):
    from bcdi_gapfill.core.simulate import simulate_pattern
    p = simulate_pattern(40, 5, peak_counts=1e5)
    mask = np.zeros(p.counts.shape, np.int8)
    mask[:, :, 18:22] = 1       # a chip gap: masked in every frame
    mask[3, 5, 7] = 1           # an alien, one frame only
    data_path = tmp_path / "S1_pynx.npz"
    mask_path = tmp_path / "S1_maskpynx.npz"
    np.savez(data_path, data=p.counts)
    np.savez(mask_path, mask=mask)
    return data_path, mask_path, p


def test_inpaint_command_from_bcdi_pair(tmp_path, pattern_file):
    data_path, mask_path, p = pattern_file
    before = {path: io.file_sha256(path) for path in (data_path, mask_path)}
    out = tmp_path / "S1_gapfilled.npz"
    assert main(["inpaint", str(data_path), "--mask", str(mask_path), "--method", "biharmonic", "-o", str(out)]) == 0
    filled, new_mask = io.load_data_and_mask(out)
    assert filled.shape == p.counts.shape and np.isfinite(filled).all()
    assert new_mask[:, :, 18:22].sum() == 0 and new_mask[3, 5, 7] == 1  # gap released, alien kept
    measured = np.ones(p.counts.shape, bool)
    measured[:, :, 18:22] = False
    measured[3, 5, 7] = False
    # Every measured voxel of the whole array, bit for bit (the counts are integers in float64).
    assert np.array_equal(filled[measured], p.counts[measured])
    assert {path: io.file_sha256(path) for path in before} == before
    record = np.load(tmp_path / "S1_gapfilled_gapfill_record.npz")
    assert record["filled_voxels"].sum() == 40 * 40 * 4
    assert json.loads(str(record["metadata"]))["gap_voxels_filled"] == 40 * 40 * 4
    # An existing output is refused, and so is writing over the input.
    assert main(["inpaint", str(data_path), "--mask", str(mask_path), "--method", "biharmonic", "-o", str(out)]) == 2
    assert main(["inpaint", str(data_path), "--mask", str(mask_path), "--method", "biharmonic",
                 "-o", str(data_path), "--overwrite"]) == 2
    assert {path: io.file_sha256(path) for path in before} == before


def test_inpaint_command_errors(tmp_path, pattern_file, capsys):
    data_path, _, _ = pattern_file
    assert main(["inpaint", str(data_path), "-o", str(tmp_path / "o.npz")]) == 2
    assert "no gap given" in capsys.readouterr().err
    assert main(["inpaint", str(tmp_path / "missing.npz"), "--gap", "cross:3", "-o", str(tmp_path / "o.npz")]) == 2
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    assert main(["inpaint", str(bad), "--gap", "cross:3", "-o", str(tmp_path / "o.npz")]) == 2
    assert "bad.npz" in capsys.readouterr().err


@pytest.mark.e2e
def test_demo_end_to_end(tmp_path):
    """The README's main job: shipped weights, simulate, gap, inpaint, report."""
    assert DEFAULT_WEIGHTS.is_file(), "the shipped default weights are missing"
    from bcdi_gapfill.workflow.demo import run_demo
    summary = run_demo(tmp_path / "demo", size=64, seed=3)
    methods = summary["methods"]
    assert set(methods) >= {"model", "biharmonic", "linear"}
    assert all(0 < m["pcc_gap"] <= 1 for m in methods.values())
    assert methods["model"]["pcc_gap"] > methods["linear"]["pcc_gap"]
    assert (tmp_path / "demo" / "before_after.png").stat().st_size > 10_000


def _must_not_run(*args, **kwargs):
    raise AssertionError("computed although an output was not free")


def test_inpaint_command_checks_every_output_before_computing(tmp_path, pattern_file, monkeypatch, capsys):
    """An existing record (or any other output that cannot be written) stops the command before it
    reads or computes anything, and nothing is written."""
    import bcdi_gapfill.fill.inpainting as inp
    data_path, mask_path, _ = pattern_file
    monkeypatch.setattr(io, "load_data_and_mask", _must_not_run)
    monkeypatch.setattr(inp, "inpaint", _must_not_run)
    out = tmp_path / "S1_gapfilled.npz"
    record = tmp_path / "S1_gapfilled_gapfill_record.npz"
    record.write_bytes(b"an earlier record")
    argv = ["inpaint", str(data_path), "--mask", str(mask_path), "--method", "biharmonic", "-o", str(out)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"bcdi-gapfill inpaint: error: outputs exist: {record}; "
                                       "pass --overwrite to replace them\n")
    assert not out.exists() and record.read_bytes() == b"an earlier record"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([data_path.name, mask_path.name, record.name])
    for bad_output, match in [("o.npy", r"a \.npy file holds a single array.*use \.npz, \.h5 or \.cxi"),
                              ("o.txt", r"unsupported file suffix '\.txt'"),
                              ("nodir/o.npz", r"directory .*nodir does not exist")]:
        assert main(argv[:-1] + [str(tmp_path / bad_output)]) == 2
        assert re.search(match, capsys.readouterr().err)
    # With --overwrite the same command runs and replaces both files.
    monkeypatch.undo()
    assert main(argv + ["--overwrite"]) == 0
    assert out.exists() and np.load(record)["filled_voxels"].sum() == 40 * 40 * 4
