"""How a person sees a data set's points: the one place for display metadata (issue #20).

The models see every point as stored: scikit-learn's digits as 64 values in a row, MNIST-1D as a
40-sample signal, the image data sets as (H, W, C) arrays. A person labeling a point on the
labeling page (fedal/annotate/app.py) needs it drawn as what it is, with the classes named:

- ``dataset_info(name)``: per run ``dataset`` (its entry in ``fedal.data.registry``), the shape
  of one point *as drawn* and the class names, in the order of the class ids fedal trains with;
- ``site_display(site, info)``: what one site's page draws, where the site's own data may say
  better (``fedal/data/site.py``: an ``.npz`` with ``class_names`` and ``shape``, an image folder's
  class folder names, a ``labels.csv`` with names) and the data set fills the gaps.

A 1-D shape is a signal (drawn as a line plot); a 2-D or 3-D shape, (H, W), (H, W, C) or (C, H, W),
is an image. Nothing here needs the data set's files, except CIFAR-100's class names, which only
its ``meta`` file holds (read when a data root is given).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedal.data.registry import DisplayInfo, get_dataset


def dataset_info(name: str, data_root: str | Path = "") -> DisplayInfo:
    """The display metadata of the run's ``dataset`` (``data_root``: only CIFAR-100's names need
    it), as its registry entry gives it (``fedal.data.registry``)."""
    return get_dataset(name).display(str(data_root or ""))


class _PlainUnpickler(pickle.Unpickler):
    """CIFAR's meta files are pickled dicts of lists of strings: refuse anything that would
    construct an object (a pickle can otherwise run code on the site's machine)."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data set's meta file")


def cifar100_names(root: Path) -> tuple[str, ...] | None:
    """The 100 fine class names from ``<root>/cifar-100-python/meta`` (None when it is absent)."""
    path = Path(root).expanduser() / "cifar-100-python" / "meta"
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            meta = _PlainUnpickler(f, encoding="latin1").load()
        names = tuple(str(n) for n in meta["fine_label_names"])
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not CIFAR-100's meta file ({e.__class__.__name__}: {e})") from None
    if len(names) != 100:
        raise ValueError(f"{path} names {len(names)} fine classes; CIFAR-100 has 100")
    return names


# ---------------------------------------------------------------------------------- one site
@dataclass(frozen=True)
class SiteDisplay:
    """What a site's labeling page draws: ``kind`` 'signal' or 'image', each point reshaped to
    ``shape``, and one name per class."""

    kind: str
    shape: tuple[int, ...]
    class_names: tuple[str, ...]
    dark_ink: bool = False

    def point(self, x: np.ndarray, i: int) -> np.ndarray:
        return np.asarray(x[i]).reshape(self.shape)


def kind_of_shape(shape: tuple[int, ...]) -> str:
    """A declared shape: 'signal' when 1-D, 'image' when 2-D or 3-D (an image channel axis holds
    1, 3 or 4 values, first or last)."""
    if len(shape) == 1:
        return "signal"
    if len(shape) == 2 or (len(shape) == 3 and (shape[2] in (1, 3, 4) or shape[0] in (1, 3))):
        return "image"
    raise ValueError(f"shape {shape} is neither a signal (L,) nor an image (H, W), (H, W, C) or (C, H, W) "
                     "with 1, 3 or 4 channels")


def site_display(x_shape: tuple[int, ...], *, site_names=None, site_shape=None, info: DisplayInfo | None = None,
                 num_classes: int | None = None, labeled_classes: int | None = None,
                 where: str = "the site's data") -> SiteDisplay:
    """The display of a site whose points have the stored shape ``x_shape`` (one point).

    The site's own ``site_names``/``site_shape`` come first, then the data set's ``info``; without
    a shape the stored one is used as it is (``fedal.annotate.render.point_kind``); without names,
    the numbers 0..C-1, C = ``num_classes`` (given by the operator, checked against any names) or
    else ``labeled_classes`` (what the site's labels use). Raises ValueError naming the shapes or
    counts that disagree."""
    from fedal.annotate.render import point_kind

    size = int(np.prod(x_shape))
    names = tuple(site_names) if site_names is not None else (info.class_names if info else None)
    if names is None:
        if not (num_classes or labeled_classes):
            raise ValueError(f"{where} names no classes and holds no labels: give --num-classes (or --dataset)")
        names = tuple(str(c) for c in range(num_classes or labeled_classes))
    elif num_classes and num_classes != len(names):
        raise ValueError(f"--num-classes {num_classes} but {where} names {len(names)} classes "
                         f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
    shape = tuple(int(s) for s in site_shape) if site_shape is not None else (info.shape if info else None)
    if shape is not None and int(np.prod(shape)) != size:
        src = "the site's shape" if site_shape is not None else "the data set's shape"
        raise ValueError(f"{where}: each point holds {size} values {tuple(x_shape)}, but {src} {shape} "
                         f"holds {int(np.prod(shape))}; give the shape the points were flattened from")
    if shape is None:
        shape = tuple(x_shape)
        kind = point_kind(np.empty((1, *shape)))
    else:
        kind = kind_of_shape(shape)
    return SiteDisplay(kind, shape, names, bool(info and info.dark_ink))
