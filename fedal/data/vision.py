"""Image datasets of the paper's image setting (issue #5), read through torchvision.

One entry point, :func:`load_vision_dataset`, returns ``(x, y, meta)``:
``x`` uint8 ``(N, H, W, C)`` (C = 1 for grayscale), ``y`` int64 class indices ``0..K-1`` and
``meta`` a plain dict (``num_classes``, ``channels``, ``image_size``, ``mean``, ``std``, …) that
goes straight into result records. Arrays, not ``Dataset`` objects, because everything
downstream (partitioning, feature caches, pools) indexes arrays.

Nothing is downloaded unless ``download=True``. When files are missing (offline, wrong
``data-root``) a single :class:`DatasetNotFound` (a ``FileNotFoundError``) names the dataset,
the root, and every file or folder that was expected where, so a user can fix the layout without
reading torchvision's source. The on-disk layouts are torchvision's own:

- ``cifar10``: ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
- ``cifar100``: ``<root>/cifar-100-python/{train, test, meta}``
- ``fashion-mnist``: ``<root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
  (``.gz`` accepted), or the legacy ``<root>/FashionMNIST/processed/{training,test}.pt``
- ``emnist-letters``: ``<root>/EMNIST/raw/emnist-letters-{train,test}-{images-idx3,labels-idx1}-ubyte``
  (``.gz`` accepted), or ``<root>/EMNIST/processed/{training,test}_letters.pt``
- ``cinic10``: ``<root>/CINIC-10/{train,valid,test}/<class>/*.png`` (an ``ImageFolder`` tree;
  ``<root>/cinic-10`` is accepted too). CINIC-10 is not in torchvision's download list.

torchvision verifies the CIFAR files against their published MD5 sums; files that exist but fail
that check raise :class:`DatasetCorrupted` (a ``DatasetNotFound``) instead of torchvision's
generic "not found or corrupted".
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fedal.compat import import_torchvision
from fedal.image_meta import IMAGE_META, image_meta_entry, vision_meta

SPLITS = ("train", "test")


class DatasetNotFound(FileNotFoundError):
    """The dataset's files are not where torchvision expects them (and were not downloaded)."""


class DatasetCorrupted(DatasetNotFound):
    """The files exist but cannot be read as the dataset (checksum, format or label range)."""


@dataclass(frozen=True)
class VisionSpec:
    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]  # the fields up to here come from fedal.image_meta
    std: tuple[float, ...]
    splits: tuple[str, ...]
    downloadable: bool
    # (root, split) -> [(path, present)] describing what the loader needs; used for error messages
    expected: Callable[[Path, str], list[tuple[str, bool]]]
    # (torchvision, root, split, download) -> (x, y)
    load: Callable[..., tuple[np.ndarray, np.ndarray]]

    def meta(self) -> dict:
        return vision_meta(self.name)


# --------------------------------------------------------------------------- errors / helpers

def _describe(name: str, root: Path, items: list[tuple[str, bool]], hint: str) -> str:
    lines = [f"{name}: dataset files not found under data-root {str(root)!r}. Expected:"]
    lines += [f"  {'ok     ' if ok else 'MISSING'} {path}" for path, ok in items]
    lines.append(hint)
    return "\n".join(lines)


def _missing(name: str, root: Path, split: str, spec: "VisionSpec", extra: str = "") -> DatasetNotFound:
    if spec.downloadable:
        hint = ("Pass download=True to fetch it (needs internet), or copy the files there; "
                "nothing is downloaded unless asked.")
    else:
        hint = ("This dataset cannot be downloaded by torchvision: get CINIC-10.tar.gz from "
                "https://datashare.ed.ac.uk/handle/10283/3192 and extract it into <root>/CINIC-10.")
    msg = _describe(name, root, spec.expected(root, split), hint)
    return DatasetNotFound(msg + (f"\n{extra}" if extra else ""))


def _exists(p: Path) -> tuple[str, bool]:
    return str(p), p.exists()


