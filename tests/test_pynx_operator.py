"""bcdi_gapfill.integrations.pynx against the real PyNX (2022.1 CPU build here): operator algebra, the
mask encoding of PyNX's iobs, and the PyNX input writer.

Arrays are 64^3 with a 4-pixel cross gap; inpainting uses the biharmonic fill (the shipped
weights are not needed), except the uncertainty test, which uses a tiny untrained model.
"""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from bcdi_gapfill.core.geometry import synthetic_gap_mask
from bcdi_gapfill.fill.inpainting import inpaint
from bcdi_gapfill.integrations.pynx import PYNX_MASKED, decode_estimates, encode_estimates, write_pynx_input

pytestmark = pytest.mark.pynx

SHAPE = (64, 64, 64)
MASKED_MAX = np.float32(-1e19)
NO_ESTIMATE_MAX = np.float32(-1e38)


def _pynx():
    return pytest.importorskip("pynx.cdi", reason="PyNX (pynx.cdi) is not installed: the operator tests need it")


@pytest.fixture(scope="module")
def scene():
    """Counts (centred frame), the gap, other masked voxels (hot pixels, an alien)."""
    from bcdi_gapfill.core.simulate import simulate_pattern
    counts = simulate_pattern(SHAPE, 5, peak_counts=1e5).counts.astype(np.float32)
    gap = synthetic_gap_mask(SHAPE, "cross", 4, position=34, position2=34)
    other = np.zeros(SHAPE, bool)
    other[:, 10, 12] = True             # hot pixel, every frame
    other[20:24, 40:43, 45:48] = True   # alien, a few frames
    return counts, gap, other


def _make_cdi(scene, free=True):
    pc = _pynx()
    counts, gap, other = scene
    iobs = counts.copy()
    iobs[gap | other] = 0  # bcdi zeroes masked voxels
    mask = (gap | other).astype(np.int8)
    cdi = pc.CDI(np.fft.fftshift(iobs), mask=np.fft.fftshift(mask))
    if free:
        np.random.seed(3)
        cdi.init_free_pixels(ratio=0.02, island_radius=2)
    return cdi, iobs


def _expected_fill(iobs_zeroed, gap, method="biharmonic"):
    return inpaint(iobs_zeroed, gap, method=method)


