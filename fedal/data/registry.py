"""The dataset registry: one entry per run-config ``dataset`` with everything fedal needs to
know about it: the shape and kind of one stored point, the number of classes, the backbone that
``backbone = "auto"`` builds, how to load it and how a person sees a point (display shape and
class names, ``fedal.data.info``). Adding a dataset is one ``register_dataset`` call
(docs/extending.md); the built-in ones are in ``fedal.data.builtin``.

Nothing here loads data or imports torch: ``fedal.config`` validates ``dataset`` against this
registry and resolves ``"auto"`` backbones with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from fedal.registry import Registry


@dataclass(frozen=True)
class Dataset:
    """A loaded benchmark data set: the full train/test arrays (the simulation carves client
    partitions from the training set)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class DisplayInfo:
    """How one point is drawn and its classes named."""

    shape: tuple[int, ...] | None  # one point as drawn (None: as stored); its size is the stored size
    class_names: tuple[str, ...] | None  # None: not known (numbers are shown)
    dark_ink: bool = False  # high values drawn dark, as ink on paper (digits' pixels count ink)


@dataclass(frozen=True)
class DatasetInfo:
    """One ``dataset``.

    - ``input_shape``/``input_kind``: one stored point, the model's input: ``"float"`` (float32
      feature vectors or signals) or ``"uint8"`` (8-bit images, (H, W, C)); a site's own data
      must match them (``fedal.data.site.check_site_matches``).
    - ``backbone``: what ``backbone = "auto"`` builds (``fedal.training.build_model``).
    - ``load(data_root)``: the ``Dataset`` (data-root: where its files are; "" where none are needed).
    - ``display(data_root)``: how a person sees a point (``DisplayInfo``; the labeling page).
    - ``test_split``: which points form the test split the server evaluates on, in words (a
      rehearsal's site files must not hold them, ``fedal.data.export``).
    """

    name: str
    input_shape: tuple[int, ...]
    input_kind: str
    num_classes: int
    backbone: str
    load: Callable[[str], Dataset]
    display: Callable[[str], DisplayInfo]
    test_split: str = "the data set's test files under data-root"

    def __post_init__(self):
        if self.input_kind not in ("float", "uint8"):
            raise ValueError(f"dataset {self.name!r}: input_kind = {self.input_kind!r}; valid: float, uint8")


_REGISTRY: Registry[DatasetInfo] = Registry("dataset", "dataset {name!r} is not known; valid: {valid}")


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    return _REGISTRY.add(info.name, info)


unregister_dataset = _REGISTRY.remove
dataset_names = _REGISTRY.names  # the registered datasets, in registration order (the order shown to users)
get_dataset = _REGISTRY.get


def resolve_backbone(dataset: str, backbone: str) -> str:
    """The backbone a run builds: ``backbone`` itself, or for ``"auto"`` the dataset's default."""
    return backbone if backbone != "auto" else get_dataset(dataset).backbone