def _gunzip_atomic(src: Path, dst: Path) -> None:
    """Decompress ``src`` (x.gz) to ``dst`` via a temporary file, so that concurrent readers
    (simulation actors loading the same data-root) never see a half-written file."""
    from fedal.atomic import atomic_file

    with atomic_file(dst) as out, gzip.open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, length=1 << 20)


def _ensure_decompressed(name: str, root: Path, files: list[Path]) -> None:
    """torchvision's MNIST-family readers open the uncompressed IDX files only (its downloader
    extracts the .gz it fetched). Accept a raw/ folder holding just the .gz files, as found in the
    official archives, by extracting them next to themselves once."""
    for f in files:
        gz = f.with_name(f.name + ".gz")
        if not f.exists() and gz.exists():
            try:
                _gunzip_atomic(gz, f)
            except OSError as e:
                raise DatasetNotFound(
                    f"{name}: found {gz} but could not decompress it to {f} ({e}); torchvision "
                    f"reads the uncompressed IDX file. Decompress it yourself (gunzip -k {gz}) "
                    f"or make data-root {str(root)!r} writable.") from e


def _download_failed(name: str, root: Path, split: str, spec: "VisionSpec", err: Exception) -> DatasetNotFound:
    return _missing(name, root, split, spec,
                    extra=f"download=True was given but the download failed ({type(err).__name__}: {err}).")


# --------------------------------------------------------------------------- CIFAR-10 / CIFAR-100

def _cifar_expected(folder: str, files: tuple[str, ...]):
    def expected(root: Path, split: str) -> list[tuple[str, bool]]:
        # torchvision checks every file of both splits plus the meta file, whatever the split.
        return [_exists(root / folder / f) for f in files]
    return expected


def _cifar_loader(cls_name: str):
    def load(tv, root: Path, split: str, download: bool, spec: VisionSpec):
        cls = getattr(tv.datasets, cls_name)
        files = [root / cls.base_folder / f for f, _ in cls.train_list + cls.test_list]
        files.append(root / cls.base_folder / cls.meta["filename"])
        if not download and not all(f.exists() for f in files):
            raise _missing(spec.name, root, split, spec)
        try:
            ds = cls(str(root), train=(split == "train"), download=download)
        except RuntimeError as e:
            if all(f.exists() for f in files):
                raise DatasetCorrupted(
                    f"{spec.name}: the files under {str(root / cls.base_folder)!r} exist but torchvision "
                    f"rejected them ({e}). They must match the official archive ({cls.filename}, "
                    "MD5-checked): re-extract it, or delete the folder and use download=True.") from e
            raise _download_failed(spec.name, root, split, spec, e) from e
        except OSError as e:  # URLError is an OSError
            raise _download_failed(spec.name, root, split, spec, e) from e
        x = np.ascontiguousarray(ds.data, dtype=np.uint8)  # torchvision already made it N,H,W,C
        y = np.asarray(ds.targets, dtype=np.int64)
        return x, y
    return load


# --------------------------------------------------------------------------- Fashion-MNIST / EMNIST

def _idx_files(raw: Path, stems: tuple[str, ...]) -> list[Path]:
    return [raw / s for s in stems]


def _mnist_like_expected(folder: str, raw_stems: Callable[[str], tuple[str, ...]],
                         legacy: tuple[str, str]):
    def expected(root: Path, split: str) -> list[tuple[str, bool]]:
        out = []
        for f in _idx_files(root / folder / "raw", raw_stems(split)):
            out.append((f"{f}  (or {f.name}.gz)", f.exists() or f.with_name(f.name + ".gz").exists()))
        p = root / folder / "processed"
        out.append((f"or, legacy format: {p / legacy[0]} and {p / legacy[1]}",
                    (p / legacy[0]).exists() and (p / legacy[1]).exists()))
        return out
    return expected


