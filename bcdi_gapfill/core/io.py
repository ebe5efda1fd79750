"""Reading and writing BCDI stacks: .npy, .npz, HDF5 and PyNX/CXI files.

Arrays follow bcdi's (frames, rows, columns) order. Masks follow bcdi and PyNX: nonzero
where a voxel is masked.

Conventions of the files this module understands:

* ``.npz`` -- bcdi writes the intensity under ``data`` (``S*_pynx*.npz``) and the mask
  under ``mask`` (``S*_maskpynx*.npz``). This module adds a ``metadata`` entry holding
  a JSON string when attributes are saved.
* ``.h5`` / ``.hdf5`` -- a dataset path is the key; this module writes ``data`` and
  ``mask`` at the root, attributes on the data dataset.
* ``.cxi`` -- the CXI layout written by PyNX's ``save_cdi_data_cxi``
  (``pynx/cdi/cdi.py``): intensity in ``entry_1/instrument_1/detector_1/data`` with a
  soft link ``entry_1/data_1/data``, mask in ``entry_1/instrument_1/detector_1/mask``.

Every write is atomic: the file is written next to its destination under a temporary
name, flushed to disk, then renamed over the destination, so a crash or an error never
leaves a partial output behind.
"""
from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import platform
import sys
import tempfile
import time
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from numbers import Integral
from pathlib import Path
from typing import Any, Union

import h5py
import numpy as np

from bcdi_gapfill import __version__

__all__ = [
    "json_safe",
    "software_versions",
    "SUPPORTED_SUFFIXES",
    "CXI_DATA_PATH",
    "CXI_DETECTOR_DATA_PATH",
    "CXI_MASK_PATH",
    "load_array",
    "load_data_and_mask",
    "load_metadata",
    "save_array",
    "atomic_write_bytes",
    "atomic_write_text",
    "file_sha256",
    "check_config_keys",
]

PathLike = Union[str, "os.PathLike[str]"]

SUPPORTED_SUFFIXES: tuple[str, ...] = (".npy", ".npz", ".h5", ".hdf5", ".cxi")
CXI_DATA_PATH = "entry_1/data_1/data"
CXI_DETECTOR_DATA_PATH = "entry_1/instrument_1/detector_1/data"
CXI_MASK_PATH = "entry_1/instrument_1/detector_1/mask"
# where PyNX's CDI runner looks for the intensity in a .cxi file, in its order
_CXI_DATA_PATHS = (CXI_DATA_PATH, CXI_DETECTOR_DATA_PATH, "entry_1/image_1/data")

_NPZ_DATA_KEY = "data"
_NPZ_MASK_KEY = "mask"
_NPZ_METADATA_KEY = "metadata"
# names of the HDF5 attributes that were JSON-encoded because HDF5 cannot hold them
_JSON_ATTRS_NAME = "bcdi_gapfill_json_attrs"

# What numpy, zipfile and h5py raise on corrupt, truncated or foreign files (numpy parses a
# .npy header with the tokenizer and literal_eval; a corrupt shape can ask for exabytes).
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, RuntimeError, zipfile.BadZipFile,
                zlib.error, TypeError, SyntaxError, tokenize.TokenError, MemoryError, OverflowError)


class _ContentError(ValueError):
    """A readable file that does not hold what was asked; the message is complete."""


# --- shared validation -----------------------------------------------------------------


def as_path(path: PathLike, name: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text:
        raise ValueError(f"{name} must be a non-empty text path, got {path!r}")
    return Path(text)


def array_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported file suffix {path.suffix!r}; supported: "
            f"{', '.join(SUPPORTED_SUFFIXES)}"
        )
    return suffix


