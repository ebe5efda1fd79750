"""Physics tests of the BCDI pattern simulator (bcdi_gapfill.core.simulate).

Each test checks a property the simulated measurement must have (Friedel symmetry of a
real object, autocorrelation support, Poisson statistics, oversampling, shapes, the
detector-frame shear, the dislocation's phase winding) and fails when that property is
broken, not only shapes and dtypes. Arrays are (frames, rows, columns); the simulator puts
the Bragg peak at index ``n // 2`` on each axis (FFT-centred convention).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.fft as sfft
from scipy import ndimage

from bcdi_gapfill.core.io import load_array, load_metadata
from bcdi_gapfill.core.simulate import (
    PHASES,
    SHAPES,
    SimulatedPattern,
    read_pattern,
    simulate_pattern,
    write_dataset,
)

N = 64  # array size of most tests (128 once, in test_full_size_pattern)


# --- helpers ---------------------------------------------------------------------------


def _extent(mask: np.ndarray) -> np.ndarray:
    """Number of voxels spanned by the nonzero voxels of ``mask`` along each axis."""
    out = []
    for ax in range(mask.ndim):
        idx = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))[0]
        out.append(idx[-1] - idx[0] + 1)
    return np.array(out)


def _point_reflect(a: np.ndarray, centre) -> np.ndarray:
    """``out[j] = a[2 * centre - j]`` (indices modulo the size), per axis.

    flip gives ``a[n - 1 - j]``; a roll by ``2c - n + 1`` moves the centre of the flip to c:
    one voxel for an even size with c = n // 2, none for an odd size.
    """
    out = a
    for ax, (n, c) in enumerate(zip(a.shape, centre)):
        out = np.roll(np.flip(out, ax), 2 * c - n + 1, axis=ax)
    return out


def _correlations(weights: np.ndarray) -> np.ndarray:
    """Correlation coefficients of the voxel coordinates weighted by ``weights``."""
    idx = np.indices(weights.shape).reshape(3, -1).astype(float)
    w = weights.ravel().astype(float)
    w /= w.sum()
    d = idx - (idx @ w)[:, None]
    cov = (d * w) @ d.T
    s = np.sqrt(np.diag(cov))
    return cov / np.outer(s, s)


def _centrosymmetry(support: np.ndarray) -> float:
    """Fraction of support voxels whose point reflection through the centroid is support."""
    idx = np.argwhere(support)
    twice_centre = np.rint(2 * idx.mean(axis=0)).astype(int)
    refl = twice_centre - idx
    ok = ((refl >= 0) & (refl < np.array(support.shape))).all(axis=1)
    hit = np.zeros(len(idx), bool)
    hit[ok] = support[refl[ok, 0], refl[ok, 1], refl[ok, 2]]
    return float(hit.mean())


def _perpendicular_axes(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = direction / np.linalg.norm(direction)
    e1 = np.cross(d, [1.0, 0, 0] if abs(d[0]) < 0.9 else [0, 1.0, 0])
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(d, e1)


def _winding(obj: np.ndarray, centre, direction, radius: float, npts: int = 96):
    """Phase winding (in turns) of ``obj`` along a circle perpendicular to ``direction``.

    Returns the winding, the smallest modulus on the loop relative to the maximum, and the
    largest wrapped phase step (the sum of steps counts turns only if every step < pi).
    """
    e1, e2 = _perpendicular_axes(np.asarray(direction, float))
    t = np.linspace(0, 2 * np.pi, npts, endpoint=False)
    pts = np.asarray(centre, float)[:, None] + radius * (np.outer(e1, np.cos(t)) + np.outer(e2, np.sin(t)))
    idx = np.rint(pts).astype(int)
    values = obj[idx[0], idx[1], idx[2]]
    steps = np.angle(np.roll(values, -1) / values)  # wrapped to (-pi, pi]
    return steps.sum() / (2 * np.pi), np.abs(values).min() / np.abs(obj).max(), np.abs(steps).max()


def _noise_free_intensity(p: SimulatedPattern) -> np.ndarray:
    return p.expected.astype(np.float64) - p.metadata["background"]


# --- reproducibility -------------------------------------------------------------------


def test_same_seed_same_pattern_different_seed_different():
    a = simulate_pattern(N, 3)
    b = simulate_pattern(N, 3)
    c = simulate_pattern(N, 4)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.expected, b.expected)
    np.testing.assert_array_equal(a.obj, b.obj)
    assert a.metadata == b.metadata
    assert not np.array_equal(a.counts, c.counts)
    assert not np.array_equal(a.obj, c.obj)
    assert a.metadata != c.metadata
    # explicit parameters do not break reproducibility either
    kw = dict(shape_name="wulff", oversampling=2.5, phase="mixed", detector_frame=True)
    d, e = simulate_pattern(N, 9, **kw), simulate_pattern(N, 9, **kw)
    np.testing.assert_array_equal(d.counts, e.counts)
    np.testing.assert_array_equal(d.obj, e.obj)


def test_dtypes_shapes_and_noise_free_consistency():
    """expected = peak_counts * roll(|FFT(obj)|^2) / max + background, exactly."""
    offset = (2, -3, 1)
    p = simulate_pattern((40, 48, 36), 1, coherence_sigma=0.0, peak_offset=offset)
    assert p.counts.shape == p.expected.shape == p.obj.shape == (40, 48, 36)
    assert p.counts.dtype == np.float32 and p.expected.dtype == np.float32
    assert p.obj.dtype == np.complex64
    amp = sfft.fftshift(sfft.fftn(sfft.ifftshift(p.obj.astype(np.complex128))))
    intensity = np.roll(np.abs(amp) ** 2, offset, axis=(0, 1, 2))
    predicted = p.metadata["peak_counts"] * intensity / intensity.max() + p.metadata["background"]
    np.testing.assert_allclose(p.expected, predicted, rtol=1e-4, atol=1e-5 * predicted.max())
    assert p.metadata["total_counts"] == pytest.approx(float(p.counts.sum()))


# --- Friedel symmetry ------------------------------------------------------------------


@pytest.mark.parametrize("detector_frame", [False, True])
@pytest.mark.parametrize("size", [(N, N, N), (31, 32, 33)])
def test_friedel_symmetry_of_a_real_object(size, detector_frame):
    p = simulate_pattern(size, 1, shape_name="wulff", oversampling=2.0, phase="zero",
                         coherence_sigma=0.0, peak_offset=(0, 0, 0), detector_frame=detector_frame)
    assert np.abs(p.obj.imag).max() == 0  # the object is real
    intensity = _noise_free_intensity(p)
    centre = [n // 2 for n in size]
    mirrored = _point_reflect(intensity, centre)
    assert np.abs(intensity - mirrored).max() < 1e-5 * intensity.max()
    # the check can fail: without the one-voxel roll the even axes are not symmetric
    wrong = intensity[::-1, ::-1, ::-1]
    assert np.abs(intensity - wrong).max() > 1e-2 * intensity.max()


def test_friedel_symmetry_about_an_offset_peak():
    offset = (2, -3, 1)
    p = simulate_pattern(N, 2, shape_name="cube", oversampling=2.5, phase="zero",
                         coherence_sigma=0.0, peak_offset=offset, detector_frame=False)
    intensity = _noise_free_intensity(p)
    centre = [N // 2 + o for o in offset]
    assert np.abs(intensity - _point_reflect(intensity, centre)).max() < 1e-5 * intensity.max()


@pytest.mark.parametrize("phase", ["random", "dislocation"])
@pytest.mark.parametrize("detector_frame", [False, True])
def test_a_phase_breaks_friedel_symmetry(phase, detector_frame):
    p = simulate_pattern(N, 1, shape_name="wulff", oversampling=2.5, phase=phase,
                         phase_amplitude=0.8, coherence_sigma=0.0, peak_offset=(0, 0, 0),
                         detector_frame=detector_frame)
    intensity = _noise_free_intensity(p)
    mirrored = _point_reflect(intensity, [N // 2] * 3)
    assert np.linalg.norm(intensity - mirrored) > 0.1 * np.linalg.norm(intensity)


# --- oversampling ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_autocorrelation_spans_twice_the_object(seed):
    # oversampling >= 2 on every axis so that the autocorrelation does not wrap around
    p = simulate_pattern(N, seed, oversampling=(2.5, 3.0, 3.5), coherence_sigma=0.0,
                         peak_offset=(0, 0, 0))
    autocorrelation = np.abs(sfft.fftshift(sfft.ifftn(sfft.ifftshift(_noise_free_intensity(p)))))
    object_extent = _extent(np.abs(p.obj) > 0)
    ac_extent = _extent(autocorrelation > 1e-5 * autocorrelation.max())
    # the support of obj (*) obj is S - S: 2 * extent - 1 voxels per axis
    np.testing.assert_allclose(ac_extent, 2 * object_extent - 1, atol=2)
    assert np.all(ac_extent / object_extent > 1.8) and np.all(ac_extent / object_extent < 2.0)
    # the oversampling measured from the diffraction pattern alone agrees with metadata
    from_pattern = N / ((ac_extent + 1) / 2)
    np.testing.assert_allclose(from_pattern, p.metadata["oversampling"], rtol=0.05)


def test_metadata_oversampling_is_size_over_object_extent():
    for seed in range(3):
        p = simulate_pattern((48, 56, 64), seed)
        extent = _extent(np.abs(p.obj) > 0)
        np.testing.assert_allclose(p.metadata["oversampling"], np.array([48, 56, 64]) / extent,
                                   rtol=1e-12)


def test_requested_oversampling_is_honoured():
    """At 64^3 the extents are ~23-32 voxels, so a 1-2 voxel rounding of the support is
    5-9 %; the tolerance is 25 % per axis and 8 % on average (15 % at 128^3 is checked in
    test_full_size_pattern)."""
    requested = np.array([2.0, 2.4, 2.8])
    errors = []
    for shape_name in SHAPES:
        for seed in range(3):
            p = simulate_pattern(N, seed, shape_name=shape_name, oversampling=tuple(requested))
            assert p.metadata["oversampling_drawn"] == list(requested)
            errors.append(np.array(p.metadata["oversampling"]) / requested - 1)
    errors = np.array(errors)
    assert np.abs(errors).max() < 0.25, errors
    assert abs(errors.mean()) < 0.08, errors.mean(axis=0)
    # and the crystal gets larger as the oversampling gets smaller
    small = simulate_pattern(N, 0, shape_name="cube", oversampling=4.0)
    large = simulate_pattern(N, 0, shape_name="cube", oversampling=2.0)
    assert (np.abs(large.obj) > 0).sum() > 5 * (np.abs(small.obj) > 0).sum()


# --- noise statistics ------------------------------------------------------------------


def test_counts_are_poisson_around_expected():
    p = simulate_pattern(N, 3, peak_counts=1e6, background=0.01)
    counts = p.counts.astype(np.float64).ravel()
    lam = p.expected.astype(np.float64).ravel()
    assert np.all(counts >= 0) and np.all(counts == np.round(counts))

    edges = np.geomspace(0.05, 2000, 40)
    checked = 0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (lam >= lo) & (lam < hi)
        k = int(sel.sum())
        if k < 2000:
            continue
        x, mu = counts[sel], lam[sel]
        checked += 1
        # the sum of independent Poisson counts has variance sum(expected)
        z = (x.sum() - mu.sum()) / np.sqrt(mu.sum())
        assert abs(z) < 5, (mu.mean(), z)
        # variance = mean for a Poisson variable (plus the spread of expected in the bin)
        var_expected = mu.mean() + mu.var()
        rel_sd = np.sqrt((1.0 / mu.mean() + 2.0) / k)
        assert abs(x.var() / var_expected - 1) < 5 * rel_sd, (mu.mean(), x.var() / var_expected)
        # P(0) = exp(-lambda): a signature of Poisson, not Gaussian, noise at low counts
        if mu.mean() < 2:
            p0 = np.exp(-mu).mean()
            assert abs((x == 0).mean() - p0) < 5 * np.sqrt(p0 * (1 - p0) / k), mu.mean()
    assert checked >= 15
    # standardised residuals over the bright voxels: mean 0, variance 1
    bright = lam > 5
    z = (counts[bright] - lam[bright]) / np.sqrt(lam[bright])
    assert bright.sum() > 10_000
    assert abs(z.mean()) < 0.03 and abs(z.var() - 1) < 0.05


def test_far_from_peak_voxels_are_mostly_empty_at_low_counts():
    p = simulate_pattern(N, 5, peak_counts=1e3, background=1e-3, peak_offset=(0, 0, 0))
    r = np.sqrt(((np.indices(p.counts.shape) - N // 2) ** 2).sum(axis=0))
    far = r > N / 4
    assert (p.counts[far] == 0).mean() > 0.95
    assert p.counts[r < 3].sum() > 100  # while the peak is well exposed
    bright = simulate_pattern(N, 5, peak_counts=1e7, background=1e-3, peak_offset=(0, 0, 0))
    assert (bright.counts[far] == 0).mean() < (p.counts[far] == 0).mean()


# --- peak ------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [(0, 0, 0), (3, -2, 1)])
@pytest.mark.parametrize("coherence_sigma", [0.0, 0.6])
def test_peak_counts_and_position(offset, coherence_sigma):
    p = simulate_pattern(N, 7, shape_name="truncated_octahedron", oversampling=3.0, phase="zero",
                         peak_counts=2.5e5, background=0.02, coherence_sigma=coherence_sigma,
                         peak_offset=offset)
    assert p.expected.max() == pytest.approx(2.5e5 + 0.02, rel=1e-5)
    peak = np.unravel_index(np.argmax(p.expected), p.expected.shape)
    assert tuple(int(i) for i in peak) == tuple(N // 2 + o for o in offset)
    # the background is the floor (the coherence blur leaves ~1e-9 of the peak everywhere)
    assert 0.02 * (1 - 1e-6) <= p.expected.min() < 0.02 + 1e-8 * 2.5e5
    assert p.metadata["peak_offset"] == list(offset)


def test_drawn_peak_counts():
    checked = 0
    for seed in range(8):
        p = simulate_pattern(N, seed)
        m = p.metadata
        assert p.expected.max() == pytest.approx(m["peak_counts"] + m["background"], rel=1e-5)
        assert 1e3 <= m["peak_counts"] <= 1e7
        if m["phase"] in ("dislocation", "mixed"):
            continue  # a dislocation splits the Bragg peak: its maximum moves by a few voxels
        checked += 1
        peak = np.unravel_index(np.argmax(p.expected), p.expected.shape)
        # a smooth strain moves the maximum by a voxel at most from the Bragg position
        assert np.abs(np.array(peak) - (N // 2 + np.array(m["peak_offset"]))).max() <= 2
    assert checked >= 3


# --- shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape_name", SHAPES)
def test_each_shape_is_one_crystal_inside_the_array(shape_name):
    # the smallest drawn oversampling and the detector shear: the largest crystals
    for seed in range(2):
        p = simulate_pattern(N, seed, shape_name=shape_name, oversampling=1.5, detector_frame=True)
        support = np.abs(p.obj) > 0
        assert support.sum() > 0.05 * support.size
        for ax in range(3):
            for end in (0, -1):
                assert not np.take(support, end, axis=ax).any(), f"touches the border of axis {ax}"
        _, n_parts = ndimage.label(support)
        assert n_parts == 1
        assert p.metadata["shape_name"] == shape_name


def test_winterbottom_is_truncated():
    """With the same seed, 'wulff' and 'winterbottom' draw the same facets, the latter plus
    a substrate plane, so the substrate's truncation shows as a loss of centrosymmetry."""
    losses = []
    for seed in range(4):
        kw = dict(oversampling=2.2, phase="zero", detector_frame=False)
        wulff = _centrosymmetry(np.abs(simulate_pattern(N, seed, shape_name="wulff", **kw).obj) > 0)
        winter = _centrosymmetry(np.abs(simulate_pattern(N, seed, shape_name="winterbottom", **kw).obj) > 0)
        assert winter < wulff
        losses.append(wulff - winter)
    assert np.mean(losses) > 0.04
    for shape_name in ("cube", "octahedron", "truncated_octahedron"):
        p = simulate_pattern(N, 0, shape_name=shape_name, oversampling=2.2, phase="zero",
                             detector_frame=False)
        assert _centrosymmetry(np.abs(p.obj) > 0) > 0.99


