"""Detector-gap geometry: where the chip gaps of an area detector fall in a BCDI stack.

Arrays follow bcdi's (frames, rows, columns) order: axis 0 is the rocking-curve frame,
axes 1 and 2 are the detector rows (vertical) and columns (horizontal). A gap mask is a
boolean array, True where the detector measured nothing because a pixel lies in a gap
between sensor chips.

The gap layouts of the named detectors are copied from bcdi 0.3.1
(``bcdi/experiment/detector.py``: each ``Detector`` subclass's ``unbinned_pixel_number``
and ``_mask_gaps``), so that a mask built here is pixel-for-pixel the one bcdi applies
during preprocessing. ``tests/test_geometry.py`` checks this against bcdi itself.
"""
from __future__ import annotations

import math
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Literal

import numpy as np

__all__ = [
    "central_cross_gap",
    "DetectorLayout",
    "DETECTORS",
    "GAP_KINDS",
    "get_detector",
    "detector_gap_map",
    "detector_gap_mask",
    "synthetic_gap_mask",
    "parse_gap_spec",
    "gap_mask_from_mask",
    "gap_width",
]

GapKind = Literal["vertical", "horizontal", "cross"]
GAP_KINDS: tuple[str, ...] = ("vertical", "horizontal", "cross")


def _check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    # bool is an Integral subclass; a True width or index is always a caller mistake.
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_ranges(
    ranges: Iterable[Sequence[int]], size: int, name: str, detector_name: str
) -> tuple[tuple[int, int], ...]:
    checked = []
    for item in ranges:
        if len(item) != 2:
            raise ValueError(
                f"detector {detector_name!r}: each entry of {name} must be a "
                f"(start, stop) pair, got {item!r}"
            )
        start = _check_int(item[0], f"{name} start")
        stop = _check_int(item[1], f"{name} stop")
        if not 0 <= start < stop <= size:
            raise ValueError(
                f"detector {detector_name!r}: {name} range ({start}, {stop}) must satisfy "
                f"0 <= start < stop <= {size}"
            )
        checked.append((start, stop))
    return tuple(checked)


@dataclass(frozen=True)
class DetectorLayout:
    """Geometry of an area detector: its unbinned size and where its gaps lie.

    Parameters
    ----------
    name : str
        Detector name, e.g. ``"Maxipix"``.
    shape : tuple of int
        Unbinned number of pixels ``(rows, columns)``.
    gap_rows : sequence of (int, int)
        Half-open ranges ``(start, stop)`` of detector rows (axis 1) that are gaps across
        the full detector width.
    gap_cols : sequence of (int, int)
        Half-open ranges ``(start, stop)`` of detector columns (axis 2) that are gaps
        across the full detector height.
    pixel_size_m : float
        Unbinned pixel size in metres (square pixels).
    gap_blocks : sequence of (int, int, int, int), optional
        Extra rectangles ``(row_start, row_stop, col_start, col_stop)`` masked with the
        gaps but not spanning the detector. bcdi masks four such regions on the Eiger2M
        (partial chip gaps and dead columns); full-width gaps belong in ``gap_rows`` /
        ``gap_cols``.

    Notes
    -----
    Ranges use non-negative indices only (bcdi's ``[-1:]`` border rows are stored as
    ``(n - 1, n)``), so a layout is unambiguous without knowing how it is indexed. A
    user-defined layout is built the same way, e.g.
    ``DetectorLayout("mydet", (512, 512), gap_rows=[(254, 258)], gap_cols=[(254, 258)],
    pixel_size_m=55e-6)``, and can be passed wherever a detector name is accepted.
    """

    name: str
    shape: tuple[int, int]
    gap_rows: tuple[tuple[int, int], ...] = ()
    gap_cols: tuple[tuple[int, int], ...] = ()
    pixel_size_m: float = 55e-6
    gap_blocks: tuple[tuple[int, int, int, int], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"detector name must be a non-empty string, got {self.name!r}")
        if len(self.shape) != 2:
            raise ValueError(
                f"detector {self.name!r}: shape must be (rows, columns), got {self.shape!r}"
            )
        shape = (
            _check_int(self.shape[0], "shape rows", minimum=1),
            _check_int(self.shape[1], "shape columns", minimum=1),
        )
        if isinstance(self.pixel_size_m, bool) or not isinstance(self.pixel_size_m, Real):
            raise TypeError(
                f"detector {self.name!r}: pixel_size_m must be a number, "
                f"got {self.pixel_size_m!r}"
            )
        if not (math.isfinite(self.pixel_size_m) and self.pixel_size_m > 0):
            raise ValueError(
                f"detector {self.name!r}: pixel_size_m must be positive and finite, "
                f"got {self.pixel_size_m!r}"
            )
        gap_rows = _check_ranges(self.gap_rows, shape[0], "gap_rows", self.name)
        gap_cols = _check_ranges(self.gap_cols, shape[1], "gap_cols", self.name)
        blocks = []
        for block in self.gap_blocks:
            if len(block) != 4:
                raise ValueError(
                    f"detector {self.name!r}: each gap block must be (row_start, row_stop, "
                    f"col_start, col_stop), got {block!r}"
                )
            rows = _check_ranges([block[:2]], shape[0], "gap_blocks rows", self.name)
            cols = _check_ranges([block[2:]], shape[1], "gap_blocks columns", self.name)
            blocks.append(rows[0] + cols[0])
        # frozen: normalise lists to tuples so layouts are hashable and comparable
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "gap_rows", gap_rows)
        object.__setattr__(self, "gap_cols", gap_cols)
        object.__setattr__(self, "pixel_size_m", float(self.pixel_size_m))
        object.__setattr__(self, "gap_blocks", tuple(blocks))


