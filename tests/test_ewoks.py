"""bcdi_gapfill.integrations.ewoks: the bcdi stage as Ewoks tasks, run through one-node Ewoks graphs.

Graphs are built as ESRF workflows write them (nodes with ``task_type: class`` and a
``task_identifier``), loaded with ``ewokscore.load_graph`` or from a JSON file, and run with
``ewokscore.execute_graph`` on a tiny bcdi pair (32 x 64 x 64, 3-pixel chip cross).
"""
import json

import numpy as np
import pytest

import ewokscore  # noqa: E402,F401  (a test extra: missing fails the suite)

from ewokscore import execute_graph, load_graph  # noqa: E402
from ewokscore.task_discovery import discover_tasks_from_modules  # noqa: E402

from bcdi_gapfill.core.io import file_sha256  # noqa: E402

SHAPE = (32, 64, 64)


def _pair(seed=1, shape=SHAPE, cross=True):
    from bcdi_gapfill.core.simulate import simulate_pattern
    counts = simulate_pattern(shape, seed, peak_counts=1e5).counts.astype(np.float64)
    gap = np.zeros(shape, bool)
    gap[:, :, 36:39] = True
    if cross:
        gap[:, 30:33, :] = True
    mask = gap.astype(np.int8)
    mask[:, 5, 7] = 1                                 # hot pixel: stays masked
    return np.where(mask != 0, 0.0, counts), mask, gap


def _graph(task, inputs):
    return {"graph": {"id": "gapfill_one_node", "schema_version": "1.2"},
            "nodes": [{"id": "gapfill", "task_type": "class", "task_identifier": f"bcdi_gapfill.integrations.ewoks.{task}",
                       "default_inputs": [{"name": k, "value": v} for k, v in inputs.items()]}],
            "links": []}


@pytest.fixture
def bcdi_pair(tmp_path):
    data, mask, gap = _pair()
    data_path = tmp_path / "S12_pynx_32_64_64_1_1_1.npz"
    mask_path = tmp_path / "S12_maskpynx_32_64_64_1_1_1.npz"
    np.savez_compressed(data_path, data=data)
    np.savez_compressed(mask_path, mask=mask)
    return data_path, mask_path, data, mask, gap


def test_file_task_in_a_graph_loaded_from_json(bcdi_pair, tmp_path):
    data_path, mask_path, data, mask, gap = bcdi_pair
    hashes = (file_sha256(data_path), file_sha256(mask_path))
    out_dir = tmp_path / "filled"
    out_dir.mkdir()
    workflow = tmp_path / "gapfill.json"
    workflow.write_text(json.dumps(_graph("GapFillTask", {"data_path": str(data_path), "mask_path": str(mask_path),
                                                           "out_dir": str(out_dir), "method": "biharmonic"})))
    assert load_graph(str(workflow)).graph.number_of_nodes() == 1
    outputs = execute_graph(str(workflow))

    assert outputs["voxels_filled"] == int(gap.sum())
    assert outputs["data_path"] == str(out_dir / "S12_pynx_32_64_64_1_1_1_gapfilled.npz")
    filled = np.load(outputs["data_path"])["data"]
    new_mask = np.load(outputs["mask_path"])["mask"]
    assert np.array_equal(filled[~gap], data[~gap]) and (filled[gap] >= 0).all() and (filled[gap] > 0).any()
    assert not new_mask[gap].any() and new_mask[:, 5, 7].all()
    record = json.loads(open(outputs["record_path"]).read())
    assert record == outputs["record"] and record["method"] == "biharmonic"
    assert (record["inputs"]["data_sha256"], record["inputs"]["mask_sha256"]) == hashes
    assert (file_sha256(data_path), file_sha256(mask_path)) == hashes     # originals untouched

    # a second run refuses to replace the outputs unless told to
    with pytest.raises(Exception, match="outputs exist"):
        execute_graph(str(workflow))
    outputs = execute_graph(str(workflow), inputs=[{"id": "gapfill", "name": "overwrite", "value": True},
                                                   {"id": "gapfill", "name": "method", "value": "linear"}])
    assert outputs["record"]["method"] == "linear"


def test_file_task_reports_a_corrupt_file(tmp_path):
    bad = tmp_path / "S3_pynx_32_64_64_1_1_1.npz"
    bad.write_bytes(b"not an npz file")
    graph = load_graph(_graph("GapFillTask", {"data_path": str(bad), "method": "linear"}))
    with pytest.raises(Exception, match="cannot read") as caught:
        execute_graph(graph)
    assert type(caught.value).__name__ == "TaskExecutionError"
    assert not list(tmp_path.glob("*_gapfilled*"))


def test_array_task_with_the_shipped_model():
    data, mask, gap = _pair(seed=2, shape=(32, 40, 48), cross=False)   # one band: a few model windows
    data = data.astype(np.float32)
    graph = _graph("GapFillArraysTask", {})
    outputs = execute_graph(graph, inputs=[{"id": "gapfill", "name": "data", "value": data},
                                           {"id": "gapfill", "name": "mask", "value": mask}])
    filled, new_mask, record = outputs["data"], outputs["mask"], outputs["record"]
    assert filled.dtype == np.float32 and np.array_equal(filled[~gap], data[~gap])
    assert np.isfinite(filled[gap]).all() and (filled[gap] >= 0).all() and not new_mask[gap].any()
    from bcdi_gapfill.fill.inpainting import default_model_info
    assert record["method"] == "model" and record["weights_sha256"] == default_model_info()["sha256"]
    assert record["gap_voxels_filled"] == int(gap.sum())


def test_tasks_are_discoverable():
    found = {t["task_identifier"]: t for t in discover_tasks_from_modules("bcdi_gapfill.integrations.ewoks",
                                                                         task_type="class")}
    files = found["bcdi_gapfill.integrations.ewoks.GapFillTask"]
    assert files["required_input_names"] == ["data_path"]
    assert {"mask_path", "method", "detector", "out_dir"} <= set(files["optional_input_names"])
    assert {"data_path", "mask_path", "record_path", "voxels_filled"} <= set(files["output_names"])
    assert found["bcdi_gapfill.integrations.ewoks.GapFillArraysTask"]["required_input_names"] == ["data"]
    # through the package's "ewoks.tasks.class" entry point, as `ewoks discover` finds tasks
    from ewokscore.task_discovery import discover_all_tasks
    listed = {t["task_identifier"] for t in discover_all_tasks(task_type="class")}
    assert {"bcdi_gapfill.integrations.ewoks.GapFillTask", "bcdi_gapfill.integrations.ewoks.GapFillArraysTask"} <= listed
