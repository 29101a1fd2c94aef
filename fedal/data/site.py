"""Bring-your-own data for one site of a real deployment (issue #13).

``load_site_data(data_path)`` reads the site's private inputs, and the oracle's answers when
the site has them, from one of:

(a) an ``.npz`` file with ``x`` (inputs: float or uint8, shape (N, ...)) and optionally ``y``
    (integer class ids, shape (N,)), ``class_names`` (strings, shape (C,)) and ``shape`` (integers:
    how one point is drawn for a person when ``x`` holds it flattened, e.g. ``[8, 8]`` for 64
    values; fedal/data/info.py);
(b) an image folder ``<root>/<class name>/*.png|*.jpg|*.jpeg``: labels from the folder names,
    class ids in sorted name order;
(c) a flat image folder ``<root>/*.png|*.jpg|*.jpeg``: unlabeled, or with ``<root>/labels.csv``
    (``file,label`` rows, labels as integers or as class names) holding the oracle's answers.

Images are decoded with Pillow into uint8 NHWC arrays (C = 1 when every image is grayscale,
else 3: RGB, alpha dropped); all must share one size. Point i of the site is the i-th image in
sorted path order, so the order never depends on the file system's listing order.

The fingerprint identifies the *inputs* and their order, not the labels: the pool store uses it
to make sure that index i still means the same point when a client restarts, and a corrected
answer in ``y`` or ``labels.csv`` does not change which point is which. For image folders it
hashes the file names and the file bytes (not decoded pixels, which may differ by a rounding
between JPEG decoder versions); for ``.npz`` it hashes the array data (not the file, whose zip
entries carry the time it was written).
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LABELS_CSV = "labels.csv"
NPZ_ARRAYS = ("x", "y", "class_names", "shape")
CLIENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SiteDataError(ValueError):
    """The site's data cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class SiteData:
    path: Path
    x: np.ndarray  # (N, ...) float32 or uint8; never leaves the site
    y: np.ndarray | None  # (N,) int64 oracle answers, or None when a person labels on request
    class_names: tuple[str, ...] | None
    fingerprint: str  # stable hash of the inputs and their order (the pool store's data_fingerprint)
    client_id: str
    files: tuple[str, ...] | None = None  # image folders: point i's file, relative to path
    # how one point is drawn for a person, when the file declares it (.npz 'shape'); not part of
    # the fingerprint: it changes no input
    shape: tuple[int, ...] | None = None

    @property
    def n_points(self) -> int:
        return len(self.x)

    @property
    def num_classes(self) -> int | None:
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.y.max()) + 1 if self.y is not None and len(self.y) else None


def load_site_data(data_path: str | Path, client_id: str | None = None) -> SiteData:
    """The site's data at ``data_path`` (an ``.npz`` file or an image folder).

    ``client_id``: the configured id of this site; when None, one is derived from the absolute
    path and the fingerprint (stable while neither changes)."""
    path = Path(data_path).expanduser()
    if not path.exists():
        raise SiteDataError(f"data-path {path} does not exist; give an .npz file or an image folder")
    shape = None
    if path.is_dir():
        x, y, names, fingerprint, files = _load_folder(path)
    elif path.suffix.lower() == ".npz":
        x, y, names, fingerprint, shape = _load_npz(path)
        files = None
    else:
        raise SiteDataError(f"data-path {path} is neither an .npz file nor a folder; valid forms: "
                            "<file>.npz with x (and y), <folder>/<class>/*.png|jpg, <folder>/*.png|jpg "
                            f"(with an optional {LABELS_CSV})")
    if client_id is None or client_id == "":
        digest = hashlib.sha256(f"{path.resolve()}\n{fingerprint}".encode()).hexdigest()
        client_id = f"site-{digest[:12]}"
    elif not CLIENT_ID_PATTERN.match(str(client_id)):
        # the id names the site's state files, so keep it to characters safe in a file name
        raise SiteDataError(f"client-id {client_id!r} is not valid: use 1-64 letters, digits, '.', '_' "
                            "or '-', starting with a letter or digit")
    return SiteData(path, x, y, names, fingerprint, str(client_id), files, shape)