# Copied from bcdi 0.3.1 bcdi/experiment/detector.py (Maxipix, Eiger2M, Eiger4M, Eiger9M,
# Merlin, MerlinSixS, Timepix). bcdi's Lambda and Dummy are left out: bcdi masks no gaps
# on them, and listing a gapless "Lambda" would suggest its real chip gaps are handled.
_LAYOUTS = (
    DetectorLayout(
        "Maxipix", (516, 516), gap_rows=[(255, 261)], gap_cols=[(255, 261)],
        pixel_size_m=55e-6,
    ),
    DetectorLayout(
        "Eiger2M",
        (2164, 1030),
        gap_rows=[
            (255, 259), (511, 552), (804, 809), (1061, 1102), (1355, 1359), (1611, 1652),
            (1905, 1909),
        ],
        gap_cols=[(255, 259), (513, 517), (771, 775)],
        pixel_size_m=75e-6,
        gap_blocks=[
            (0, 257, 72, 80), (1248, 1290, 478, 479), (1214, 1298, 481, 482),
            (1649, 1910, 620, 628),
        ],
    ),
    DetectorLayout(
        "Eiger4M",
        (2167, 2070),
        gap_rows=[(0, 1), (2166, 2167), (513, 552), (1064, 1103), (1615, 1654)],
        gap_cols=[(0, 1), (2069, 2070), (1029, 1041)],
        pixel_size_m=75e-6,
    ),
    DetectorLayout(
        "Eiger9M",
        (3262, 3108),
        gap_rows=[
            (0, 1), (3261, 3262), (512, 550), (1062, 1100), (1612, 1650), (2162, 2200),
            (2712, 2750),
        ],
        gap_cols=[
            (0, 1), (3107, 3108), (513, 515), (1028, 1040), (1553, 1555), (2068, 2080),
            (2593, 2595),
        ],
        pixel_size_m=75e-6,
    ),
    DetectorLayout(
        "Merlin", (515, 515), gap_rows=[(255, 260)], gap_cols=[(255, 260)],
        pixel_size_m=55e-6,
    ),
    DetectorLayout(
        "MerlinSixS", (512, 512), gap_rows=[(254, 257)], gap_cols=[(254, 257)],
        pixel_size_m=55e-6,
    ),
    # bcdi's Timepix does not override _mask_gaps: a single chip, no gap.
    DetectorLayout("Timepix", (256, 256), pixel_size_m=55e-6),
)

#: Known detectors by their bcdi name (read-only). Look names up with :func:`get_detector`,
#: which ignores case.
DETECTORS: Mapping[str, DetectorLayout] = types.MappingProxyType(
    {layout.name: layout for layout in _LAYOUTS}
)


