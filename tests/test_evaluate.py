import numpy as np
import pytest

from bcdi_gapfill.validation.evaluate import _markdown, portion_table
from bcdi_gapfill.nn.model import build_model


def test_portion_table_structure_and_baselines(tiny_bank):
    model = build_model({"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4], "prefill_iterations": 20}).eval()
    table = portion_table(tiny_bank, {"model": model}, widths=(3, 6), n_portions=8)
    assert set(table["methods"]) == {"linear", "cubic", "nearest", "biharmonic", "model"}
    for m in table["methods"].values():
        assert len(m["pcc"]) == 2 and all(-1 <= v <= 1 for v in m["pcc"])
    assert table["headroom"]["linear"] == [0.0, 0.0]
    # The noise-free expectation is the best possible fill on average.
    assert all(c >= max(m["pcc"][i] for m in table["methods"].values()) - 0.05
               for i, c in enumerate(table["ceiling"]))
    text = _markdown(table, None)
    assert "| biharmonic |" in text and "Poisson ceiling" in text


def test_whole_array_table_per_width():
    from bcdi_gapfill.validation.evaluate import whole_array_table
    model = build_model({"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4], "prefill_iterations": 10}).eval()
    table, slices = whole_array_table({"model": model}, n_arrays=1, size=48, widths=(3, 6), stride=16)
    assert [r["width"] for r in table["rows"]] == [3, 6]
    assert set(table["per_width"]) == {"3", "6"}
    for row in table["rows"]:
        assert row["linear_headroom"] == 0.0 and -1 <= row["biharmonic"] <= 1
    assert slices["width"] == 3 and slices["truth"].shape == (48, 48)
    text = _markdown({"widths": [3], "n_portions": 0, "methods": {}, "headroom": {}, "ceiling": [],
                      "ceiling_signal": [], "n_signal": [0]}, table)
    assert "| 6 |" in text and "mean headroom" in text


def test_peak_cross_gap_is_centred_on_the_peak_plus_the_offset():
    from bcdi_gapfill.validation.evaluate import peak_cross_gap
    gap = peak_cross_gap((16, 40, 40), 5, (8, 20, 22), 0)
    rows, cols = np.flatnonzero(gap[0].all(axis=1)), np.flatnonzero(gap[0].all(axis=0))
    assert list(rows) == [18, 19, 20, 21, 22] and list(cols) == [20, 21, 22, 23, 24]
    assert gap[8, 20, 22]                                     # the peak is inside the cross
    gap = peak_cross_gap((16, 40, 40), 4, (8, 20, 22), 6)
    assert list(np.flatnonzero(gap[0].all(axis=1))) == [24, 25, 26, 27]
    assert not gap[8, 20, 22]
    gap = peak_cross_gap((16, 40, 40), 4, (8, 38, 38), 6)    # clipped into the array
    assert list(np.flatnonzero(gap[0].all(axis=1))) == [36, 37, 38, 39]


def test_peak_cross_table_photon_ratio_and_error_reduction():
    from bcdi_gapfill.validation.evaluate import format_peak_cross_table, peak_cross_table
    model = build_model({"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4], "prefill_iterations": 10}).eval()
    table = peak_cross_table({"model": model}, n_arrays=1, n_scans=1, size=48, widths=(3,), offsets=(0, 8),
                             stride=16)
    assert [(r["simulator"], r["offset"]) for r in table["rows"]] == [
        ("bcdi_gapfill", 0), ("bcdi_gapfill", 8), ("cdiutils", 0), ("cdiutils", 8)]
    for row in table["rows"]:
        assert row["hidden_photons"] > 0 and 0 < row["linear_photon_ratio"] < 2
        assert row["biharmonic_error"] > 0
        assert row["model_error_reduction"] == pytest.approx(1 - row["model_error"] / row["biharmonic_error"])
    # A gap through the peak hides more photons than one 8 px away.
    near, far = table["rows"][:2]
    assert near["hidden_photons"] > far["hidden_photons"]
    assert len(table["per_cell"]) == 4 and table["per_cell"][0]["n"] == 1
    text = format_peak_cross_table(table)
    assert text.count("\n") == 2 + 4 and "| cdiutils | 3 | 8 | 1 |" in text


def test_run_evaluation_small(tmp_path, capsys):
    from bcdi_gapfill.validation.evaluate import run_evaluation
    summary = run_evaluation(tmp_path / "eval", n_portions=20, n_arrays=1, n_test_patterns=2, cache_dir=None,
                             array_widths=(3,), n_scans=0, n_peak_arrays=1, n_peak_scans=0, size=48, stride=16)
    assert set(summary["peak_position"]) == {"near_peak", "off_peak"}
    assert summary["peak_position"]["near_peak"]["offsets"] == [0, 2, 4]
    text = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "near-peak" in text and "off-peak" in text and "photon ratio" in text
    assert (tmp_path / "eval" / "evaluation.json").is_file()
    with pytest.raises(FileExistsError):
        run_evaluation(tmp_path / "eval", n_portions=20, n_arrays=0, n_test_patterns=2, cache_dir=None,
                       n_scans=0, n_peak_arrays=0, n_peak_scans=0, size=48)
