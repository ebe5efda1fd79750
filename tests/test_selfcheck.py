"""The per-scan self-check (`bcdi_gapfill.validation.selfcheck.assess`, `bcdi-gapfill assess`): hidden
bands of measured voxels, the scores, and the two cases it must get right: free pixels where
the oversampling constrains a narrow gap and the fill is wrong, a fill where a 12-px cross hides
the peak's central lobe at oversampling 3 and free pixels leave it unconstrained. Small crystals (48^3) and a short algorithm keep it to seconds."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bcdi_gapfill.core import io
from bcdi_gapfill.core.geometry import synthetic_gap_mask
from bcdi_gapfill.nn.model import build_model
from bcdi_gapfill.validation.selfcheck import BAND_MARGIN, assess, format_assessment, hidden_bands
from bcdi_gapfill.core.simulate import simulate_pattern

FAST = "ER**50 * (Sup * HIO**20)**5"


def _crystal(seed, oversampling):
    sim = simulate_pattern(48, seed, phase="zero", peak_offset=(0, 0, 0), coherence_sigma=0.0, background=0.0,
                           oversampling=oversampling, peak_counts=1e6)
    return sim.counts.astype(np.float32)


def test_hidden_bands_are_measured_gap_shaped_and_apart():
    counts = _crystal(1, 4.0)
    gap = synthetic_gap_mask(counts.shape, "cross", 3, position=26, position2=26)
    bad = np.zeros(gap.shape, bool)
    bad[:, 10, 10] = True
    bands = hidden_bands(counts, gap, n_bands=3, bad_mask=bad)
    assert len(bands) == 3
    near_gap = np.zeros(gap.shape, bool)
    for axis in (1, 2):
        for d in range(-BAND_MARGIN, BAND_MARGIN + 1):
            near_gap |= np.roll(gap, d, axis=axis)
    for band in bands:
        mask = band["mask"]
        assert band["voxels"] == int(mask.sum()) > 0
        assert not (mask & near_gap).any() and not (mask & bad).any()
        # A band of the gap's width, whole along the frames, along the detector axis it moved.
        detector = mask.any(axis=0)                          # (rows, columns)
        assert detector.any(axis=1 if band["axis"] == 1 else 0).sum() == 3
        assert np.array_equal(mask.all(axis=0), mask.any(axis=0) & ~bad[0])
        assert abs(band["shift"]) in (3 + BAND_MARGIN, 2 * (3 + BAND_MARGIN))
    # Both sides or both axes before the same side twice.
    sides = {(b["axis"], np.sign(b["shift"])) for b in bands}
    assert len(sides) == 3


def test_free_pixels_win_against_a_wrong_fill():
    counts = _crystal(1, 4.0)
    gap = synthetic_gap_mask(counts.shape, "cross", 3, position=26, position2=26)
    wrong = build_model({"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4], "prefill": "zero",
                         "head": "sigmoid"}).eval()   # untrained: a fill of about half the window's maximum
    result = assess(counts, gap, treatments=("free_pixels", "inpaint"), model=wrong,
                    inpaint_options={"stride": 16}, algorithm=FAST, n_starts=2, progress=False)
    assert result["recommended"] == "free_pixels" and result["confidence"] == "clear"
    assert result["scores"]["free_pixels"]["pcc_log"] > 0.9
    assert len(result["scores"]["inpaint"]["deviance_starts"]) == 2 * 2
    assert result["summary"].startswith("free_pixels predicts the hidden measured voxels best")
    text = format_assessment(result)
    assert text.splitlines()[1].startswith("free_pixels") and text.endswith(result["summary"])


def test_a_fill_wins_where_the_gap_hides_the_central_lobe(capsys):
    counts = _crystal(2, 3.0)
    gap = synthetic_gap_mask(counts.shape, "cross", 12)       # through the peak, oversampling 3
    result = assess(counts, gap, treatments=("free_pixels", "biharmonic"), algorithm=FAST, n_starts=2)
    assert result["recommended"] == "biharmonic"
    s = result["scores"]
    assert s["biharmonic"]["deviance"] < s["free_pixels"]["deviance"]
    assert s["biharmonic"]["pcc_log"] > s["free_pixels"]["pcc_log"]
    err = capsys.readouterr().err
    assert "assess: 8 phase retrievals (2 treatments x 2 hidden bands x 2 starts), expected about" in err


@pytest.mark.parametrize("kwargs, match", [
    ({"treatments": ("free_pixels",)}, "at least two distinct"),
    ({"treatments": ("free_pixels", "magic")}, "at least two distinct"),
    ({"n_starts": 0}, "n_starts must be an integer >= 1"),
    ({"n_bands": 1.5}, "n_bands must be an integer >= 1"),
])
def test_bad_arguments(kwargs, match):
    counts = np.ones((32, 32, 32), np.float32)
    gap = synthetic_gap_mask(counts.shape, "cross", 3)
    with pytest.raises(ValueError, match=match):
        assess(counts, gap, progress=False, **kwargs)


def test_bad_input():
    counts = np.ones((32, 32, 32), np.float32)
    gap = synthetic_gap_mask(counts.shape, "cross", 3)
    with pytest.raises(ValueError, match="boolean array of shape"):
        assess(counts, gap.astype(np.uint8), progress=False)
    with pytest.raises(ValueError, match="no detector gap band"):
        assess(counts, np.zeros(counts.shape, bool), progress=False)
    bad = counts.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite and >= 0"):
        assess(bad, gap, progress=False)


def test_cli_assess_writes_json_and_keeps_the_input(tmp_path, capsys, monkeypatch):
    from bcdi_gapfill.cli.commands import main
    counts = _crystal(1, 4.0)
    mask = synthetic_gap_mask(counts.shape, "cross", 3, position=26, position2=26).astype(np.int8)
    mask[:, 5, 7] = 1                                  # a hot pixel: never hidden, never scored
    data_path, mask_path = tmp_path / "S1_pynx.npz", tmp_path / "S1_maskpynx.npz"
    np.savez(data_path, data=np.where(mask, 0, counts))
    np.savez(mask_path, mask=mask)
    before = {p: io.file_sha256(p) for p in (data_path, mask_path)}
    out = tmp_path / "assess.json"
    argv = ["assess", str(data_path), "--mask", str(mask_path), "--treatments", "free_pixels,zero_fill",
            "--starts", "1", "--bands", "1", "-o", str(out)]
    import bcdi_gapfill.phasing.engine as P
    monkeypatch.setattr(P, "DEFAULT_ALGORITHM", FAST)      # the CLI runs the default algorithm
    assert main(argv) == 0
    assert main(argv) == 2                                  # an existing output is refused
    result = json.loads(out.read_text())
    assert result["recommended"] == "free_pixels" and result["settings"]["n_bands"] == 1
    assert result["settings"]["gap_width"] == 3
    assert {p: io.file_sha256(p) for p in before} == before
    captured = capsys.readouterr()
    assert "free_pixels predicts" in captured.out and f"outputs exist: {out}" in captured.err


@pytest.mark.parametrize("hidden", ["free", "treated"])
def test_what_each_run_is_given(monkeypatch, hidden):
    """R-free's rule by default: the band's counts are withheld and the band is free in every run,
    the treatment applies to the gap only; "treated" applies it to gap and band alike."""
    import bcdi_gapfill.phasing.engine as P
    counts = _crystal(1, 4.0)
    gap = synthetic_gap_mask(counts.shape, "cross", 3, position=26, position2=26)
    seen = []
    real = P.phase_retrieval

    def spy(intensity, **kwargs):
        seen.append((intensity.copy(), kwargs.get("free_mask"), kwargs.get("estimated_mask")))
        return real(intensity, **{**kwargs, "algorithm": "ER**5 * HIO**5"})

    monkeypatch.setattr(P, "phase_retrieval", spy)
    result = assess(counts, gap, treatments=("free_pixels", "zero_fill", "inpaint+release"), hidden=hidden,
                    n_bands=1, n_starts=1, inpaint_options={"stride": 16}, progress=False)
    band = hidden_bands(counts, gap, n_bands=1)[0]["mask"]
    (free_i, free_free, _), (zero_i, zero_free, _), (rel_i, rel_free, rel_est) = seen
    assert result["settings"]["hidden"] == hidden
    assert np.array_equal(free_free, gap | band)                 # free pixels: gap and band free
    assert not (zero_i[gap | band]).any()                        # zero fill: zeros in the gap
    assert not rel_i[band].any() or hidden == "treated"          # free mode: nothing given in the band
    if hidden == "free":
        assert np.array_equal(zero_free, band) and np.array_equal(rel_free, band)
        assert np.array_equal(rel_est, gap)                      # the fill is released in the gap only
    else:
        assert zero_free is None and rel_free is None
        assert np.array_equal(rel_est, gap | band)
    for intensity in (free_i, zero_i):
        assert not intensity[band].any()
    np.testing.assert_array_equal(rel_i[~(gap | band)], counts[~(gap | band)])