@pytest.mark.parametrize("seed", [61, 131])
def test_detector_frame_shears_object_and_fringes(seed):
    """A rocking curve samples q = B k with the frame step tilted towards the detector axes:
    B = S^T, S = [[1, a, b], [0, 1, 0], [0, 0, 1]] (metadata["shear"]), and the object seen in
    that frame is sheared as x0 += a x1 + b x2.

    A cube at equal oversampling has isotropic second moments in any orientation, so without
    the shear neither its support nor its intensity correlates the axes. With it, the
    support's coordinates are correlated as the Gram matrix B^T B = S S^T
    (corr01 = a / sqrt(1 + a^2 + b^2), corr12 = 0: the detector axes stay orthogonal) and the
    intensity's as its inverse (corr01 = -a / sqrt(1 + a^2)): the principal axes of the
    second moments rotate, oppositely in real and reciprocal space. The measured real-space
    correlations are ~20 % weaker than predicted: the rounded, blurred surface adds nearly
    isotropic spread. Seeds 61 and 131 draw |a|, |b| > 0.25."""
    kw = dict(shape_name="cube", oversampling=3.0, phase="zero", coherence_sigma=0.0,
              peak_offset=(0, 0, 0), background=0.0, peak_counts=1e6)
    plain = simulate_pattern(N, seed, detector_frame=False, **kw)
    sheared = simulate_pattern(N, seed, detector_frame=True, **kw)
    assert plain.metadata["shear"] == np.eye(3).tolist()
    shear = np.array(sheared.metadata["shear"])
    a, b = shear[0, 1], shear[0, 2]
    assert min(abs(a), abs(b)) > 0.25
    np.testing.assert_array_equal(shear, [[1, a, b], [0, 1, 0], [0, 0, 1]])

    def corr(p):
        return _correlations(np.abs(p.obj) > 0), _correlations(p.expected > 1e-3 * p.expected.max())

    support, intensity = corr(plain)
    off = [(0, 1), (0, 2), (1, 2)]
    assert max(abs(support[i, j]) for i, j in off) < 0.05
    assert max(abs(intensity[i, j]) for i, j in off) < 0.08

    support, intensity = corr(sheared)
    norm = np.sqrt(1 + a ** 2 + b ** 2)
    for j, s in ((1, a), (2, b)):
        assert 0.6 < support[0, j] / (s / norm) < 1.1, (j, support[0, j], s / norm)
        predicted = -s / np.sqrt(1 + s ** 2)
        assert 0.3 < intensity[0, j] / predicted < 1.3, (j, intensity[0, j], predicted)
    # the rows and columns are not sheared against each other (a shear S^T instead of S
    # would give a support correlation a b / sqrt((1 + a^2)(1 + b^2)) ~ 0.09 here)
    assert abs(support[1, 2]) < 0.03


