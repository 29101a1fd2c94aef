"""The built-in datasets, registered in ``fedal.data.registry``: MNIST-1D and scikit-learn's
digits (generated or shipped offline) and five image data sets read from ``data-root``
(``fedal.data.vision``). Each is one ``register_dataset`` call with its loader and display."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from fedal.data.info import cifar100_names
from fedal.data.registry import Dataset, DatasetInfo, DisplayInfo, register_dataset
from fedal.errors import ConfigError
from fedal.image_meta import IMAGE_META, ImageMeta

DIGIT_NAMES = tuple(str(d) for d in range(10))


def cache_dir() -> Path:
    """Where generated data (MNIST-1D) and feature caches live; ``FEDAL_CACHE`` overrides."""
    d = Path(os.environ.get("FEDAL_CACHE", Path.home() / ".cache" / "fedal"))
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---------------------------------------------------------------------------------- MNIST-1D
# MNIST-1D at MNIST's scale (60k train / 10k test): the paper's protocol acquires 12,000 labels
# from 100 clients, which the package's default 4,000-sample training set cannot supply.
MNIST1D_SAMPLES = 70_000
MNIST1D_TRAIN_SPLIT = 6 / 7
MNIST1D_SEED = 42  # the dataset itself is fixed; the experiment seed drives partitions and models


def _load_mnist1d(root: str = "") -> Dataset:
    path = cache_dir() / f"mnist1d_{MNIST1D_SAMPLES}_{MNIST1D_SEED}.npz"
    if path.exists():
        try:
            z = np.load(path)
            return Dataset("mnist1d", z["x"], z["y"], z["x_test"], z["y_test"], 10)
        except Exception:  # corrupted/partial cache file: regenerate rather than crash
            path.unlink(missing_ok=True)
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = MNIST1D_SAMPLES
    args.train_split = MNIST1D_TRAIN_SPLIT
    args.seed = MNIST1D_SEED
    state = np.random.get_state()  # make_dataset reseeds numpy's global RNG; do not leak that
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(state)
    arrays = {
        "x": d["x"].astype(np.float32), "y": d["y"].astype(np.int64),
        "x_test": d["x_test"].astype(np.float32), "y_test": d["y_test"].astype(np.int64),
    }
    # Atomic write: two simulation actors may generate concurrently on first use.
    from fedal.atomic import atomic_file

    with atomic_file(path) as f:
        np.savez(f, **arrays)
    return Dataset("mnist1d", arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"], 10)


register_dataset(DatasetInfo(
    "mnist1d", (40,), "float", 10, "cnn1d", _load_mnist1d,
    lambda root: DisplayInfo((40,), DIGIT_NAMES),  # a digit's outline as a 40-sample signal
    test_split="MNIST-1D's own test split (70,000 samples generated with seed 42, the last seventh)"))


# ---------------------------------------------------------------------------------- digits
def _load_digits(root: str = "", seed_split: int = 0) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    # fixed stratified-ish split (the dataset is tiny: 1,797 samples): every 5th sample is test
    perm = np.random.default_rng(seed_split).permutation(len(y))
    test = perm[: len(y) // 5]
    train = perm[len(y) // 5:]
    return Dataset("digits", x[train], y[train], x[test], y[test], 10)


register_dataset(DatasetInfo(
    "digits", (64,), "float", 10, "mlp", _load_digits,
    # load_digits' 64 features are the 8x8 image row by row; each pixel counts ink strokes (0-16)
    lambda root: DisplayInfo((8, 8), DIGIT_NAMES, dark_ink=True),
    test_split="scikit-learn's load_digits() permuted with seed 0, the first fifth (fedal.data.builtin._load_digits)"))


# ---------------------------------------------------------------------------------- images
def _vision_loader(name: str):
    def load(root: str) -> Dataset:
        from fedal.data import vision

        if not root:
            raise ConfigError(
                f"dataset = {name!r} needs data-root = <folder holding the dataset files>; "
                "nothing is downloaded at run time"
            )
        x_tr, y_tr, meta = vision.load_vision_dataset(name, root, split="train")
        x_te, y_te, _ = vision.load_vision_dataset(name, root, split="test")
        return Dataset(name, x_tr, y_tr, x_te, y_te, int(meta["num_classes"]))

    return load


def _cifar10_names() -> tuple[str, ...]:
    # CINIC-10 shares CIFAR-10's classes: fedal.data.vision checks its class folders against them
    from fedal.data.vision import CIFAR10_CLASSES

    return CIFAR10_CLASSES


def _fashion_mnist_names() -> tuple[str, ...]:
    # fedal loads Fashion-MNIST through torchvision, whose class list gives the label order
    from fedal.compat import import_torchvision

    return tuple(import_torchvision().datasets.FashionMNIST.classes)


def _emnist_letters_names() -> tuple[str, ...]:
    # torchvision's list starts with 'N/A' for the unused label 0; fedal shifts labels 1..26 to 0..25
    from fedal.compat import import_torchvision

    return tuple(import_torchvision().datasets.EMNIST.classes_split_dict["letters"][1:])


_IMAGE_NAMES = {"cifar10": lambda root: _cifar10_names(),
                "cifar100": lambda root: cifar100_names(Path(root)) if root else None,
                "fashion-mnist": lambda root: _fashion_mnist_names(),
                "emnist-letters": lambda root: _emnist_letters_names(),
                "cinic10": lambda root: _cifar10_names()}


def image_dataset(name: str, meta: ImageMeta, class_names: Callable[[str], tuple[str, ...] | None]) -> DatasetInfo:
    """The entry of an image data set read by ``fedal.data.vision``: 8-bit points of shape
    (height, width, channels) (``meta.image_size`` is (height, width)), a ResNet-18 for
    ``backbone = "auto"``; ``class_names(data_root)``: its class names (None: not known)."""
    shape = (meta.image_size[0], meta.image_size[1], meta.channels)
    return DatasetInfo(name, shape, "uint8", meta.num_classes, "resnet18", _vision_loader(name),
                       lambda root: DisplayInfo(shape, class_names(root)))


for _name in ("cifar10", "cifar100", "fashion-mnist", "emnist-letters", "cinic10"):
    register_dataset(image_dataset(_name, IMAGE_META[_name], _IMAGE_NAMES[_name]))