def get_detector(name: str | DetectorLayout) -> DetectorLayout:
    """Return the layout of a detector.

    Parameters
    ----------
    name : str or DetectorLayout
        A bcdi detector name (case-insensitive, e.g. ``"maxipix"``), or a layout, which
        is returned unchanged.

    Returns
    -------
    DetectorLayout

    Raises
    ------
    ValueError
        If the name is not a known detector; the message lists the known ones.
    """
    if isinstance(name, DetectorLayout):
        return name
    if not isinstance(name, str):
        raise TypeError(
            f"detector must be a name or a DetectorLayout, got {type(name).__name__}"
        )
    wanted = name.strip().lower()
    for known, layout in DETECTORS.items():
        if known.lower() == wanted:
            return layout
    raise ValueError(
        f"unknown detector {name!r}; known detectors: {', '.join(DETECTORS)} "
        "(or pass a DetectorLayout for another detector)"
    )


def detector_gap_map(detector: str | DetectorLayout) -> np.ndarray:
    """Full-detector 2D map of the chip gaps.

    Parameters
    ----------
    detector : str or DetectorLayout
        Detector name (see :data:`DETECTORS`) or layout.

    Returns
    -------
    gap_map : ndarray of bool, shape (rows, columns)
        The unbinned detector, True in the gaps (and ``gap_blocks``).
    """
    layout = get_detector(detector)
    gap_map = np.zeros(layout.shape, dtype=bool)
    for start, stop in layout.gap_rows:
        gap_map[start:stop, :] = True
    for start, stop in layout.gap_cols:
        gap_map[:, start:stop] = True
    for r0, r1, c0, c1 in layout.gap_blocks:
        gap_map[r0:r1, c0:c1] = True
    return gap_map


def _check_binning(binning: Sequence[int]) -> tuple[int, int, int]:
    if isinstance(binning, (str, bytes)) or not isinstance(binning, Sequence):
        raise TypeError(f"binning must be a sequence of 3 integers, got {binning!r}")
    if len(binning) != 3:
        raise ValueError(
            f"binning must have 3 entries (frames, rows, columns), got {tuple(binning)!r}"
        )
    names = ("frames", "rows", "columns")
    return tuple(  # type: ignore[return-value]
        _check_int(b, f"binning along {axis}", minimum=1) for b, axis in zip(binning, names)
    )


def detector_gap_mask(
    detector: str | DetectorLayout,
    n_frames: int,
    roi: Sequence[int] | None = None,
    binning: Sequence[int] = (1, 1, 1),
) -> np.ndarray:
    """3D gap mask of a detector, cropped and binned the way bcdi prepares its data.

    Parameters
    ----------
    detector : str or DetectorLayout
        Detector name (see :data:`DETECTORS`) or layout.
    n_frames : int
        Number of rocking-curve frames *before* binning.
    roi : sequence of 4 int, optional
        bcdi's region of interest in unbinned detector pixels,
        ``(row_start, row_stop, col_start, col_stop)`` with half-open ranges. Default: the
        whole detector.
    binning : sequence of 3 int, default (1, 1, 1)
        bcdi's binning factors (frames, rows, columns).

    Returns
    -------
    gap_mask : ndarray of bool, shape (n_frames // bf, n_rows // br, n_cols // bc)
        True in the gaps, the same in every frame. ``n_rows``, ``n_cols`` are the ROI
        sizes and ``(bf, br, bc)`` the binning.

    Raises
    ------
    ValueError
        If the ROI is not increasing or reaches outside the detector, or if binning
        leaves an empty axis.

    Notes
    -----
    Binning follows bcdi: ``bcdi.utils.utilities.bin_data`` crops each axis to a
    multiple of the factor and sums blocks, then preprocessing sets every nonzero
    binned mask value to 1. So a binned pixel is a gap if *any* of the unbinned pixels
    it gathers is a gap, and the trailing rows/columns/frames that do not fill a whole
    block are dropped.

    bcdi clips a ROI that overruns the detector (with a warning); this function refuses
    it instead, because the mask would then be smaller than the caller expects.
    """
    layout = get_detector(detector)
    n_frames = _check_int(n_frames, "n_frames", minimum=1)
    bin_frames, bin_rows, bin_cols = _check_binning(binning)
    n_rows, n_cols = layout.shape

    if roi is None:
        roi = (0, n_rows, 0, n_cols)
    if isinstance(roi, (str, bytes)) or not isinstance(roi, (Sequence, np.ndarray)):
        raise TypeError(f"roi must be a sequence of 4 integers, got {roi!r}")
    if len(roi) != 4:
        raise ValueError(
            f"roi must be (row_start, row_stop, col_start, col_stop), got {tuple(roi)!r}"
        )
    r0, r1, c0, c1 = (_check_int(v, "roi entry") for v in roi)
    if r1 <= r0 or c1 <= c0:
        raise ValueError(
            f"roi {[r0, r1, c0, c1]} must be increasing (row_start < row_stop and "
            "col_start < col_stop)"
        )
    if r0 < 0 or c0 < 0 or r1 > n_rows or c1 > n_cols:
        raise ValueError(
            f"roi {[r0, r1, c0, c1]} lies outside the {layout.name} detector of "
            f"{n_rows} x {n_cols} pixels (rows 0..{n_rows}, columns 0..{n_cols})"
        )

    cropped = detector_gap_map(layout)[r0:r1, c0:c1]
    out_frames = n_frames // bin_frames
    out_rows = cropped.shape[0] // bin_rows
    out_cols = cropped.shape[1] // bin_cols
    if min(out_frames, out_rows, out_cols) == 0:
        raise ValueError(
            f"binning {(bin_frames, bin_rows, bin_cols)} leaves an empty axis for "
            f"{n_frames} frames and a {cropped.shape[0]} x {cropped.shape[1]} ROI"
        )
    cropped = cropped[: out_rows * bin_rows, : out_cols * bin_cols]
    binned = cropped.reshape(out_rows, bin_rows, out_cols, bin_cols).any(axis=(1, 3))
    return np.repeat(binned[np.newaxis], out_frames, axis=0)


