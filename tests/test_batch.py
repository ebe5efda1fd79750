"""bcdi_gapfill.workflow.batch: a scan series on Dask distributed.

Tiny bcdi pairs (32 x 64 x 64, a 3-pixel chip cross masked in every frame, a hot pixel and
an alien) are gap-filled on a LocalCluster of 2 workers, with one corrupt data file and one
scan without its mask file among them. Classical fills keep it fast; one test uses the
shipped model. SLURM cannot run here: its test checks the job script dask-jobqueue builds.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

import distributed  # noqa: E402,F401  (a test extra: missing fails the suite)

from bcdi_gapfill.workflow import batch  # noqa: E402
from bcdi_gapfill.cli.commands import main  # noqa: E402

SHAPE = (32, 64, 64)
GAP_ROWS, GAP_COLS = slice(30, 33), slice(36, 39)
COMMENT = "_align-q-y_32_64_64_1_1_1"


def _write_pair(directory, scan, seed, *, corrupt=False, with_mask=True, shape=SHAPE, cross=True):
    from bcdi_gapfill.core.simulate import simulate_pattern
    counts = simulate_pattern(shape, seed, peak_counts=1e5).counts.astype(np.float64)
    mask = np.zeros(shape, np.int8)
    if cross:
        mask[:, GAP_ROWS, :] = 1
    mask[:, :, GAP_COLS] = 1
    mask[:, 5, 7] = 1                    # hot pixel
    mask[10:12, 40:43, 45:48] = 1        # alien, a few frames only
    data = np.where(mask != 0, 0.0, counts)
    data_path = directory / f"S{scan}_pynx{COMMENT}.npz"
    if corrupt:
        data_path.write_bytes(b"PK\x03\x04 truncated npz" + bytes(range(40)))
    else:
        np.savez_compressed(data_path, data=data)
    if with_mask:
        np.savez_compressed(directory / f"S{scan}_maskpynx{COMMENT}.npz", mask=mask)
    return data_path, data, mask


@pytest.fixture(scope="module")
def client():
    """2 process workers: process workers (the default of the config) start in ~1-2 s here."""
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as dask_client:
        yield dask_client


@pytest.fixture
def series(tmp_path):
    """Scans S2, S3, S10 (valid), S4 (corrupt data file), S5 (no mask file)."""
    scans = tmp_path / "scans"
    scans.mkdir()
    pairs = {f"S{n}": _write_pair(scans, n, seed) for n, seed in ((2, 1), (3, 2), (10, 3))}
    _write_pair(scans, 4, 4, corrupt=True)
    _write_pair(scans, 5, 5, with_mask=False)
    config = {"input": str(scans / "S*_pynx*.npz"), "out_dir": str(tmp_path / "out"),
              "gapfill": {"method": "linear"}}
    return config, pairs


def _rows(summary):
    return {row["scan"]: row for row in summary["scans"]}


def _mtimes(out_dir):
    return {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir() if not p.name.startswith("summary")}


def test_find_scans_order_masks_and_outputs_excluded(series, tmp_path):
    config, _ = series
    (tmp_path / "scans" / f"S2_pynx{COMMENT}_gapfilled.npz").write_bytes(b"an earlier output")
    scans = batch.find_scans(config["input"])
    assert [s["scan"] for s in scans] == ["S2", "S3", "S4", "S5", "S10"]
    by_scan = {s["scan"]: s for s in scans}
    assert by_scan["S3"]["mask"].endswith(f"S3_maskpynx{COMMENT}.npz") and not by_scan["S3"]["mask_missing"]
    assert by_scan["S5"]["mask_missing"]
    with pytest.raises(ValueError, match="no scan file matches"):
        batch.find_scans(str(tmp_path / "nothing_*.npz"))


def test_series_fills_reports_failures_and_resumes(series, client, tmp_path):
    config, pairs = series
    out = tmp_path / "out"
    summary = batch.run_series(config, client=client, progress=False)
    rows = _rows(summary)
    assert summary["counts"] == {"ok": 3, "skipped": 0, "failed": 2}
    assert [row["scan"] for row in summary["scans"]] == ["S2", "S3", "S4", "S5", "S10"]
    assert rows["S4"]["status"] == "failed" and "cannot read" in rows["S4"]["error"]
    assert rows["S5"]["status"] == "failed" and "no mask file" in rows["S5"]["error"]
    gap_voxels = SHAPE[0] * (3 * 64 * 2 - 9)
    for name, (data_path, data, mask) in pairs.items():
        row = rows[name]
        assert row["status"] == "ok" and row["error"] is None and row["voxels_filled"] == gap_voxels
        filled = np.load(row["outputs"]["data"])["data"]
        new_mask = np.load(row["outputs"]["mask"])["mask"]
        gap = np.zeros(SHAPE, bool)
        gap[:, GAP_ROWS, :] = gap[:, :, GAP_COLS] = True
        assert np.array_equal(filled[~gap], data[~gap]) and (filled[gap] > 0).any()
        assert not new_mask[gap].any() and new_mask[:, 5, 7].all() and new_mask[10:12, 40:43, 45:48].all()
        record = json.loads(open(row["outputs"]["record"]).read())
        assert record["method"] == "linear" and record["gap_voxels_filled"] == gap_voxels
    # the summary files hold the same table
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["counts"] == summary["counts"] and len(on_disk["scans"]) == 5
    markdown = (out / "summary.md").read_text()
    assert "| S4 | failed |" in markdown and "| S10 | ok | %d |" % gap_voxels in markdown

    # second run: the done scans are skipped, their files untouched; the bad ones fail again
    before = _mtimes(out)
    summary = batch.run_series(config, client=client, progress=False)
    assert summary["counts"] == {"ok": 0, "skipped": 3, "failed": 2}
    assert _rows(summary)["S3"]["voxels_filled"] == gap_voxels and _mtimes(out) == before

    # an interrupted run: S3 lost its record (killed between its files), S10 lost its data output
    os.remove(rows["S3"]["outputs"]["record"])
    os.remove(rows["S10"]["outputs"]["data"])
    rows = _rows(batch.run_series(config, client=client, progress=False))
    assert [rows[s]["status"] for s in ("S2", "S3", "S10")] == ["skipped", "ok", "ok"]
    assert os.path.exists(rows["S10"]["outputs"]["data"]) and os.path.exists(rows["S3"]["outputs"]["record"])

    # other settings: refused, nothing replaced, unless overwrite
    before = _mtimes(out)
    changed = {**config, "gapfill": {"method": "biharmonic"}}
    rows = _rows(batch.run_series(changed, client=client, progress=False))
    assert rows["S2"]["status"] == "failed" and "outputs exist from another run" in rows["S2"]["error"]
    assert "method 'linear' != 'biharmonic'" in rows["S2"]["error"] and _mtimes(out) == before
    rows = _rows(batch.run_series(changed, client=client, progress=False, overwrite=True))
    assert rows["S2"]["status"] == "ok"
    assert json.loads(open(rows["S2"]["outputs"]["record"]).read())["method"] == "biharmonic"

    # a changed input file is not skipped either
    data_path, data, _ = pairs["S3"]
    np.savez_compressed(data_path, data=data * 2)
    rows = _rows(batch.run_series(changed, client=client, progress=False))
    assert rows["S3"]["status"] == "failed" and "data file SHA-256 differs" in rows["S3"]["error"]


@pytest.mark.slow   # a CLI subprocess (imports, cluster start): ~10-12 s here
def test_a_killed_run_resumes(tmp_path, client):
    """The CLI is killed (SIGKILL) once a first scan is done; the next run does only the rest."""
    import subprocess
    import sys
    import time
    scans = tmp_path / "scans"
    scans.mkdir()
    for n in range(1, 7):
        _write_pair(scans, n, n)
    config = {"input": str(scans / "S*_pynx*.npz"), "out_dir": str(tmp_path / "out"),
              "gapfill": {"method": "biharmonic"},
              "cluster": {"kind": "local", "n_workers": 1, "processes": False, "dashboard_address": ":0"}}
    path = tmp_path / "series.yml"
    path.write_text(yaml.safe_dump(config))
    run = subprocess.Popen([sys.executable, "-m", "bcdi_gapfill.cli", "batch", "--config", str(path), "--no-progress"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while run.poll() is None and not list((tmp_path / "out").glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        run.kill()
        run.wait()
    done_before = {p.name for p in (tmp_path / "out").glob("S*.json")}
    assert done_before, "the run was killed before any scan was done"
    summary = batch.run_series(config, client=client, progress=False)
    rows = _rows(summary)
    skipped = {Path(r["outputs"]["record"]).name for r in rows.values() if r["status"] == "skipped"}
    assert summary["counts"]["failed"] == 0 and summary["counts"]["ok"] + len(skipped) == 6
    assert done_before <= skipped
    for row in rows.values():
        assert np.load(row["outputs"]["data"])["data"].shape == SHAPE


def test_series_with_the_shipped_model_resumes(tmp_path, client):
    scans = tmp_path / "scans"
    scans.mkdir()
    _write_pair(scans, 7, 7, shape=(32, 40, 48), cross=False)   # one band: few model windows
    config = {"input": str(scans / "S*_pynx*.npz"), "out_dir": str(tmp_path / "out")}
    row = batch.run_series(config, client=client, progress=False)["scans"][0]
    assert row["status"] == "ok", row["error"]
    record = json.loads(open(row["outputs"]["record"]).read())
    from bcdi_gapfill.fill.inpainting import default_model_info
    assert record["method"] == "model" and record["weights_sha256"] == default_model_info()["sha256"]
    assert batch.run_series(config, client=client, progress=False)["scans"][0]["status"] == "skipped"


def test_cli_batch_on_a_local_cluster_with_reports(series, tmp_path, capsys):
    config, pairs = series
    config = {**config, "report": True,
              "cluster": {"kind": "local", "n_workers": 2, "threads_per_worker": 1, "processes": False,
                          "dashboard_address": ":0"}}
    path = tmp_path / "series.yml"
    path.write_text(yaml.safe_dump(config))
    assert main(["batch", "--config", str(path), "--no-progress"]) == 1   # two scans failed
    printed = capsys.readouterr().out
    assert "S4    failed" in printed and "3 ok, 0 skipped, 2 failed" in printed
    out = tmp_path / "out"
    reports = sorted(p.name for p in out.glob("*_report.png"))
    assert reports == sorted(f"S{n}_pynx{COMMENT}_gapfilled_report.png" for n in (2, 3, 10))
    assert (out / reports[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # without the bad scans, every scan is skipped and the exit status is 0
    for name in ("S4_pynx", "S5_pynx"):
        os.remove(tmp_path / "scans" / f"{name}{COMMENT}.npz")
    assert main(["batch", "--config", str(path), "--no-progress"]) == 0
    assert "0 ok, 3 skipped, 0 failed" in capsys.readouterr().out


SLURM = {"kind": "slurm", "queue": "gpu", "account": "id01", "cores": 8, "memory": "32GiB", "walltime": "02:30:00",
         "gpus_per_job": 1, "jobs": 4, "job_script_prologue": ["module load cuda"],
         "job_extra_directives": ["--constraint=a100"]}


def test_slurm_job_script_holds_the_requested_resources(tmp_path, capsys):
    script = batch.slurm_job_script(SLURM)
    for line in ("#SBATCH -p gpu", "#SBATCH -A id01", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G",
                 "#SBATCH -t 02:30:00", "#SBATCH --gres=gpu:1", "#SBATCH --constraint=a100", "module load cuda",
                 "--resources GPU=1", "--nthreads 8"):
        assert line in script, (line, script)
    cpu_only = batch.slurm_job_script({**SLURM, "gpus_per_job": 0})
    assert "--gres" not in cpu_only and "GPU=" not in cpu_only
    path = tmp_path / "slurm.yml"
    path.write_text(yaml.safe_dump({"input": "scans/S*_pynx*.npz", "out_dir": "out", "cluster": SLURM}))
    assert main(["batch", "--config", str(path), "--print-job-script"]) == 0
    assert "#SBATCH --gres=gpu:1" in capsys.readouterr().out


def test_example_workflow_configs_are_valid():
    workflows = Path(__file__).resolve().parent.parent / "workflows"
    local = batch.load_series_config(workflows / "series.yml")
    assert local["cluster"]["kind"] == "local"
    slurm = batch.load_series_config(workflows / "series_slurm.yml")
    script = batch.slurm_job_script(slurm["cluster"])
    assert f"#SBATCH -p {slurm['cluster']['queue']}" in script and "--gres=gpu:" in script


@pytest.mark.parametrize("change, message", [
    ({"inptu": "x"}, "unknown keys"),
    ({"out_dir": None}, "'out_dir' must be given"),
    ({"cluster": {"kind": "pbs"}}, "cluster.kind must be"),
    ({"cluster": {"kind": "local", "n_workers": 0}}, "cluster.n_workers must be an integer >= 1"),
    ({"cluster": {**SLURM, "processes": 2}}, "one worker process"),
    ({"cluster": {**SLURM, "memory": None}}, "cluster.memory must be a size"),
    ({"cluster": {"kind": "slurm", "cores": 4, "memory": "8GB", "gres": "gpu:1"}}, "unknown keys in cluster"),
    ({"gapfill": {"method": "magic"}}, "gapfill.method must be"),
    ({"gapfill": {"roi": [0, 64, 0, 64]}}, "set gapfill.detector too"),
    ({"gapfill": {"detector": "Maxipix", "binning": [1, 2]}}, "gapfill.binning must be a list of 3"),
    ({"gapfill": {"detector": "NoSuchDetector"}}, "unknown detector"),
])
def test_config_errors_name_the_problem(change, message):
    config = {"input": "scans/S*_pynx*.npz", "out_dir": "out", **change}
    with pytest.raises(ValueError, match=message):
        batch.load_series_config(config)


def test_each_scan_on_its_own_gpu(monkeypatch):
    monkeypatch.setattr(batch, "_cuda_device_count", lambda: 2)
    with batch._device_for_scan(None, "model") as first, batch._device_for_scan(None, "model") as second:
        assert {first, second} == {"cuda:0", "cuda:1"}
    with batch._device_for_scan(None, "model") as again:
        assert again == "cuda:0"
    with batch._device_for_scan("cpu", "model") as chosen, batch._device_for_scan(None, "linear") as classical:
        assert chosen == "cpu" and classical is None
    monkeypatch.setattr(batch, "_cuda_device_count", lambda: 1)
    with batch._device_for_scan(None, "model") as single:
        assert single is None     # inpaint's default: cuda when present


def test_imports_stay_lazy_and_a_missing_dask_is_named(monkeypatch, tmp_path):
    import subprocess
    import sys
    code = ("import sys, bcdi_gapfill, bcdi_gapfill.workflow.batch, bcdi_gapfill.cli.commands; bcdi_gapfill.cli.commands.build_parser(); "
            "print(sorted(m for m in ('dask', 'distributed', 'dask_jobqueue', 'ewokscore') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
    monkeypatch.setitem(sys.modules, "distributed", None)     # as if dask[distributed] were not installed
    with pytest.raises(ImportError, match=r"pip install 'bcdi-gapfill\[batch\]'"):
        batch.make_cluster({"kind": "local"})
