"""The cdiutils stage and the cdiutils-simulated scans, against cdiutils itself (0.2.1).

cdiutils' ``BCDISimulator`` makes a Maxipix scan with the Bragg peak near the chip cross;
``bcdi_gapfill.validation.scans.write_id01_master_file`` writes it as the ID01 (BLISS) entries cdiutils'
loader reads; the real ``BcdiPipeline.preprocess`` crops and saves it; our stage fills the gap;
``phase_retrieval`` is then pointed at the filled pair. The full PyNX phasing of the filled
pair (in-process, cdiutils' ``PyNXPhaser`` on the CPU PyNX) is marked slow.
"""
import hashlib
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cdiutils  # noqa: E402,F401  (a test extra: missing fails the suite)

from bcdi_gapfill.validation import scans  # noqa: E402
from bcdi_gapfill.integrations.cdiutils import (  # noqa: E402
    cdiutils_output_paths, fill_cdiutils_files, fill_pipeline_gaps, pipeline_input_paths)
from bcdi_gapfill.core.geometry import gap_mask_from_mask  # noqa: E402
from bcdi_gapfill.fill.inpainting import inpaint  # noqa: E402
from bcdi_gapfill.core.metrics import pcc_gap  # noqa: E402

SHAPE = (32, 64, 64)     # frames, rows, columns: the smallest crop the model serves


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_scan():
    return scans.simulate_cdiutils_scan(3, SHAPE)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    """A simulated ID01 scan preprocessed by cdiutils' own pipeline (about 10 s: mostly its plots)."""
    import matplotlib
    matplotlib.use("Agg")
    from cdiutils.pipeline import BcdiPipeline

    root = tmp_path_factory.mktemp("cdiutils")
    scan = scans.simulate_cdiutils_scan(3, SHAPE, full_detector=True)
    params = scans.write_id01_master_file(scan, root / "sim.h5")
    # An alien near the peak, masked in 5 frames only: not a gap, so it must stay masked.
    peak = scan.metadata["peak_pixel"]
    aliens = np.zeros(scan.counts.shape, np.int8)
    aliens[14:19, peak[0] + 12:peak[0] + 15, peak[1] + 12:peak[1] + 15] = 1
    np.save(root / "aliens.npy", aliens)
    params.update(dump_dir=str(root / "S1"), preprocess_shape=SHAPE, voxel_reference_methods=["max"],
                  alien_mask=str(root / "aliens.npy"), show=False)
    pipeline = BcdiPipeline(params)
    pipeline.preprocess()
    return {"pipeline": pipeline, "params": params, "scan": scan, "aliens": aliens, "root": root}


def _new_pipeline(params):
    from cdiutils.pipeline import BcdiPipeline
    return BcdiPipeline(dict(params))


# ------------------------------------------------------------------------- the simulator
def test_scan_has_the_maxipix_cross_near_the_peak(tiny_scan):
    scan = tiny_scan
    assert scan.counts.shape == SHAPE and scan.counts.dtype == np.float32
    # the gap found from cdiutils' mask is its chip cross: 6 rows and 6 columns, every frame
    gap2d = scan.gap_mask[0]
    assert (scan.gap_mask == gap2d).all()
    assert gap2d.all(axis=1).sum() == 6 and gap2d.all(axis=0).sum() == 6
    assert np.array_equal(scan.gap_mask, scan.mask.astype(bool))
    assert all(abs(d) <= 10 for d in scan.metadata["peak_to_cross_px"])
    assert (scan.counts[scan.gap_mask] == 0).all()
    assert np.array_equal(scan.counts[~scan.gap_mask], scan.truth[~scan.gap_mask])
    assert scan.truth[scan.gap_mask].sum() > 0      # the gap hides photons
    assert scan.expected.max() == pytest.approx(scan.metadata["peak_counts"], rel=1e-5)