# --- dislocation -----------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["dislocation", "mixed"])
@pytest.mark.parametrize("detector_frame", [False, True])
def test_dislocation_phase_winds_once_around_the_line(phase, detector_frame):
    for seed in range(3):
        p = simulate_pattern(N, seed, shape_name="cube", oversampling=2.0, phase=phase,
                             phase_amplitude=0.3, detector_frame=detector_frame)
        line = p.metadata["dislocation_line"]
        point, direction = np.array(line["point"]), np.array(line["direction"])
        assert np.linalg.norm(direction) == pytest.approx(1.0)
        turns, min_modulus, max_step = _winding(p.obj, point, direction, 3.0)
        assert min_modulus > 0.2 and max_step < 2.0  # the loop lies in the crystal
        assert abs(abs(turns) - 1) < 1e-3, turns
        # a loop of the same size beside the line (towards the array centre) does not wind
        towards = np.array([(n - 1) / 2 for n in p.obj.shape]) - point
        towards -= (towards @ direction) * direction
        if np.linalg.norm(towards) < 1:
            towards = _perpendicular_axes(direction)[0]
        beside = point + 7.0 * towards / np.linalg.norm(towards)
        turns, min_modulus, max_step = _winding(p.obj, beside, direction, 3.0)
        assert min_modulus > 0.01 and max_step < 2.0
        assert abs(turns) < 1e-3, turns