def test_import_bcdi_gapfill_does_not_import_pynx():
    code = textwrap.dedent("""
        import sys
        import bcdi_gapfill, bcdi_gapfill.integrations.bcdi, bcdi_gapfill.integrations.pynx
        from bcdi_gapfill.integrations.pynx import write_pynx_input, encode_estimates
        loaded = [m for m in sys.modules if m == "pynx" or m.startswith("pynx.")]
        assert not loaded, loaded
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_clear_import_error_without_pynx():
    # sys.modules["pynx"] = None makes "import pynx..." raise ImportError, as if absent
    code = textwrap.dedent("""
        import sys
        sys.modules["pynx"] = None
        try:
            from bcdi_gapfill.integrations.pynx import InpaintGaps
        except ImportError as exc:
            print("ImportError:", exc)
        else:
            raise SystemExit("no ImportError")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "needs ESRF PyNX" in out.stdout and "write_pynx_input" in out.stdout


def test_estimate_encoding_round_trip():
    values = np.array([0.0, 0.5, 1.0, 3.0, 1e3, 1e6, 1e9], np.float32)
    enc = encode_estimates(values)
    assert enc.dtype == np.float32
    assert np.all(enc <= MASKED_MAX) and np.all(enc > NO_ESTIMATE_MAX)
    np.testing.assert_allclose(decode_estimates(enc), values, rtol=1e-6, atol=1e-5)
    assert encode_estimates(np.array([-5.0]))[0] == MASKED_MAX  # negative read as 0


def test_accessors_shift_consistent(scene):
    cdi, iobs = _make_cdi(scene, free=False)
    # PyNX stores iobs fft-shifted; shift=True gives the detector frame back
    assert np.array_equal(cdi.get_iobs(shift=True), np.fft.fftshift(cdi.get_iobs(shift=False)))
    counts, gap, other = scene
    centred = cdi.get_iobs(shift=True)
    assert np.all(centred[gap | other] <= MASKED_MAX)
    assert np.array_equal(centred[~(gap | other)], iobs[~(gap | other)])


def test_replace_mode(scene):
    pc = _pynx()
    from bcdi_gapfill.integrations.pynx import InpaintGaps
    counts, gap, other = scene
    cdi, iobs = _make_cdi(scene)
    before = cdi.get_iobs(shift=True).copy()
    free = (before > MASKED_MAX) & (before < 0)
    assert free.sum() > 100
    n_obs = int(cdi.nb_observed_points)

    op = InpaintGaps(method="biharmonic", mode="replace")
    cdi = op * cdi
    assert isinstance(cdi, pc.CDI)
    after = cdi.get_iobs(shift=True)
    assert np.array_equal(np.fft.ifftshift(after), cdi.get_iobs(shift=False))

    # gap voxels are observed data now, the biharmonic fill of the centred pattern
    assert np.all(after[gap] >= 0) and np.all(np.isfinite(after[gap]))
    expected = _expected_fill(iobs, gap)  # free voxels decode to the very same counts
    np.testing.assert_allclose(after[gap], expected[gap], rtol=1e-5, atol=1e-6)
    # free-LLK voxels, other masked voxels and observed voxels are untouched (bitwise)
    assert np.array_equal(after[free], before[free])
    assert np.array_equal(after[other], before[other]) and np.all(after[other] <= NO_ESTIMATE_MAX)
    rest = ~(gap | other | free)
    assert np.array_equal(after[rest], before[rest])
    assert op.last_stats["filled"] == int(gap.sum())
    assert int(cdi.nb_observed_points) == n_obs + int(gap.sum())
    assert int(cdi.nb_free_points) == int(free.sum())
    free_after = (after > MASKED_MAX) & (after < 0)
    assert np.isclose(cdi.iobs_sum, after[after >= 0].sum() - (after[free_after] + 1).sum(), rtol=1e-5)

    # applied again, it finds no gap left and changes nothing
    again = op * cdi
    assert op.last_stats["gap_voxels"] == 0
    assert np.array_equal(again.get_iobs(shift=True), after)


def test_estimate_mode(scene):
    _pynx()  # skips first: InpaintGaps itself needs PyNX
    from bcdi_gapfill.integrations.pynx import InpaintGaps
    counts, gap, other = scene
    cdi, iobs = _make_cdi(scene)
    before = cdi.get_iobs(shift=True).copy()
    free = (before > MASKED_MAX) & (before < 0)
    n_obs = int(cdi.nb_observed_points)

    cdi = InpaintGaps(method="biharmonic", mode="estimate") * cdi
    after = cdi.get_iobs(shift=True)
    g = after[gap]
    assert np.all(g <= MASKED_MAX) and np.all(g > NO_ESTIMATE_MAX)  # masked, with an estimate
    expected = _expected_fill(iobs, gap)
    np.testing.assert_allclose(decode_estimates(g), expected[gap], rtol=1e-5, atol=1e-4)
    assert np.array_equal(after[free], before[free])
    assert np.array_equal(after[other], before[other])
    rest = ~(gap | other | free)
    assert np.array_equal(after[rest], before[rest])
    assert int(cdi.nb_observed_points) == n_obs  # nothing became observed


def test_operator_algebra_chain_runs(scene):
    pc = _pynx()
    from bcdi_gapfill.integrations.pynx import InpaintGaps
    counts, gap, other = scene
    cdi, _ = _make_cdi(scene)
    chain = pc.ER() ** 3 * pc.HIO() ** 4 * InpaintGaps(method="biharmonic")
    assert str(chain).endswith("InpaintGaps()") and "HIO" in str(chain)
    cdi = pc.AutoCorrelationSupport() * cdi
    cdi = chain * cdi
    assert isinstance(cdi, pc.CDI)
    assert np.all(cdi.get_iobs(shift=True)[gap] >= 0)
    assert np.isfinite(cdi.get_obj()).all()

    # a chain starting with the operator, and a power of it, compose too
    cdi2, _ = _make_cdi(scene, free=False)
    cdi2 = pc.AutoCorrelationSupport() * cdi2
    cdi2 = (InpaintGaps(method="linear", mode="estimate") * pc.ER() ** 2) ** 2 * cdi2
    assert np.all(cdi2.get_iobs(shift=True)[gap] <= MASKED_MAX)
    assert np.isfinite(cdi2.get_obj()).all()


def test_explicit_gap_mask_fills_only_masked_voxels(scene):
    _pynx()  # skips first: InpaintGaps itself needs PyNX
    from bcdi_gapfill.integrations.pynx import InpaintGaps
    counts, gap, other = scene
    cdi, _ = _make_cdi(scene, free=False)
    before = cdi.get_iobs(shift=True).copy()
    vertical = synthetic_gap_mask(SHAPE, "vertical", 4, position=34)
    wider = vertical.copy()
    wider[:, :, 30:34] = True  # observed columns: must not be touched
    op = InpaintGaps(method="biharmonic", gap_mask=wider)
    cdi = op * cdi
    after = cdi.get_iobs(shift=True)
    assert np.all(after[vertical] >= 0)
    outside = gap & ~wider
    assert outside.sum() > 0
    assert np.all(after[outside] <= NO_ESTIMATE_MAX)  # not in gap_mask: still masked
    observed = wider & (before > MASKED_MAX)
    assert observed.sum() > 0 and np.array_equal(after[observed], before[observed])
    assert op.last_stats["gap_voxels"] == int((wider & (before <= MASKED_MAX)).sum())


def test_uncertainty_threshold_leaves_uncertain_voxels_masked(scene):
    _pynx()  # skips first: InpaintGaps itself needs PyNX
    from bcdi_gapfill.nn.model import build_model
    from bcdi_gapfill.integrations.pynx import InpaintGaps
    counts, gap, other = scene
    model = build_model({"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4], "prefill_iterations": 20}).eval()
    # He init zeroes the residual head, so every window would return the same whole-array
    # fill (no spread); a random head makes the windows disagree, as a trained model does.
    torch.manual_seed(0)
    torch.nn.init.normal_(model.head.weight, std=0.1)
    cdi, iobs = _make_cdi(scene, free=False)
    _, unc = inpaint(iobs, gap, model=model, stride=16, return_uncertainty=True)
    threshold = float(np.median(unc[gap]))
    op = InpaintGaps(model=model, stride=16, uncertainty_threshold=threshold, mode="estimate")
    cdi = op * cdi
    after = cdi.get_iobs(shift=True)
    uncertain = gap & (unc > threshold)
    assert 0 < uncertain.sum() < gap.sum()
    assert np.all(after[uncertain] == PYNX_MASKED)
    kept = gap & ~uncertain
    assert np.all((after[kept] <= MASKED_MAX) & (after[kept] > NO_ESTIMATE_MAX))
    assert op.last_stats["left_masked_uncertain"] == int(uncertain.sum())


def test_constructor_validation():
    _pynx()
    from bcdi_gapfill.integrations.pynx import InpaintGaps
    with pytest.raises(ValueError, match="mode"):
        InpaintGaps(mode="nope")
    with pytest.raises(ValueError, match="method"):
        InpaintGaps(method="nope")
    with pytest.raises(ValueError, match="needs method='model'"):
        InpaintGaps(method="biharmonic", uncertainty_threshold=0.1)
    InpaintGaps()  # the default (shipped weights) is only loaded when applied


@pytest.mark.parametrize("suffix", [".cxi", ".npz"])
def test_write_pynx_input_read_by_pynx_runner(tmp_path, suffix):
    runner = pytest.importorskip("pynx.cdi.runner.id01",
                                 reason="PyNX's CDI runner (pynx.cdi.runner.id01) is not importable")
    rng = np.random.default_rng(0)
    data = rng.poisson(3.0, (16, 16, 16)).astype(np.float32)
    mask = np.zeros(data.shape, np.int8)
    mask[:, 7:9, :] = 1
    written = write_pynx_input(tmp_path / f"S1_pynx{suffix}", data, mask)
    params = dict(runner.params)
    params.update(dict(arg.split("=", 1) for arg in written["args"]))
    scan = runner.CDIRunnerScanID01(params, None)
    scan.load_data()
    scan.init_mask()
    assert np.array_equal(scan.mask, mask)
    expected = data.copy()
    expected[mask > 0] = 0  # the runner zeroes masked voxels
    assert np.array_equal(scan.iobs, expected)
    with pytest.raises(FileExistsError):
        write_pynx_input(tmp_path / f"S1_pynx{suffix}", data, mask)
    with pytest.raises(ValueError, match="cxi or .npz"):
        write_pynx_input(tmp_path / "x.h5", data, mask)