def _check_shape3d(shape: Sequence[int]) -> tuple[int, int, int]:
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"shape must be a sequence of 3 integers, got {shape!r}")
    if len(shape) != 3:
        raise ValueError(f"shape must be (frames, rows, columns), got {tuple(shape)!r}")
    return tuple(  # type: ignore[return-value]
        _check_int(s, f"shape[{i}]", minimum=1) for i, s in enumerate(shape)
    )


def _band_start(position: int | None, width: int, size: int, name: str) -> int:
    if width > size:
        raise ValueError(f"gap width {width} exceeds the {size} pixels along the {name}")
    if position is None:
        return (size - width) // 2
    position = _check_int(position, f"position of the {name} band")
    if not 0 <= position <= size - width:
        raise ValueError(
            f"a {width}-pixel band along the {name} must start in 0..{size - width}, "
            f"got position {position}"
        )
    return position


def synthetic_gap_mask(
    shape: Sequence[int],
    kind: GapKind,
    width: int,
    position: int | None = None,
    position2: int | None = None,
) -> np.ndarray:
    """Straight synthetic gap bands, for training and evaluation.

    Parameters
    ----------
    shape : sequence of 3 int
        Output shape (frames, rows, columns).
    kind : {"vertical", "horizontal", "cross"}
        ``"vertical"``: a band of ``width`` detector columns (axis 2), all frames and
        rows. ``"horizontal"``: a band of ``width`` detector rows (axis 1).
        ``"cross"``: both bands.
    width : int
        Band width in pixels (both bands of a cross).
    position : int, optional
        First index of the band: the column band for ``"vertical"`` and ``"cross"``,
        the row band for ``"horizontal"``. Default: centred, ``(size - width) // 2``.
    position2 : int, optional
        First row of the horizontal band of a ``"cross"`` (default: centred). Only
        valid with ``kind="cross"``.

    Returns
    -------
    gap_mask : ndarray of bool, shape ``shape``
        True in the gap.
    """
    n_frames, n_rows, n_cols = _check_shape3d(shape)
    if kind not in GAP_KINDS:
        raise ValueError(f"gap kind must be one of {', '.join(GAP_KINDS)}; got {kind!r}")
    width = _check_int(width, "gap width", minimum=1)
    if position2 is not None and kind != "cross":
        raise ValueError(
            f"position2 places the second band of a cross; got position2={position2!r} "
            f"with kind {kind!r}"
        )

    gap_map = np.zeros((n_rows, n_cols), dtype=bool)
    if kind in ("vertical", "cross"):
        start = _band_start(position, width, n_cols, "columns")
        gap_map[:, start : start + width] = True
    if kind == "horizontal":
        start = _band_start(position, width, n_rows, "rows")
        gap_map[start : start + width, :] = True
    if kind == "cross":
        start = _band_start(position2, width, n_rows, "rows")
        gap_map[start : start + width, :] = True
    return np.repeat(gap_map[np.newaxis], n_frames, axis=0)