def test_no_dislocation_line_without_dislocation():
    for phase in ("random", "zero", "core_shell"):
        p = simulate_pattern(32, 0, phase=phase)
        assert p.metadata["dislocation_line"] is None
    zero = simulate_pattern(32, 0, phase="zero")
    assert np.all(zero.obj.imag == 0) and np.all(zero.obj.real >= 0)


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(size=4), "size"),
    (dict(size=(64, 64)), "size"),
    (dict(size=(64, 64, 7)), "size"),
    (dict(size=32, shape_name="sphere"), "shape_name.*sphere"),
    (dict(size=32, phase="strained"), "phase.*strained"),
    (dict(size=32, oversampling=0.5), "oversampling"),
    (dict(size=32, oversampling=(2.0, 0.9, 3.0)), "oversampling"),
    (dict(size=32, oversampling=(2.0, 3.0)), "oversampling"),
    (dict(size=32, oversampling=(2.0, 3.0, 3.0, 4.0)), "oversampling"),
    (dict(size=32, oversampling=float("nan")), "oversampling"),
    (dict(size=32.5), "size"),
    (dict(size=(32, 32.5, 32)), "size"),
    (dict(size=32, peak_offset=(1, 2)), "peak_offset"),
])
def test_invalid_arguments_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_pattern(seed=0, **kwargs)