def _as_numeric_array(value: Any, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "biufc":
        raise TypeError(f"{name} must be a numeric or boolean array, got dtype {array.dtype}")
    return array


def _check_key(key: object, name: str = "key") -> str | None:
    if key is not None and (not isinstance(key, str) or not key):
        raise TypeError(f"{name} must be a non-empty string or None, got {key!r}")
    return key


# --- reading ---------------------------------------------------------------------------


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a data file")


def _list_datasets(h5: h5py.File) -> list[str]:
    found: list[str] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append(f"{name} {obj.shape} {obj.dtype}")

    h5.visititems(visit)
    return found


def _h5_listing(path: Path, h5: h5py.File) -> str:
    datasets = _list_datasets(h5)
    return f"{path} holds the datasets: {'; '.join(datasets) if datasets else 'none'}"


def _dataset_array(path: Path, dataset: h5py.Dataset) -> np.ndarray:
    if dataset.dtype.kind not in "biufc":
        raise _ContentError(
            f"{path}: dataset {dataset.name!r} has dtype {dataset.dtype}, not a numeric array"
        )
    return np.asarray(dataset[()])


def _find_h5_dataset(
    path: Path, h5: h5py.File, key: str | None, role: str, optional: bool
) -> h5py.Dataset | None:
    """Resolve which dataset ``key`` (or the default for ``role``) names."""
    if key is not None:
        # .get() follows soft links and returns None for missing or dangling ones
        found = h5.get(key)
        if isinstance(found, h5py.Dataset):
            return found
        what = "a group, not a dataset" if isinstance(found, h5py.Group) else "missing"
        raise _ContentError(f"{path}: key {key!r} is {what}; {_h5_listing(path, h5)}")

    if path.suffix.lower() == ".cxi":
        candidates = _CXI_DATA_PATHS if role == "data" else (CXI_MASK_PATH,)
    else:
        candidates = (role,)
    for name in candidates:
        found = h5.get(name)
        if isinstance(found, h5py.Dataset):
            return found
    if optional:
        return None

    three_d: list[h5py.Dataset] = []
    h5.visititems(
        lambda _name, obj: three_d.append(obj)
        if isinstance(obj, h5py.Dataset) and obj.ndim == 3
        else None
    )
    if len(three_d) == 1:
        return three_d[0]
    raise _ContentError(
        f"{path}: no {role!r} dataset at the conventional place "
        f"({', '.join(candidates)}) and {len(three_d)} 3D datasets, so the {role} is "
        f"ambiguous; pass its dataset path as the key. {_h5_listing(path, h5)}"
    )


def _choose_npz_entry(
    path: Path, names: list[str], key: str | None, role: str, optional: bool
) -> str | None:
    if key is not None:
        if key in names:
            return key
        raise _ContentError(f"{path}: no entry {key!r}; the archive holds: {names}")
    if role in names:
        return role
    if optional:
        return None
    arrays = [name for name in names if name != _NPZ_METADATA_KEY]
    if len(arrays) == 1:
        return arrays[0]
    raise _ContentError(
        f"{path}: no {role!r} entry and {len(arrays)} arrays, so the {role} is ambiguous; "
        f"pass the key. The archive holds: {names}"
    )


def _open_npz(path: Path) -> Any:
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        raise _ContentError(f"{path} is a .npy file, not a .npz archive")
    return loaded


def _numeric(path: Path, value: Any, what: str) -> np.ndarray:
    # an npz may hold members that are not .npy files (numpy returns their bytes)
    if not isinstance(value, np.ndarray):
        raise _ContentError(f"{path}: {what} is not a numpy array (got {type(value).__name__})")
    if value.dtype.kind not in "biufc":
        raise _ContentError(f"{path}: {what} has dtype {value.dtype}, not a numeric array")
    return value


def _read(
    path: Path, key: str | None, role: str, optional: bool = False
) -> np.ndarray | None:
    """Read one array; ``role`` ('data' or 'mask') picks the default entry."""
    suffix = array_suffix(path)
    _check_readable(path)
    try:
        if suffix == ".npy":
            if key is not None:
                raise _ContentError(
                    f"{path} is a .npy file holding a single array; key={key!r} does not apply"
                )
            if optional:
                return None
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.ndarray):
                loaded.close()
                raise _ContentError(f"{path} is a .npz archive, not a .npy file")
            return _numeric(path, loaded, "the array")
        if suffix == ".npz":
            with _open_npz(path) as archive:
                entry = _choose_npz_entry(path, list(archive.files), key, role, optional)
                return None if entry is None else _numeric(path, archive[entry], f"entry {entry!r}")
        with h5py.File(path, "r") as h5:
            dataset = _find_h5_dataset(path, h5, key, role, optional)
            return None if dataset is None else _dataset_array(path, dataset)
    except _ContentError as exc:
        # the message is complete; show callers a plain ValueError, not a private class
        raise ValueError(str(exc)) from None
    except _READ_ERRORS as exc:
        raise ValueError(
            f"cannot read {path} as a {suffix} file (corrupt, truncated or another "
            f"format?): {type(exc).__name__}: {exc}"
        ) from exc