def _mnist_like_loader(folder: str, raw_stems: Callable[[str], tuple[str, ...]],
                       legacy: tuple[str, str], make: Callable, post: Callable):
    def load(tv, root: Path, split: str, download: bool, spec: VisionSpec):
        raw = _idx_files(root / folder / "raw", raw_stems(split))
        processed = [root / folder / "processed" / f for f in legacy]
        have_legacy = all(p.exists() for p in processed)
        if not have_legacy:
            _ensure_decompressed(spec.name, root, raw)
            if not download and not all(f.exists() for f in raw):
                raise _missing(spec.name, root, split, spec)
        try:
            ds = make(tv, str(root), split == "train", download)
        except RuntimeError as e:
            if have_legacy or all(f.exists() for f in raw):
                raise DatasetCorrupted(f"{spec.name}: files under {str(root / folder)!r} could not be "
                                       f"read by torchvision ({e})") from e
            raise _download_failed(spec.name, root, split, spec, e) from e
        except OSError as e:
            raise _download_failed(spec.name, root, split, spec, e) from e
        x = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
        y = ds.targets.numpy() if hasattr(ds.targets, "numpy") else np.asarray(ds.targets)
        x, y = post(spec, root, np.asarray(x, dtype=np.uint8), np.asarray(y, dtype=np.int64))
        return np.ascontiguousarray(x[..., None]), y  # grayscale: add the channel axis (N,H,W,1)
    return load


def _fmnist_stems(split: str) -> tuple[str, ...]:
    # torchvision's MNIST._check_exists requires both splits' files, whichever split is read.
    return ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _emnist_stems(split: str) -> tuple[str, ...]:
    # EMNIST._check_exists only looks at the requested split's two files.
    return (f"emnist-letters-{split}-images-idx3-ubyte", f"emnist-letters-{split}-labels-idx1-ubyte")


def _fmnist_post(spec, root, x, y):
    return x, y


def _emnist_letters_post(spec, root, x, y):
    # EMNIST "letters" labels are 1..26 on disk (torchvision's class list starts with "N/A" at 0);
    # shift to 0..25 so that num_classes = 26 is correct for the classifier and the metrics.
    if y.size and (y.min() < 1 or y.max() > 26):
        raise DatasetCorrupted(
            f"{spec.name}: expected on-disk labels 1..26 (EMNIST letters), found "
            f"{int(y.min())}..{int(y.max())} under {str(root)!r}; are these files another EMNIST split?")
    # The EMNIST binaries store each image transposed relative to MNIST's convention; transpose
    # back so letters are upright like Fashion-MNIST (matters for pretrained backbones and plots).
    return x.transpose(0, 2, 1), y - 1


# --------------------------------------------------------------------------- CINIC-10

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
_CINIC_DIRS = ("CINIC-10", "cinic-10")


def _cinic_dir(root: Path) -> Path:
    for d in _CINIC_DIRS:
        if (root / d).is_dir():
            return root / d
    return root / _CINIC_DIRS[0]


def _cinic_expected(root: Path, split: str) -> list[tuple[str, bool]]:
    base = _cinic_dir(root) / split
    out = [(f"{base}/<class>/*.png for the 10 classes {', '.join(CIFAR10_CLASSES)} "
            f"(folder {_CINIC_DIRS[0]} or {_CINIC_DIRS[1]})", base.is_dir())]
    if base.is_dir():
        out += [_exists(base / c) for c in CIFAR10_CLASSES]
    return out


