"""Volume files: ``.npy`` arrays (never unpickled) and multi-page ``.tif`` stacks, read and written.

A multi-page TIFF reads as ``(D, H, W)``, one page per slice. A volume holding NaN or infinite values is
refused (it would be labelled, or trained on, silently wrong). Every problem with a file is a one-line
:class:`~pixelseg.errors.PixelsegError` naming it. TIFF needs ``tifffile`` (``pip install 'pixelseg[io]'``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..errors import PixelsegError

VOLUME_SUFFIXES = (".npy", ".tif", ".tiff")


def list_volume_files(directory: str | Path) -> list[Path]:
    """The volume files (``.npy``, ``.tif``, ``.tiff``) directly in ``directory``, sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PixelsegError("volume folder not found", directory)
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in VOLUME_SUFFIXES and p.is_file())


def read_volume(path: str | Path) -> np.ndarray:
    """Read a ``.npy`` array (never unpickled) or a multi-page ``.tif``/``.tiff`` stack."""
    path = Path(path)
    if not path.is_file():
        raise PixelsegError("volume file not found", path)
    suffix = path.suffix.lower()
    if suffix not in VOLUME_SUFFIXES:
        raise PixelsegError(f"unsupported volume format '{suffix}' (use {', '.join(VOLUME_SUFFIXES)})", path)
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            try:
                import tifffile
            except ImportError:
                raise PixelsegError("reading .tif volumes needs tifffile (pip install 'pixelseg[io]')",
                                    path) from None
            array = np.asarray(tifffile.imread(path))
        check_finite(array, path)
        return array
    except PixelsegError:
        raise
    except Exception as err:  # numpy and tifffile raise many types for corrupt files
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PixelsegError(f"cannot read volume ({first_line})", path) from None


def check_finite(array: np.ndarray, path: str | Path, what: str = "volume") -> None:
    """Refuse an array with NaN or infinite values, naming the file, the count and the first position."""
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating)):
        return
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise PixelsegError(f"{what} has {int(bad.sum()):,} NaN or infinite value(s) (the first at {first}); "
                            "fix or mask them in the file, pixelseg does not guess them", path)


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` in the ``.npy`` format (no pickled objects), ready for an atomic write."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def tif_bytes(array: np.ndarray) -> bytes | None:
    """``array`` as a (multi-page) TIFF, or ``None`` when tifffile is not installed."""
    try:
        import tifffile
    except ImportError:
        return None
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack")  # one grey page per slice, even if D is 3
    return buffer.getvalue()