def test_crop_is_the_simulators_detector_frame():
    """The crop route gives the voxels of cdiutils' to_detector_frame (whole detector) exactly."""
    import cdiutils.simulation
    from cdiutils.utils import transform_volume

    shape = (8, 48, 48)
    full_scan = scans.simulate_cdiutils_scan(5, shape, full_detector=True)
    crop_scan = scans.simulate_cdiutils_scan(5, shape)
    r0, r1, c0, c1 = crop_scan.roi
    np.testing.assert_allclose(full_scan.expected[:, r0:r1, c0:c1], crop_scan.expected, rtol=1e-6)
    np.testing.assert_array_equal(full_scan.mask[:, r0:r1, c0:c1], crop_scan.mask)

    sim = cdiutils.simulation.BCDISimulator(energy=9000, lattice_parameter=3.924e-10, num_frames=8,
                                            det_calib_params=crop_scan.metadata["det_calib_params"])
    rng = np.random.default_rng(0)
    sim.set_object(rng.random((24, 24, 24)) * np.exp(1j * rng.random((24, 24, 24))), voxel_size=100e-9)
    bragg = sim.lattice_parameter_to_bragg_angle()
    sim.set_measurement_params(bragg_angle=bragg, rocking_range=0.05,
                               detector_angles=sim.get_detector_angles(scattering_angle=2 * bragg))
    whole = sim.to_detector_frame(plot=False)
    crop = transform_volume(sim.intensity, sim.q_to_detector_matrix, output_shape=shape)
    np.testing.assert_array_equal(whole[:, 258 - 24:258 + 24, 258 - 24:258 + 24], crop)


def test_simulator_is_kept_out_of_training():
    import bcdi_gapfill
    package = Path(bcdi_gapfill.__file__).parent
    for module in ("nn/dataset.py", "nn/train.py", "core/simulate.py"):
        source = (package / module).read_text()
        assert "cdiutils" not in source and "bcdi_gapfill.validation.scans" not in source, module
        assert "import scans" not in source, module


# ------------------------------------------------------------------ pipeline, end to end
def test_pipeline_preprocess_fill_and_phase_retrieval_inputs(preprocessed):
    pipeline, scan = preprocessed["pipeline"], preprocessed["scan"]
    # cdiutils read our ID01 file as a beamline file: it finds the simulated Pt lattice
    assert pipeline.atomic_params["lattice_parameter"]["max"] == pytest.approx(3.924, abs=2e-3)
    originals = pipeline_input_paths(pipeline)
    before = {k: _sha(p) for k, p in originals.items()}
    data0 = np.load(originals["data"])["data"]
    mask0 = np.load(originals["mask"])["data"]
    assert data0.shape == SHAPE

    paths = fill_pipeline_gaps(pipeline, method="biharmonic")

    assert {k: _sha(p) for k, p in originals.items()} == before          # originals untouched
    assert paths["data"].parent.name == "pynx_phasing_gapfilled"
    assert paths["data"].name == originals["data"].name and paths["mask"].name == originals["mask"].name
    assert pipeline.pynx_phasing_dir == str(paths["data"].parent) + "/"
    assert pipeline_input_paths(pipeline) == {"data": paths["data"], "mask": paths["mask"]}

    with np.load(paths["data"]) as npz, np.load(paths["mask"]) as npz_mask:
        assert npz.files == ["data"] and npz_mask.files == ["data"]      # as cdiutils writes them
        filled, mask1 = npz["data"], npz_mask["data"]
    gap = gap_mask_from_mask(mask0)
    assert gap[0].all(axis=1).sum() == 6 and gap[0].all(axis=0).sum() == 6
    np.testing.assert_array_equal(filled[~gap], data0[~gap])                # measured voxels unchanged
    np.testing.assert_array_equal(mask1, np.where(gap, 0, mask0))           # only the gap released
    r0, r1, c0, c1 = pipeline.converter.roi
    aliens = preprocessed["aliens"][:, r0:r1, c0:c1].astype(bool)
    assert aliens.any() and (mask1[aliens] == 1).all()                      # the alien stays masked

    # the filled voxels against the simulator's gap-free intensity
    truth = scan.truth[:, r0:r1, c0:c1]
    assert np.array_equal(data0, scan.counts[:, r0:r1, c0:c1] * ~aliens)   # the crop we think it is
    pcc_fill = pcc_gap(truth, filled, gap)
    pcc_linear = pcc_gap(truth, inpaint(data0, gap, method="linear"), gap)
    assert pcc_fill > pcc_linear > 0.5

    record = json.loads(paths["record"].read_text())
    assert record["stage"] == "cdiutils" and record["method"] == "biharmonic"
    assert record["gap_voxels_filled"] == int(gap.sum())
    assert record["inputs"]["data_sha256"] == before["data"]
    assert record["cdiutils_version"].startswith("0.2")

    # cdiutils' phase_retrieval now reads the filled pair (the PyNX command is a no-op here)
    pipeline.phase_retrieval(cmd="true")
    inputs = dict(line.split(" = ", 1) for line in
                  (paths["data"].parent / "pynx-cdi-inputs.txt").read_text().splitlines() if " = " in line)
    assert inputs["data"] == str(paths["data"]) and inputs["mask"] == str(paths["mask"])