def expected_inputs(dataset: str) -> tuple[tuple[int, ...], str, int]:
    """What the run's ``dataset`` fixes for every site: (input shape per point, dtype kind
    "float" or "uint8", number of classes), without loading the data set."""
    from fedal.data.registry import get_dataset

    d = get_dataset(dataset)
    return d.input_shape, d.input_kind, d.num_classes


def check_site_matches(site: SiteData, dataset: str) -> int:
    """Check that a site's data fits the run's ``dataset`` (the model's input shape, the dtype and
    the number of classes); returns the number of classes. Errors name the file and the
    expected values."""
    shape, kind, num_classes = expected_inputs(dataset)
    got = tuple(site.x.shape[1:])
    got_kind = "uint8" if site.x.dtype == np.uint8 else "float"
    if got != shape or got_kind != kind:
        want = f"{'float32' if kind == 'float' else 'uint8'} points of shape {shape}"
        hint = ("8-bit images, (H, W, C) per point" if kind == "uint8"
                else "feature vectors scaled as the data set's own: digits pixel/16, mnist1d as generated")
        raise SiteDataError(f"{site.path}: the site's points are {site.x.dtype} of shape {got}, but the run's "
                            f"dataset = {dataset!r} expects {want}, {hint}; convert the data or run with the "
                            "dataset that matches it")
    if site.class_names is not None and len(site.class_names) != num_classes:
        raise SiteDataError(f"{site.path}: the site names {len(site.class_names)} classes "
                            f"({', '.join(site.class_names[:5])}{', ...' if len(site.class_names) > 5 else ''}), "
                            f"but dataset = {dataset!r} has {num_classes}")
    if site.y is not None and len(site.y) and int(site.y.max()) >= num_classes:
        raise SiteDataError(f"{site.path}: the labels use class id {int(site.y.max())} (point "
                            f"{int(np.argmax(site.y))}), but dataset = {dataset!r} has {num_classes} classes "
                            f"(ids 0..{num_classes - 1})")
    return num_classes


def check_client_id(client_id: str) -> str:
    if not CLIENT_ID_PATTERN.match(str(client_id)):
        # the id names the site's state files, so keep it to characters safe in a file name
        raise SiteDataError(f"client-id {client_id!r} is not valid: use 1-64 letters, digits, '.', '_' "
                            "or '-', starting with a letter or digit")
    return str(client_id)


