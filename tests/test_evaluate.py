import numpy as np

from bcdi_gapfill.evaluate import _markdown, portion_table
from bcdi_gapfill.model import build_model


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
    from bcdi_gapfill.evaluate import whole_array_table
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