def test_pipeline_stage_in_a_new_session_refills_from_the_originals(preprocessed, tmp_path):
    pipeline = _new_pipeline(preprocessed["params"])                # preprocess ran in an earlier session
    originals = pipeline_input_paths(pipeline)
    paths = fill_pipeline_gaps(pipeline, out_dir=tmp_path, method="biharmonic")
    assert pipeline.pynx_phasing_dir == str(tmp_path) + "/"
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        fill_pipeline_gaps(pipeline, method="linear")
    again = fill_pipeline_gaps(pipeline, method="linear", overwrite=True)
    assert again == paths
    record = json.loads(paths["record"].read_text())
    assert record["method"] == "linear"
    assert record["inputs"]["data"] == str(originals["data"].resolve())    # not the filled copy


def test_pipeline_stage_refusals(preprocessed, tmp_path):
    params = dict(preprocessed["params"], dump_dir=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"run pipeline.preprocess\(\) first"):
        fill_pipeline_gaps(_new_pipeline(params), method="biharmonic")
    params["orthogonalise_before_phasing"] = True
    with pytest.raises(ValueError, match="orthogonalise_before_phasing=True"):
        fill_pipeline_gaps(_new_pipeline(params), method="biharmonic")
    with pytest.raises(TypeError, match="must be a cdiutils BcdiPipeline"):
        fill_pipeline_gaps(object())


# ------------------------------------------------------------------------------- on files
def _cdiutils_pair(directory, scan):
    """The pair as cdiutils' _save_preprocessed_data writes it: np.savez, entry 'data' in both."""
    directory.mkdir()
    data_path = directory / "S7_pynx_input_data.npz"
    mask_path = directory / "S7_pynx_input_mask.npz"
    np.savez(data_path, data=scan.counts.astype(np.int32))
    mask = scan.mask.astype(np.float64)
    mask[:, 3, 5] = 1                                                     # a hot pixel
    np.savez(mask_path, data=mask)
    return data_path, mask_path


def test_fill_cdiutils_files_default_model(tiny_scan, tmp_path):
    data_path, mask_path = _cdiutils_pair(tmp_path / "pynx_phasing", tiny_scan)
    before = (_sha(data_path), _sha(mask_path))
    paths = fill_cdiutils_files(data_path, mask_path)            # the shipped model
    assert paths == cdiutils_output_paths(data_path, mask_path)
    assert paths["data"] == tmp_path / "pynx_phasing_gapfilled" / "S7_pynx_input_data.npz"
    assert (_sha(data_path), _sha(mask_path)) == before
    filled = np.load(paths["data"])["data"]
    mask = np.load(paths["mask"])["data"]
    gap = tiny_scan.gap_mask
    assert filled.dtype == np.float64 and mask.dtype == np.float64
    assert mask[:, 3, 5].all() and mask.sum() == SHAPE[0]                 # only the hot pixel left
    assert pcc_gap(tiny_scan.truth, filled, gap) > pcc_gap(tiny_scan.truth, inpaint(tiny_scan.counts, gap,
                                                                                   method="linear"), gap)
    record = json.loads(paths["record"].read_text())
    assert record["method"] == "model" and len(record["weights_sha256"]) == 64


def test_fill_cdiutils_files_refusals(tiny_scan, tmp_path):
    data_path, mask_path = _cdiutils_pair(tmp_path / "pynx_phasing", tiny_scan)
    with pytest.raises(ValueError, match="refusing to write the data output over the input"):
        fill_cdiutils_files(data_path, mask_path, out_dir=data_path.parent, method="biharmonic")
    with pytest.raises(FileNotFoundError, match="output directory .* does not exist"):
        fill_cdiutils_files(data_path, mask_path, out_dir=tmp_path / "nowhere", method="biharmonic")
    with pytest.raises(ValueError, match="same name"):
        fill_cdiutils_files(data_path, tmp_path / "other" / data_path.name, method="biharmonic")
    with pytest.raises(ValueError, match="must be a cdiutils .npz"):
        fill_cdiutils_files(data_path.with_suffix(".npy"), mask_path)
    fill_cdiutils_files(data_path, mask_path, method="biharmonic")
    with pytest.raises(FileExistsError, match="outputs exist"):
        fill_cdiutils_files(data_path, mask_path, method="biharmonic")