# ---------------------------------------------------------------------------------- .npz
def _load_npz(path: Path):
    try:
        # allow_pickle=False: a data file must never be able to run code on the site's machine
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise SiteDataError(f"{path} is not a readable .npz file ({e.__class__.__name__}: {e}); "
                            "write it with numpy.savez(path, x=..., y=...)") from None
    unknown = sorted(set(arrays) - set(NPZ_ARRAYS))
    if unknown:
        raise SiteDataError(f"{path} holds unexpected arrays {unknown}; valid names: {', '.join(NPZ_ARRAYS)} "
                            "(x required)")
    if "x" not in arrays:
        raise SiteDataError(f"{path} has no array 'x' (the inputs); it holds {sorted(arrays)}")
    x = arrays["x"]
    if x.ndim < 2 or len(x) == 0:
        raise SiteDataError(f"{path}: array 'x' has shape {x.shape}; expected (N, ...) with N >= 1 points "
                            "and at least one feature dimension")
    if x.dtype == np.uint8:
        pass
    elif np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            raise SiteDataError(f"{path}: array 'x' has NaN or infinite values in {int(bad.sum())} points "
                                f"(first: point {int(np.flatnonzero(bad)[0])})")
        x = x.astype(np.float32)  # what the models compute in
        if not np.isfinite(x).all():
            raise SiteDataError(f"{path}: array 'x' has values too large for float32")
    else:
        raise SiteDataError(f"{path}: array 'x' has dtype {x.dtype}; valid dtypes: float16/32/64 or uint8")
    names = None
    if "class_names" in arrays:
        cn = arrays["class_names"]
        if cn.ndim != 1 or cn.dtype.kind not in "US" or len(cn) == 0:
            raise SiteDataError(f"{path}: array 'class_names' must be a non-empty 1-D array of strings; "
                                f"got dtype {cn.dtype}, shape {cn.shape}")
        names = tuple(str(v) for v in cn.astype(str))
        if len(set(names)) != len(names):
            raise SiteDataError(f"{path}: array 'class_names' repeats a name: {list(names)}")
    shape = None
    if "shape" in arrays:
        sh = arrays["shape"]
        if sh.ndim != 1 or not 1 <= len(sh) <= 3 or not np.issubdtype(sh.dtype, np.integer) or (sh < 1).any():
            raise SiteDataError(f"{path}: array 'shape' must hold 1 to 3 positive integers (how one point is "
                                f"drawn, e.g. [8, 8]); got {sh.tolist()} ({sh.dtype})")
        shape = tuple(int(v) for v in sh)
        if int(np.prod(shape)) != int(np.prod(x.shape[1:])):
            raise SiteDataError(f"{path}: array 'shape' {list(shape)} holds {int(np.prod(shape))} values, but "
                                f"each point of 'x' holds {int(np.prod(x.shape[1:]))} {tuple(x.shape[1:])}")
    y = None
    if "y" in arrays:
        y = arrays["y"]
        if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
            raise SiteDataError(f"{path}: array 'y' has dtype {y.dtype}; valid dtypes: integer class ids")
        if y.shape != (len(x),):
            raise SiteDataError(f"{path}: array 'y' has shape {y.shape} but 'x' has {len(x)} points; "
                                f"expected ({len(x)},)")
        if len(y) and y.min() < 0:
            raise SiteDataError(f"{path}: array 'y' has negative class id {int(y.min())} "
                                f"(point {int(np.argmin(y))}); class ids are 0..C-1")
        if names is not None and len(y) and y.max() >= len(names):
            raise SiteDataError(f"{path}: array 'y' has class id {int(y.max())} but 'class_names' names "
                                f"only {len(names)} classes")
        y = y.astype(np.int64)
    h = hashlib.sha256(b"fedal-site-npz-v1\n")
    h.update(f"{x.dtype.str} {x.shape}\n".encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return x, y, names, "sha256:" + h.hexdigest()[:32], shape


# ---------------------------------------------------------------------------------- image folders
def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _load_folder(root: Path):
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    images = [p for p in entries if _is_image(p)]
    class_dirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    csv_path = root / LABELS_CSV
    if images and class_dirs:
        raise SiteDataError(f"image folder {root} mixes images ({images[0].name}, ...) and class folders "
                            f"({class_dirs[0].name}/, ...); use one layout: <root>/<class>/*.png or <root>/*.png")
    if class_dirs:
        if csv_path.exists():
            raise SiteDataError(f"image folder {root} has class folders and a {LABELS_CSV}; the folder names "
                                f"already give the labels: remove {csv_path} or flatten the folder")
        files, y = [], []
        for k, d in enumerate(class_dirs):
            nested = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
            if nested:
                raise SiteDataError(f"class folder {d} holds a folder ({nested[0]}/); a class folder holds "
                                    "images only")
            imgs = sorted((p for p in d.iterdir() if _is_image(p)), key=lambda p: p.name)
            if not imgs:
                raise SiteDataError(f"class folder {d} holds no {'/'.join(IMAGE_SUFFIXES)} images")
            files += imgs
            y += [k] * len(imgs)
        names = tuple(d.name for d in class_dirs)
        y = np.asarray(y, dtype=np.int64)
    elif images:
        files = images
        y, names = _read_labels_csv(csv_path, [p.name for p in images]) if csv_path.exists() else (None, None)
    else:
        raise SiteDataError(f"image folder {root} holds no {'/'.join(IMAGE_SUFFIXES)} images and no class folders")
    x = _decode(files)
    rel = tuple(p.relative_to(root).as_posix() for p in files)
    h = hashlib.sha256(b"fedal-site-images-v1\n")
    for name, p in zip(rel, files):
        data = p.read_bytes()
        h.update(f"{name}\n{len(data)}\n".encode())
        h.update(data)
    return x, y, names, "sha256:" + h.hexdigest()[:32], rel


def _decode(files: list[Path]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    def open_image(p: Path):
        try:
            return Image.open(p)
        except (UnidentifiedImageError, OSError) as e:
            raise SiteDataError(f"image {p} cannot be read ({e.__class__.__name__}: {e})") from None

    # pass 1 reads only the headers (cheap), so a size mismatch is reported before decoding
    # thousands of images, and the array can be allocated once instead of stacking copies
    first_size, first_path, gray = None, None, True
    for p in files:
        with open_image(p) as im:
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise SiteDataError(f"image {p} has {im.mode} pixels (16-bit or float); fedal reads 8-bit "
                                    "grayscale or colour images: convert it to 8 bits")
            if first_size is None:
                first_size, first_path = im.size, p
            elif im.size != first_size:
                raise SiteDataError(f"image {p} is {im.size[0]}x{im.size[1]} but {first_path} is "
                                    f"{first_size[0]}x{first_size[1]}; all images of a site must share one size")
            gray = gray and im.mode in ("L", "1")
    w, h = first_size
    mode, channels = ("L", 1) if gray else ("RGB", 3)
    x = np.empty((len(files), h, w, channels), dtype=np.uint8)
    for i, p in enumerate(files):
        with open_image(p) as im:
            try:
                x[i] = np.asarray(im.convert(mode), dtype=np.uint8).reshape(h, w, channels)
            except OSError as e:  # truncated or damaged image data shows only when decoding
                raise SiteDataError(f"image {p} cannot be decoded ({e})") from None
    return x


def _read_labels_csv(csv_path: Path, image_names: list[str]):
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise SiteDataError(f"{csv_path} cannot be read ({e})") from None
    if not rows or [c.strip().lower() for c in rows[0]] != ["file", "label"]:
        raise SiteDataError(f"{csv_path} must start with the header 'file,label'; found {rows[0] if rows else 'nothing'}")
    answers: dict[str, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise SiteDataError(f"{csv_path} line {line}: expected 'file,label', got {row}")
        name, label = row[0].strip(), row[1].strip()
        if name in answers:
            raise SiteDataError(f"{csv_path} line {line}: {name} is listed twice")
        answers[name] = label
    known = set(image_names)
    extra = sorted(set(answers) - known)
    if extra:
        raise SiteDataError(f"{csv_path} lists {len(extra)} files that are not images in the folder "
                            f"(first: {extra[0]})")
    missing = [n for n in image_names if n not in answers]
    if missing:
        raise SiteDataError(f"{csv_path} has no label for {len(missing)} images (first: {missing[0]}); "
                            "give every image a label, or remove the file to treat the folder as unlabeled")
    values = [answers[n] for n in image_names]
    if all(re.fullmatch(r"\d+", v) for v in values):
        return np.asarray([int(v) for v in values], dtype=np.int64), None
    names = tuple(sorted(set(values)))
    index = {n: k for k, n in enumerate(names)}
    return np.asarray([index[v] for v in values], dtype=np.int64), names


def main(argv: list[str] | None = None, prog: str = "python -m fedal.data.site") -> int:
    """``fedal site check PATH [--client-id ID] [--dataset NAME]``: check a site's data before
    deploying (``python -m fedal.data.site`` is the same)."""
    import argparse
    import sys

    from fedal.data.registry import dataset_names

    ap = argparse.ArgumentParser(prog=prog, description="Check a site's data and print what fedal will see; with "
                                 "--dataset, also that it fits the run's dataset (input shape, dtype, classes), "
                                 "as the ClientApp checks on the run's first message.")
    ap.add_argument("data_path", help="an .npz file or an image folder")
    ap.add_argument("--client-id", default=None, help="the id this site will be configured with")
    ap.add_argument("--dataset", default=None, choices=dataset_names(), help="the run's dataset, which fixes the model: "
                    "refuse data of another input shape, dtype or class range")
    args = ap.parse_args(argv)
    try:
        d = load_site_data(args.data_path, args.client_id)
        fits = ""
        if args.dataset:
            num_classes = check_site_matches(d, args.dataset)
            shape, kind, _ = expected_inputs(args.dataset)
            fits = (f"\nfits:        dataset {args.dataset!r} ({'float32' if kind == 'float' else 'uint8'} "
                    f"{shape}, {num_classes} classes)")
    except SiteDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    labels = "none (labels are asked for on request)" if d.y is None else \
        f"{len(d.y)} oracle answers, {d.num_classes} classes"
    print(f"data:        {d.path}\n"
          f"points:      {d.n_points}, inputs {d.x.dtype} {tuple(d.x.shape[1:])}\n"
          f"labels:      {labels}\n"
          f"classes:     {', '.join(d.class_names) if d.class_names else '-'}\n"
          f"fingerprint: {d.fingerprint}\n"
          f"client id:   {d.client_id}{fits}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