def central_cross_gap(shape: Sequence[int], width: int, seed: int, max_offset: int = 8
                      ) -> tuple[np.ndarray, list[int]]:
    """The cross gap of the evaluation protocols: two bands ``width`` pixels wide (all frames),
    each starting within ``max_offset`` pixels of centring on its detector axis, drawn from
    ``seed`` (the same seed gives the same offsets at every width).

    Returns the gap mask, bool of ``shape`` (frames, rows, columns), and the first column of
    the vertical band and first row of the horizontal one.
    """
    frames, rows, cols = _check_shape3d(shape)
    rng = np.random.default_rng(seed)
    pos = [int(n // 2 - width // 2 + rng.integers(-max_offset, max_offset + 1)) for n in (cols, rows)]
    return synthetic_gap_mask((frames, rows, cols), "cross", width, position=pos[0], position2=pos[1]), pos


def parse_gap_spec(spec: str) -> tuple[str, int]:
    """Parse a gap specification such as ``"cross:9"``.

    Parameters
    ----------
    spec : str
        ``"<kind>:<width>"`` with kind in {"vertical", "horizontal", "cross"} (case and
        surrounding spaces ignored) and a positive integer width in pixels.

    Returns
    -------
    kind : str
    width : int

    Examples
    --------
    >>> parse_gap_spec("cross:9")
    ('cross', 9)
    """
    if not isinstance(spec, str):
        raise TypeError(f"gap spec must be a string like 'cross:9', got {spec!r}")
    kind, sep, width_text = spec.partition(":")
    kind = kind.strip().lower()
    if not sep:
        raise ValueError(f"gap spec must look like 'cross:9' (kind:width), got {spec!r}")
    if kind not in GAP_KINDS:
        raise ValueError(
            f"gap spec {spec!r}: kind must be one of {', '.join(GAP_KINDS)}, got {kind!r}"
        )
    width_text = width_text.strip()
    if not width_text.isdigit() or int(width_text) < 1:
        raise ValueError(
            f"gap spec {spec!r}: width must be a positive integer, got {width_text!r}"
        )
    return kind, int(width_text)


# --- run-length helpers on 2D boolean maps --------------------------------------------
# Gap bands are straight runs along a detector axis, so run lengths (computed with
# cumulative sums, O(pixels) whatever the band length) describe them directly.


def _backward_runs(flags: np.ndarray, axis: int) -> np.ndarray:
    """Length of the run of True ending at each pixel, counted towards lower indices."""
    # int32 halves the temporaries on a 10-Mpixel Eiger9M map; runs never reach 2**31
    counts = np.cumsum(flags, axis=axis, dtype=np.int32)
    last_false = np.where(flags, 0, counts)
    np.maximum.accumulate(last_false, axis=axis, out=last_false)
    return counts - last_false


def _forward_runs(flags: np.ndarray, axis: int) -> np.ndarray:
    """Length of the run of True starting at each pixel, counted towards higher indices."""
    flipped = np.flip(flags, axis=axis)
    return np.flip(_backward_runs(flipped, axis), axis=axis)


def _run_lengths(flags: np.ndarray, axis: int) -> np.ndarray:
    """Length of the whole run of True that each pixel belongs to (0 where False)."""
    total = _backward_runs(flags, axis) + _forward_runs(flags, axis) - 1
    return np.where(flags, total, 0)


def _trailing_window_any(flags: np.ndarray, size: int, axis: int) -> np.ndarray:
    """True where any of the ``size`` pixels ending at this one (along axis) is True."""
    counts = np.moveaxis(np.cumsum(flags, axis=axis, dtype=np.int32), axis, -1)
    window = counts.copy()
    window[..., size:] -= counts[..., :-size]
    return np.moveaxis(window > 0, -1, axis)


def _square_opening(flags: np.ndarray, side: int) -> np.ndarray:
    """Union of all ``side`` x ``side`` squares lying entirely inside ``flags``."""
    # erosion then dilation by a square, both separable into the two axes
    fits = _forward_runs(_forward_runs(flags, axis=1) >= side, axis=0) >= side
    return _trailing_window_any(_trailing_window_any(fits, side, axis=0), side, axis=1)


def _always_masked(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"{name} must be 3D (frames, rows, columns), got shape {mask.shape}")
    if mask.size == 0:
        raise ValueError(f"{name} is empty (shape {mask.shape})")
    if mask.dtype == object or not (
        np.issubdtype(mask.dtype, np.number) or mask.dtype == bool
    ):
        raise TypeError(f"{name} must be a numeric or boolean array, got dtype {mask.dtype}")
    return np.all(mask != 0, axis=0)


def gap_mask_from_mask(
    mask: np.ndarray,
    *,
    min_length: int | None = None,
    max_width: int | None = 64,
) -> np.ndarray:
    """Recover the detector gaps from a bcdi/PyNX 3D mask.

    Parameters
    ----------
    mask : ndarray, shape (frames, rows, columns)
        bcdi/PyNX mask, nonzero where a voxel is masked.
    min_length : int, optional
        Shortest straight run, in pixels, that counts as a gap line. Default: half the
        detector extent along the run (half the columns for a horizontal band, half the
        rows for a vertical one), so only bands spanning most of the ROI qualify.
    max_width : int or None, default 64
        Widest band that can be a gap, in pixels. Always-masked regions that contain a
        square wider than this (a beamstop, a masked detector half) are not gaps. Must
        exceed the widest real gap: bcdi's Eiger2M has 41-row gaps unbinned. ``None``
        disables the test.

    Returns
    -------
    gap_mask : ndarray of bool, shape ``mask.shape``
        True on the detected gap pixels, the same in every frame.

    Notes
    -----
    The rule, on the 2D map of detector pixels masked in *every* frame:

    1. a pixel is a gap candidate if it lies in a straight run of always-masked pixels at
       least ``min_length`` long along the detector rows or columns;
    2. candidates inside any always-masked square of side ``max_width + 1`` are dropped.

    Aliens are masked in some frames only and fail the "every frame" test; hot pixels
    and small dead clusters are masked in every frame but fail (1). A dead line of
    pixels spanning most of the ROI is indistinguishable from a 1-pixel gap and is
    returned. Where a gap passes through a thick masked region, the part inside that
    region is not returned.
    """
    always = _always_masked(mask, "mask")
    n_rows, n_cols = always.shape
    if min_length is None:
        min_horizontal_run, min_vertical_run = math.ceil(n_cols / 2), math.ceil(n_rows / 2)
    else:
        min_horizontal_run = min_vertical_run = _check_int(
            min_length, "min_length", minimum=1
        )

    # axis 1 of the 2D map runs along the columns (horizontal), axis 0 along the rows
    lines = (_run_lengths(always, axis=1) >= min_horizontal_run) | (
        _run_lengths(always, axis=0) >= min_vertical_run
    )
    if max_width is not None:
        side = _check_int(max_width, "max_width", minimum=1) + 1
        if side <= min(n_rows, n_cols):
            lines &= ~_square_opening(always, side)
    return np.repeat(lines[np.newaxis], mask.shape[0], axis=0)


def gap_width(gap_mask: np.ndarray) -> int:
    """Width in pixels of the widest gap band, used to choose an inpainting model.

    Parameters
    ----------
    gap_mask : ndarray, shape (frames, rows, columns) or (rows, columns)
        Nonzero in the gap. A 3D mask is reduced to the pixels that are gaps in every
        frame.

    Returns
    -------
    width : int
        0 when there is no gap.

    Notes
    -----
    Each gap pixel belongs to its longer run: horizontal if its run along the columns
    is at least its run along the rows, vertical otherwise (both on a tie, as at the
    centre of a square cross). The width of a horizontal band is the run along the rows
    through its horizontal pixels, and conversely; the widest is returned. So a cross of
    two 9-pixel bands has width 9, not the full detector where the bands intersect, and
    an isolated block has the width of its shorter side.
    """
    gap_mask = np.asarray(gap_mask)
    if gap_mask.ndim == 3:
        gap_map = _always_masked(gap_mask, "gap_mask")
    elif gap_mask.ndim == 2:
        gap_map = gap_mask != 0
    else:
        raise ValueError(
            "gap_mask must be 3D (frames, rows, columns) or 2D (rows, columns), "
            f"got shape {gap_mask.shape}"
        )
    if not gap_map.any():
        return 0
    run_along_cols = _run_lengths(gap_map, axis=1)
    run_along_rows = _run_lengths(gap_map, axis=0)
    horizontal = gap_map & (run_along_cols >= run_along_rows)
    vertical = gap_map & (run_along_rows >= run_along_cols)
    widths = [0]
    if horizontal.any():
        widths.append(int(_run_lengths(horizontal, axis=0).max()))
    if vertical.any():
        widths.append(int(_run_lengths(vertical, axis=1).max()))
    return max(widths)