def _cinic_load(tv, root: Path, split: str, download: bool, spec: VisionSpec):
    base = _cinic_dir(root) / split
    if not base.is_dir() or not all((base / c).is_dir() for c in CIFAR10_CLASSES):
        extra = "download=True cannot help: torchvision has no CINIC-10 downloader." if download else ""
        raise _missing(spec.name, root, split, spec, extra=extra)
    try:
        ds = tv.datasets.ImageFolder(str(base))
    except FileNotFoundError as e:  # a class folder with no image files
        raise _missing(spec.name, root, split, spec, extra=str(e)) from e
    if tuple(ds.classes) != CIFAR10_CLASSES:
        raise DatasetCorrupted(f"{spec.name}: {base} holds class folders {ds.classes}; expected exactly "
                               f"{list(CIFAR10_CLASSES)} (ImageFolder maps sorted names to labels)")
    n = len(ds.samples)
    h, w = spec.image_size
    x = np.empty((n, h, w, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(ds.samples):
        img = np.asarray(ds.loader(path))  # torchvision's default loader: PIL, converted to RGB
        if img.shape != (h, w, 3):
            raise DatasetCorrupted(f"{spec.name}: {path} has shape {img.shape}; expected {(h, w, 3)}")
        x[i] = img
    # ImageFolder sorts class folders, so labels follow CIFAR-10's order (CINIC-10 shares its classes).
    y = np.asarray(ds.targets, dtype=np.int64)
    return x, y


# --------------------------------------------------------------------------- registry

def _meta(name: str) -> tuple:
    """The leading VisionSpec fields (name, classes, channels, size, mean, std) from fedal.image_meta."""
    m = IMAGE_META[name]
    return name, m.num_classes, m.channels, m.image_size, m.mean, m.std


def _build_registry() -> dict[str, VisionSpec]:
    specs = [
        VisionSpec(
            *_meta("cifar10"), SPLITS, True,
            _cifar_expected("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6))
                            + ("test_batch", "batches.meta")),
            _cifar_loader("CIFAR10")),
        VisionSpec(
            *_meta("cifar100"), SPLITS, True,
            _cifar_expected("cifar-100-python", ("train", "test", "meta")),
            _cifar_loader("CIFAR100")),
        VisionSpec(
            *_meta("fashion-mnist"), SPLITS, True,
            _mnist_like_expected("FashionMNIST", _fmnist_stems, ("training.pt", "test.pt")),
            _mnist_like_loader("FashionMNIST", _fmnist_stems, ("training.pt", "test.pt"),
                               lambda tv, root, train, dl: tv.datasets.FashionMNIST(root, train=train, download=dl),
                               _fmnist_post)),
        VisionSpec(
            *_meta("emnist-letters"), SPLITS, True,
            _mnist_like_expected("EMNIST", _emnist_stems, ("training_letters.pt", "test_letters.pt")),
            _mnist_like_loader("EMNIST", _emnist_stems, ("training_letters.pt", "test_letters.pt"),
                               lambda tv, root, train, dl: tv.datasets.EMNIST(root, split="letters", train=train,
                                                                              download=dl),
                               _emnist_letters_post)),
        VisionSpec(
            *_meta("cinic10"), ("train", "valid", "test"), False,
            _cinic_expected, _cinic_load),
    ]
    return {s.name: s for s in specs}


REGISTRY: dict[str, VisionSpec] = _build_registry()
VISION_DATASETS: tuple[str, ...] = tuple(REGISTRY)


def vision_spec(name: str) -> VisionSpec:
    image_meta_entry(name)  # an unknown name: the one "not an image dataset" error
    return REGISTRY[name]


def load_vision_dataset(name: str, root: str | os.PathLike, split: str = "train",
                        download: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load one split as ``(x uint8 (N,H,W,C), y int64 (N,), meta dict)``.

    ``root`` is the ``data-root`` run-config value. ``split`` is ``"train"`` or ``"test"``
    (``cinic10`` also has ``"valid"``). Raises :class:`DatasetNotFound` when files are missing
    and ``download`` is False or the download fails.
    """
    spec = vision_spec(name)
    if split not in spec.splits:
        raise ValueError(f"{name}: split = {split!r} is not valid; valid: {', '.join(spec.splits)}")
    if root is None or str(root) == "":
        raise DatasetNotFound(f"{name}: no data-root given; set data-root to the folder that holds "
                              "(or should receive, with download=True) the dataset files")
    root_p = Path(root).expanduser()
    if download:
        root_p.mkdir(parents=True, exist_ok=True)
    x, y = spec.load(import_torchvision(), root_p, split, download, spec)
    if len(x) != len(y):
        raise DatasetCorrupted(f"{name}: {len(x)} images but {len(y)} labels under {str(root_p)!r}")
    if y.size and (y.min() < 0 or y.max() >= spec.num_classes):
        raise DatasetCorrupted(f"{name}: labels span {int(y.min())}..{int(y.max())}; expected "
                               f"0..{spec.num_classes - 1}")
    return x, y, spec.meta()