def load_array(path: PathLike, key: str | None = None) -> np.ndarray:
    """Load one array from a .npy, .npz, .h5/.hdf5 or .cxi file.

    Parameters
    ----------
    path : str or os.PathLike
        File to read; the format is taken from the suffix.
    key : str, optional
        Entry to read: the array name in a .npz, the dataset path in an HDF5/CXI file.
        Not allowed for .npy. When omitted:

        * .npz -- the ``data`` entry, else the only array in the archive;
        * .h5/.hdf5 -- the root dataset ``data``, else the only 3D dataset;
        * .cxi -- ``entry_1/data_1/data`` (then the other places PyNX reads).

    Returns
    -------
    array : ndarray
        As stored (dtype and shape unchanged).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        On an unsupported suffix, a missing or ambiguous key (the message lists what the
        file holds), or a file that cannot be read (corrupt, truncated, wrong format);
        the message names the path.
    """
    array = _read(as_path(path), _check_key(key), role="data")
    assert array is not None  # optional=False never returns None
    return array


def load_data_and_mask(
    data_path: PathLike,
    mask_path: PathLike | None = None,
    data_key: str | None = None,
    mask_key: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a 3D diffraction stack and its mask.

    Parameters
    ----------
    data_path : str or os.PathLike
        File holding the intensity, read as by :func:`load_array`.
    mask_path : str or os.PathLike, optional
        File holding the mask. Without a key, the ``mask`` entry (.npz), the root
        ``mask`` dataset (.h5) or ``entry_1/instrument_1/detector_1/mask`` (.cxi) is
        read, else the file's only array / only 3D dataset. When omitted, the mask is
        looked for in ``data_path``: under ``mask_key`` if given (then it must exist),
        else at the conventional place above, and ``None`` is returned if it is absent.
    data_key, mask_key : str, optional
        Entries to read, as the ``key`` of :func:`load_array`.

    Returns
    -------
    data : ndarray, shape (frames, rows, columns)
    mask : ndarray of the same shape, or None
        Nonzero where masked, dtype as stored.

    Raises
    ------
    ValueError
        If the data are not 3D or the mask shape differs from the data shape, plus the
        errors of :func:`load_array`.
    """
    data_file = as_path(data_path, "data_path")
    data = _read(data_file, _check_key(data_key, "data_key"), role="data")
    assert data is not None
    if data.ndim != 3:
        raise ValueError(
            f"{data_file}: data must be 3D (frames, rows, columns), got shape {data.shape}"
        )
    mask_key = _check_key(mask_key, "mask_key")
    if mask_path is None:
        mask_file = data_file
        mask = _read(mask_file, mask_key, role="mask", optional=mask_key is None)
    else:
        mask_file = as_path(mask_path, "mask_path")
        mask = _read(mask_file, mask_key, role="mask")
    if mask is not None and mask.shape != data.shape:
        raise ValueError(
            f"mask shape {mask.shape} (from {mask_file}) differs from data shape "
            f"{data.shape} (from {data_file})"
        )
    return data, mask


def _to_python(value: Any) -> Any:
    """numpy scalars/arrays and HDF5 byte strings as plain Python values."""
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple)):
        return [_to_python(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_python(item) for key, item in value.items()}
    return value


def load_metadata(path: PathLike, key: str | None = None) -> dict[str, Any]:
    """Read the attributes saved with an array by :func:`save_array`.

    Parameters
    ----------
    path : str or os.PathLike
        A .npy, .npz, .h5/.hdf5 or .cxi file.
    key : str, optional
        For HDF5/CXI files, the dataset whose attributes to read, resolved as in
        :func:`load_array`.

    Returns
    -------
    attrs : dict
        The ``metadata`` JSON entry of a .npz, the attributes of the data dataset of an
        HDF5/CXI file (numpy values converted to Python ones), ``{}`` for a .npy or when
        nothing was saved.
    """
    file = as_path(path)
    suffix = array_suffix(file)
    _check_readable(file)
    key = _check_key(key)
    try:
        if suffix == ".npy":
            return {}
        if suffix == ".npz":
            with _open_npz(file) as archive:
                if _NPZ_METADATA_KEY not in archive.files:
                    return {}
                text = archive[_NPZ_METADATA_KEY].item()
            attrs = json.loads(text)
            if not isinstance(attrs, dict):
                raise _ContentError(f"{file}: the metadata entry is not a JSON object")
            return attrs
        with h5py.File(file, "r") as h5:
            dataset = _find_h5_dataset(file, h5, key, "data", optional=False)
            assert dataset is not None
            raw = {name: _to_python(value) for name, value in dataset.attrs.items()}
    except _ContentError as exc:
        # the message is complete; show callers a plain ValueError, not a private class
        raise ValueError(str(exc)) from None
    except _READ_ERRORS as exc:
        raise ValueError(
            f"cannot read metadata of {file} ({type(exc).__name__}: {exc})"
        ) from exc
    json_names = json.loads(raw.pop(_JSON_ATTRS_NAME, "[]"))
    for name in json_names:
        if name in raw:
            raw[name] = json.loads(raw[name])
    return raw


# --- atomic writing --------------------------------------------------------------------


def _protected_list(protect: Iterable[PathLike] | PathLike | None) -> list[Path]:
    if protect is None:
        return []
    if isinstance(protect, (str, os.PathLike)):
        protect = [protect]
    return [as_path(item, "protect entry") for item in protect]


def same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    # hard links have different real paths but are the same file
    with contextlib.suppress(OSError):
        return a.exists() and b.exists() and os.path.samefile(a, b)
    return False


def _current_umask() -> int:
    # Linux exposes the umask read-only; elsewhere it can only be read by setting it,
    # which is briefly racy with threads creating files.
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _fsync_path(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    # makes the rename durable; not possible on every platform (e.g. Windows)
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(tmp: Path, dest: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, dest)
        return
    try:
        # link() refuses an existing name atomically, unlike an exists() check + rename
        os.link(tmp, dest)
    except FileExistsError:
        raise FileExistsError(
            f"{dest} appeared while it was being written; pass overwrite=True to replace it"
        ) from None
    except OSError:
        # file systems without hard links: fall back to check-then-rename
        if os.path.lexists(dest):
            raise FileExistsError(f"{dest} exists; pass overwrite=True to replace it") from None
        os.replace(tmp, dest)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def atomic_write(
    path: PathLike,
    write: Callable[[Path], None],
    *,
    overwrite: bool,
    protect: Iterable[PathLike] | PathLike | None,
) -> Path:
    dest = as_path(path)
    for protected in _protected_list(protect):
        if same_file(dest, protected):
            raise ValueError(
                f"refusing to write {dest}: it is the protected input {protected}"
            )
    if dest.is_dir():
        raise ValueError(f"cannot write {dest}: it is a directory")
    if not overwrite and os.path.lexists(dest):
        raise FileExistsError(f"{dest} exists; pass overwrite=True to replace it")
    directory = dest.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write {dest}: directory {directory} does not exist")

    mode = 0o666 & ~_current_umask()
    if overwrite and dest.exists():
        mode = dest.stat().st_mode & 0o7777
    # same directory as the destination, so the final rename never crosses file systems
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        _fsync_path(tmp)
        os.chmod(tmp, mode)
        _publish(tmp, dest, overwrite)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(directory)
    return dest


def atomic_write_bytes(
    path: PathLike,
    data: bytes,
    overwrite: bool = False,
    *,
    protect: Iterable[PathLike] | PathLike | None = None,
) -> Path:
    """Write bytes to a file atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; its directory must exist.
    data : bytes-like
        Content to write.
    overwrite : bool, default False
        Replace an existing file instead of raising FileExistsError.
    protect : path or iterable of paths, optional
        Paths that must never be written (e.g. the inputs), even with ``overwrite``.

    Returns
    -------
    path : pathlib.Path
        The file written.

    Raises
    ------
    FileExistsError
        If the destination exists and ``overwrite`` is False.
    ValueError
        If the destination is a protected path or a directory.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    return atomic_write(path, write, overwrite=overwrite, protect=protect)


def atomic_write_text(
    path: PathLike,
    text: str,
    overwrite: bool = False,
    *,
    encoding: str = "utf-8",
    protect: Iterable[PathLike] | PathLike | None = None,
) -> Path:
    """Write text to a file atomically (no newline translation).

    Parameters
    ----------
    path : str or os.PathLike
        Destination; its directory must exist.
    text : str
        Content to write.
    overwrite : bool, default False
        Replace an existing file instead of raising FileExistsError.
    encoding : str, default "utf-8"
    protect : path or iterable of paths, optional
        Paths that must never be written, even with ``overwrite``.

    Returns
    -------
    path : pathlib.Path
        The file written.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    # encode first so an encoding error never creates a temporary file
    return atomic_write_bytes(path, text.encode(encoding), overwrite, protect=protect)


# --- array writers ---------------------------------------------------------------------


def check_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise TypeError(f"attrs must be a dict, got {type(attrs).__name__}")
    checked: dict[str, Any] = {}
    for name, value in attrs.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"attrs keys must be non-empty strings, got {name!r}")
        if name == _JSON_ATTRS_NAME:
            raise ValueError(f"attrs key {name!r} is reserved by bcdi_gapfill")
        value = _to_python(value)
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"attrs[{name!r}] must be a string, number or JSON-serialisable value, "
                f"got {type(value).__name__}: {exc}"
            ) from None
        checked[name] = value
    return checked


def _is_native_h5_attr(value: Any) -> bool:
    if isinstance(value, (str, bool, float)):
        return True
    # HDF5 integers stop at 64 bits; larger Python ints go through JSON
    return isinstance(value, Integral) and -(2**63) <= value < 2**63


def write_h5_attrs(target: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    json_names = []
    for name, value in attrs.items():
        if _is_native_h5_attr(value):
            target.attrs[name] = value
        else:
            target.attrs[name] = json.dumps(value)
            json_names.append(name)
    if json_names:
        target.attrs[_JSON_ATTRS_NAME] = json.dumps(json_names)


def h5_storage(array: np.ndarray) -> dict[str, Any]:
    # PyNX's settings; HDF5 cannot chunk scalars or empty arrays
    if array.ndim == 0 or array.size == 0:
        return {}
    return {"chunks": True, "shuffle": True, "compression": "gzip"}


def _write_npy(
    tmp: Path, *, array: np.ndarray, mask: np.ndarray | None, attrs: dict[str, Any],
    key: str | None, final_path: Path,
) -> None:
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _write_npz(
    tmp: Path, *, array: np.ndarray, mask: np.ndarray | None, attrs: dict[str, Any],
    key: str | None, final_path: Path,
) -> None:
    entries = {key or _NPZ_DATA_KEY: array}
    if mask is not None:
        entries[_NPZ_MASK_KEY] = mask
    if attrs:
        entries[_NPZ_METADATA_KEY] = np.array(json.dumps(attrs))
    # a file handle, not a name: np.savez would append ".npz" to the temporary name
    with open(tmp, "wb") as handle:
        np.savez_compressed(handle, **entries)


def _write_h5(
    tmp: Path, *, array: np.ndarray, mask: np.ndarray | None, attrs: dict[str, Any],
    key: str | None, final_path: Path,
) -> None:
    with h5py.File(tmp, "w") as h5:
        dataset = h5.create_dataset(key or "data", data=array, **h5_storage(array))
        write_h5_attrs(dataset, attrs)
        if mask is not None:
            h5.create_dataset("mask", data=mask, **h5_storage(mask))


def _write_cxi(
    tmp: Path, *, array: np.ndarray, mask: np.ndarray | None, attrs: dict[str, Any],
    key: str | None, final_path: Path,
) -> None:
    # The layout of PyNX's save_cdi_data_cxi (pynx/cdi/cdi.py), which PyNX's CDI runner
    # and bcdi's load_file read back.

    now = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime())
    with h5py.File(tmp, "w") as h5:
        h5.attrs["file_name"] = str(final_path)
        h5.attrs["file_time"] = now
        h5.attrs["creator"] = "bcdi-gapfill"
        h5.attrs["HDF5_Version"] = h5py.version.hdf5_version
        h5.attrs["h5py_version"] = h5py.version.version
        h5.attrs["default"] = "entry_1"
        h5.create_dataset("cxi_version", data=140)

        entry = h5.create_group("entry_1")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "data_1"
        entry.create_dataset("program_name", data=f"bcdi-gapfill {__version__}")
        entry.create_dataset("start_time", data=now)

        instrument = entry.create_group("instrument_1")
        instrument.attrs["NX_class"] = "NXinstrument"
        detector = instrument.create_group("detector_1")
        detector.attrs["NX_class"] = "NXdetector"
        dataset = detector.create_dataset("data", data=array, **h5_storage(array))
        write_h5_attrs(dataset, attrs)
        if mask is not None:
            # PyNX reads the mask as int8, >0 = bad pixel; PyNX itself skips an all-zero
            # mask, but writing it keeps a round trip exact
            mask_int8 = (mask != 0).astype(np.int8)
            detector.create_dataset("mask", data=mask_int8, **h5_storage(mask_int8))

        data_1 = entry.create_group("data_1")
        data_1.attrs["NX_class"] = "NXdata"
        data_1.attrs["signal"] = "data"
        data_1.attrs["interpretation"] = "scaler" if array.ndim == 3 else "image"
        data_1["data"] = h5py.SoftLink("/" + CXI_DETECTOR_DATA_PATH)


def _writer(suffix: str) -> Callable[..., None]:
    # looked up at call time so tests can substitute a failing writer
    if suffix == ".npy":
        return _write_npy
    if suffix == ".npz":
        return _write_npz
    if suffix == ".cxi":
        return _write_cxi
    return _write_h5


def save_array(
    path: PathLike,
    array: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    key: str | None = None,
    protect: Iterable[PathLike] | PathLike | None = None,
) -> Path:
    """Save an array (and optionally its mask and attributes) atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; the format is taken from the suffix (.npy, .npz, .h5/.hdf5, .cxi).
    array : ndarray
        Numeric or boolean array, typically (frames, rows, columns).
    mask : ndarray, optional
        Same shape as ``array``, nonzero where masked. Stored as the ``mask`` entry
        (.npz), the root ``mask`` dataset (.h5) or ``entry_1/instrument_1/detector_1/mask``
        as int8 0/1 (.cxi). Not possible in a .npy.
    attrs : dict, optional
        String keys; values are strings, numbers or JSON-serialisable. Stored as HDF5
        attributes of the data dataset (values HDF5 cannot hold, such as dicts, are
        JSON strings) or as a ``metadata`` JSON string entry in a .npz. Read back with
        :func:`load_metadata`. Not possible in a .npy.
    overwrite : bool, default False
        Replace an existing file instead of raising FileExistsError.
    key : str, optional
        Name of the array: .npz entry or HDF5 dataset path, default ``data``. Not
        allowed for .npy and .cxi, whose layouts are fixed.
    protect : path or iterable of paths, optional
        Paths never to write, even with ``overwrite`` (pass the inputs here).

    Returns
    -------
    path : pathlib.Path
        The file written.

    Raises
    ------
    FileExistsError
        If the destination exists and ``overwrite`` is False.
    ValueError
        If the destination is protected, the suffix unsupported, the mask shape differs
        from the array shape, or the format cannot hold what was given.
    TypeError
        On a non-numeric array or attributes that are not JSON-serialisable.

    Notes
    -----
    The file is written under a temporary name in the destination directory, flushed
    with fsync and renamed over the destination with :func:`os.replace`; on any failure
    the temporary file is removed, so the destination is either complete or untouched.
    """
    dest = as_path(path)
    suffix = array_suffix(dest)
    array = _as_numeric_array(array, "array")
    if mask is not None:
        mask = _as_numeric_array(mask, "mask")
        if mask.shape != array.shape:
            raise ValueError(
                f"mask shape {mask.shape} differs from array shape {array.shape}"
            )
    checked_attrs = check_attrs(attrs)
    key = _check_key(key)
    if suffix == ".npy":
        given = [name for name, value in (("mask", mask), ("attrs", attrs), ("key", key))
                 if value is not None]
        if given:
            raise ValueError(
                f"{dest}: a .npy file holds a single array, so {', '.join(given)} cannot "
                "be stored; use .npz, .h5 or .cxi"
            )
    elif suffix == ".cxi":
        if key is not None:
            raise ValueError(
                f"{dest}: the CXI layout is fixed (data in {CXI_DETECTOR_DATA_PATH}); "
                f"key={key!r} does not apply"
            )
    else:
        reserved = {_NPZ_MASK_KEY, _NPZ_METADATA_KEY} if suffix == ".npz" else {"mask"}
        if key is not None and key.strip("/") in reserved:
            raise ValueError(
                f"{dest}: key {key!r} is reserved for the "
                f"{'mask' if key.strip('/') == 'mask' else 'attributes'}; choose another"
            )

    writer = _writer(suffix)

    def write(tmp: Path) -> None:
        writer(tmp, array=array, mask=mask, attrs=checked_attrs, key=key, final_path=dest)

    return atomic_write(dest, write, overwrite=overwrite, protect=protect)


def file_sha256(path: PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (weights checks, provenance records)."""
    import hashlib
    digest = hashlib.sha256()
    with open(as_path(path), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_config_keys(section: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Refuse the keys of a configuration ``section`` that nothing reads.

    A misspelt key would otherwise fall back silently to its default. The error names each
    unknown key with the closest known one, e.g. ``unknown keys in the gapfill section:
    'strid' (did you mean 'stride'?); known: [...]``.
    """
    known = sorted(str(k) for k in known)
    unknown = [key for key in section if str(key) not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"unknown keys in {where}: {', '.join(hints)}; known: {known}")


def json_safe(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None, arrays to lists."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    return value


def software_versions() -> dict:
    """Versions of bcdi_gapfill, Python, the platform and the numerical libraries, for records."""
    out = {"bcdi_gapfill": __version__, "python": platform.python_version(),
           "platform": platform.platform(), "numpy": np.__version__}
    for name in ("scipy", "torch", "skimage", "matplotlib"):
        mod = sys.modules.get(name)
        if mod is None:
            try:
                mod = __import__(name)
            except ImportError:
                continue
        out[name] = getattr(mod, "__version__", "?")
    return out