# ------------------------------------------------------------------------- the scan table
def test_scan_table_on_one_tiny_scan(tiny_scan):
    table = scans.scan_table({"default": None}, [tiny_scan])
    assert table["fills"] == ["linear", "biharmonic", "default"]
    row = table["scans"][0]
    assert row["name"] == "cdiutils-3" and row["gap_voxels"] == int(tiny_scan.gap_mask.sum())
    assert row["headroom"]["linear"] == 0.0
    assert 0.5 < row["pcc"]["linear"] < row["ceiling"] <= 1
    assert row["headroom"]["biharmonic"] > 0 and row["headroom"]["default"] > 0
    assert all(row["seconds"][f] >= 0 for f in table["fills"])
    assert table["mean"]["pcc"] == row["pcc"] and table["mean"]["ceiling"] == row["ceiling"]
    markdown = scans.format_scan_table(table)
    assert "cdiutils-3" in markdown and "default PCC (headroom, s)" in markdown
    with pytest.raises(ValueError, match="model names must differ"):
        scans.scan_table({"linear": None}, [tiny_scan])
    with pytest.raises(TypeError, match="non-empty sequence of CdiutilsScan"):
        scans.scan_table({}, [])


def test_write_id01_master_file_needs_whole_frames(tiny_scan, tmp_path):
    with pytest.raises(ValueError, match="whole Maxipix frames"):
        scans.write_id01_master_file(tiny_scan, tmp_path / "x.h5")
    with pytest.raises(ValueError, match="shape must have"):
        scans.simulate_cdiutils_scan(0, (4, 64, 64))


# ------------------------------------------------------------------- full phasing (slow)
PHASING_SCRIPT = textwrap.dedent("""
    # What `pynx-cdi-id01 pynx-cdi-inputs.txt` does on a GPU node, in-process on the CPU PyNX
    # through cdiutils' own PyNXPhaser: read the inputs file cdiutils wrote, phase, save.
    # PyNXPhaser's default operators pass keywords of PyNX >= 2023 (confidence_interval_factor_
    # mask_*); PyNX 2022.1's operators are given explicitly.
    import numpy as np
    from cdiutils.process import PyNXPhaser
    from pynx.cdi import ER, HIO, RAAR
    lines = open("pynx-cdi-inputs.txt").read().splitlines()
    params = dict(line.split(" = ", 1) for line in lines if " = " in line)
    data = np.load(params["data"])["data"]
    mask = np.load(params["mask"])["data"]
    np.random.seed(0)
    operators = {"er": ER(calc_llk=50), "hio": HIO(calc_llk=50), "raar": RAAR(calc_llk=50)}
    phaser = PyNXPhaser(iobs=data, mask=mask, operators=operators, support_update_period=20, psf=None)
    phaser.init_cdi()
    phaser.run("HIO**200, RAAR**200, ER**100", init_cdi=False)
    obj = phaser.cdi.get_obj(shift=True)
    np.savez("phased.npz", obj=obj, data=data, mask=mask, llk=np.asarray(phaser.cdi.get_llk()))
""")


@pytest.mark.pynx
@pytest.mark.slow
def test_phase_retrieval_phases_the_filled_pair(preprocessed, tmp_path):
    pytest.importorskip("pynx.cdi", reason="ESRF PyNX is not installed")
    pipeline = _new_pipeline(preprocessed["params"])
    paths = fill_pipeline_gaps(pipeline, out_dir=tmp_path, method="biharmonic")
    script = tmp_path / "phase.py"
    script.write_text(PHASING_SCRIPT)
    pipeline.phase_retrieval(cmd=f"{sys.executable} {script}")
    result = np.load(tmp_path / "phased.npz")
    assert np.array_equal(result["data"], np.load(paths["data"])["data"])      # PyNX got the filled data
    np.testing.assert_array_equal(result["mask"], np.load(paths["mask"])["data"])   # only the alien left
    obj = result["obj"]
    assert np.isfinite(obj).all() and np.isfinite(result["llk"]).all()
    # the phased object explains the measured intensity
    model = np.abs(np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(obj)))) ** 2
    data = result["data"]
    assert np.corrcoef(np.log1p(model.ravel() * data.sum() / model.sum()), np.log1p(data.ravel()))[0, 1] > 0.8
    support = np.abs(obj) > 0.2 * np.abs(obj).max()
    assert 20 < support.sum() < 0.3 * support.size          # a crystal, neither a spike nor the box