def test_shape_and_phase_lists():
    assert set(SHAPES) == {"cube", "octahedron", "truncated_octahedron", "wulff", "winterbottom"}
    assert set(PHASES) == {"random", "zero", "dislocation", "core_shell", "mixed"}


# --- full size -------------------------------------------------------------------------


def test_full_size_pattern():
    p = simulate_pattern(128, 11)
    m = p.metadata
    assert p.counts.shape == (128, 128, 128) and m["size"] == [128, 128, 128]
    assert np.isfinite(p.expected).all() and np.isfinite(p.obj).all()
    assert np.all(p.counts >= 0) and np.all(p.counts == np.round(p.counts))
    assert p.expected.max() == pytest.approx(m["peak_counts"] + m["background"], rel=1e-5)
    drawn = np.array(m["oversampling_drawn"])
    assert np.all((drawn >= 1.5) & (drawn <= 6.0))
    np.testing.assert_allclose(m["oversampling"], drawn, rtol=0.15)


# --- writing and reading datasets ------------------------------------------------------


def test_write_dataset_round_trip(tmp_path):
    out = tmp_path / "sim"
    paths = write_dataset(out, 2, size=32, first_seed=5, progress=False)
    assert [p.name for p in paths] == ["pattern_000005.h5", "pattern_000006.h5"]
    for path, seed in zip(paths, (5, 6)):
        back = read_pattern(path)
        ref = simulate_pattern(32, seed)
        np.testing.assert_array_equal(back.counts, ref.counts)
        np.testing.assert_array_equal(back.expected, ref.expected)
        np.testing.assert_array_equal(back.obj, ref.obj)
        assert back.counts.dtype == np.float32 and back.obj.dtype == np.complex64
        assert back.metadata == ref.metadata
        # the package's generic readers see the counts and the metadata too
        np.testing.assert_array_equal(load_array(path), ref.counts)
        assert load_metadata(path) == ref.metadata
    index = json.loads((out / "index.json").read_text())
    assert [e["file"] for e in index["patterns"]] == ["pattern_000005.h5", "pattern_000006.h5"]
    assert [e["seed"] for e in index["patterns"]] == [5, 6]
    assert index["patterns"][0]["metadata"] == read_pattern(paths[0]).metadata
    assert not [f for f in out.iterdir() if f.name.startswith(".")]  # no temporary left

    # an existing file is refused before anything is written, unless overwrite
    before = paths[0].stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="pattern_000006.h5.*overwrite"):
        write_dataset(out, 2, size=32, first_seed=6, progress=False)
    assert not (out / "pattern_000007.h5").exists()
    again = write_dataset(out, 1, size=32, first_seed=5, overwrite=True, progress=False)
    assert again == [paths[0]] and paths[0].stat().st_mtime_ns >= before
    np.testing.assert_array_equal(read_pattern(paths[0]).counts, simulate_pattern(32, 5).counts)

    # a further seed range is added to the index, which keeps the earlier files
    write_dataset(out, 1, size=32, first_seed=7, progress=False)
    index = json.loads((out / "index.json").read_text())
    assert [e["seed"] for e in index["patterns"]] == [5, 6, 7]


