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
