"""Download a benchmark dataset from its official source: resumable, checked, then extracted.

``download_dataset(name, root)`` fetches each archive of :data:`SOURCES` into ``root`` through a
``<file>.part`` that an interrupted run resumes with an HTTP ``Range`` request, checks it against the
checksum its publisher gives (md5 or sha256; none is invented where none is published), renames it into
place and extracts it under ``root`` (tar and zip, members that would land outside ``root`` refused).
Datasets behind a login or a licence form (Cityscapes, DRIVE, PROMISE12) cannot be fetched: their entry
says where to get them, and the command says so in one line.
"""

from __future__ import annotations

import hashlib
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import PixelsegError, closest

CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """One file of a dataset: where it is, what it is called, its published checksum, whether to unpack it."""

    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    extract: bool = True


@dataclass(frozen=True)
class DatasetSource:
    """A dataset's files, or (``manual``) where to get it by hand when it cannot be fetched."""

    files: tuple[Source, ...] = ()
    manual: str | None = None


_VOC = Source("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
              "VOCtrainval_11-May-2012.tar", md5="6cd6e144f989b92b3379bac3b3de84fd")
_SBD = Source("http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
              "benchmark.tgz", md5="82b4d87ceb2ed10f6038a1cba92111cb")
_COCO = "http://images.cocodataset.org/zips/"
_PROSTATE = Source("https://msd-for-monai.s3-us-west-2.amazonaws.com/Task05_Prostate.tar", "Task05_Prostate.tar",
                   md5="35138f08b1efaef89d7424d2bcc928db")
SOURCES: dict[str, DatasetSource] = {
    "voc": DatasetSource((_VOC,)),
    "voc_aug": DatasetSource((_VOC, _SBD)),
    "ade20k": DatasetSource((Source("http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
                                    "ADEChallengeData2016.zip"),)),
    "coco_stuff": DatasetSource((
        Source(_COCO + "train2017.zip", "train2017.zip"), Source(_COCO + "val2017.zip", "val2017.zip"),
        Source("http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip",
               "stuffthingmaps_trainval2017.zip"))),
    "medical": DatasetSource((_PROSTATE,)),
    "cityscapes": DatasetSource(manual="Cityscapes needs an account: log in at https://www.cityscapes-dataset.com/"
                                       "downloads/, fetch gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip "
                                       "and unzip both into the root"),
    "drive": DatasetSource(manual="DRIVE is released after registration at https://drive.grand-challenge.org/: "
                                  "unzip its training.zip and test.zip into the root (training/, test/)"),
    "promise12": DatasetSource(manual="PROMISE12 is released after registration at "
                                      "https://promise12.grand-challenge.org/: unzip the training parts into the root"),
    "weizmann_horse": DatasetSource(manual="the Weizmann Horse database has no official download: get "
                                           "weizmann_horse_db/ (rgb/, gray/, figure_ground/) from a mirror such as "
                                           "github.com/shenshutao/image_segmentation into the root"),
}
# Where an archive's content lands under root, for the readers: COCO's image zips go under images/.
_EXTRACT_INTO = {"train2017.zip": "images", "val2017.zip": "images"}


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, source: Source) -> None:
    """Refuse a file whose checksum differs from the published one (nothing to check when none is)."""
    for algorithm, expected in (("sha256", source.sha256), ("md5", source.md5)):
        if expected is not None:
            actual = file_digest(path, algorithm)
            if actual != expected.lower():
                raise PixelsegError(f"{algorithm} mismatch: expected {expected}, got {actual} (corrupt or "
                                    "changed download; it was deleted, run the command again)", path)


def fetch(source: Source, directory: Path, *, timeout: float = 60.0,
          progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Download ``source`` into ``directory`` (resuming ``<file>.part``), verify it, and return its path.

    An existing complete file that passes the check is kept as it is.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target, part = directory / source.filename, directory / f"{source.filename}.part"
    if target.is_file():
        verify(target, source)
        return target
    done = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(source.url, headers={"User-Agent": "pixelseg"})
    if done:
        request.add_header("Range", f"bytes={done}-")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if done and response.status != 206:  # the server ignored the range: start over
                done = 0
            length = response.headers.get("Content-Length")
            total = done + int(length) if length is not None else None
            with open(part, "ab" if done else "wb") as handle:
                for block in iter(lambda: response.read(CHUNK), b""):
                    handle.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not part.is_file():  # 416: the part is already whole
            raise PixelsegError(f"download failed: HTTP {err.code} {err.reason}", source.url) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise PixelsegError(f"download failed ({reason}); run the command again to resume from "
                            f"{part.name}", source.url) from None
    try:
        verify(part, source)
    except PixelsegError:
        part.unlink(missing_ok=True)
        raise
    part.replace(target)
    return target


def extract(archive: Path, destination: Path) -> None:
    """Unpack a tar or zip archive under ``destination``; members escaping it are refused."""
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as bundle:
                for member in bundle.namelist():
                    if not (root / member).resolve().is_relative_to(root):
                        raise PixelsegError(f"archive member '{member}' would be written outside the root", archive)
                bundle.extractall(root)
        elif name.endswith((".tar", ".tgz", ".tar.gz")):
            with tarfile.open(archive) as bundle:
                bundle.extractall(root, filter="data")
        else:
            raise PixelsegError("not a tar or zip archive", archive)
    except (tarfile.TarError, zipfile.BadZipFile) as err:
        raise PixelsegError(f"cannot extract the archive ({err})", archive) from None


def download_dataset(name: str, root: str | Path, *, timeout: float = 60.0,
                     progress: Callable[[str, int, int | None], None] | None = None,
                     sources: dict[str, DatasetSource] | None = None) -> list[Path]:
    """Fetch, check and extract every file of dataset ``name`` into ``root``; the files fetched."""
    sources = SOURCES if sources is None else sources
    if name not in sources:
        raise PixelsegError(f"no download for dataset '{name}'; known: {', '.join(sources)}"
                            f"{closest(name, list(sources))}")
    entry = sources[name]
    if entry.manual is not None:
        raise PixelsegError(f"'{name}' cannot be downloaded automatically: {entry.manual}")
    root = Path(root)
    fetched = []
    for source in entry.files:
        report = (lambda done, total, f=source.filename: progress(f, done, total)) if progress else None
        path = fetch(source, root, timeout=timeout, progress=report)
        marker = root / f".{source.filename}.extracted"
        if source.extract and not marker.is_file():
            extract(path, root / _EXTRACT_INTO.get(source.filename, ""))
            marker.touch()
        fetched.append(path)
    return fetched