def test_write_dataset_and_read_pattern_errors(tmp_path):
    with pytest.raises(ValueError, match="n must"):
        write_dataset(tmp_path, -1, size=32, progress=False)
    with pytest.raises(ValueError, match="workers"):
        write_dataset(tmp_path, 1, size=32, workers=0, progress=False)
    with pytest.raises(FileNotFoundError):
        read_pattern(tmp_path / "missing.h5")
    (tmp_path / "index.json").write_text("not json")
    with pytest.raises(ValueError, match="index.json"):
        write_dataset(tmp_path, 1, size=32, progress=False)
    bogus = tmp_path / "bogus.h5"
    import h5py
    with h5py.File(bogus, "w") as h5:
        h5["data"] = np.zeros((2, 2, 2))
    with pytest.raises(ValueError, match="expected"):
        read_pattern(bogus)


def test_write_dataset_in_parallel_matches_serial(tmp_path):
    paths = write_dataset(tmp_path, 3, size=16, first_seed=3, workers=2, progress=False)
    assert [p.name for p in paths] == [f"pattern_00000{s}.h5" for s in (3, 4, 5)]
    for path, seed in zip(paths, (3, 4, 5)):
        back, ref = read_pattern(path), simulate_pattern(16, seed)
        np.testing.assert_array_equal(back.counts, ref.counts)
        np.testing.assert_array_equal(back.obj, ref.obj)
    index = json.loads((tmp_path / "index.json").read_text())
    assert [e["seed"] for e in index["patterns"]] == [3, 4, 5]
