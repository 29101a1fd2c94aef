"""What the model side needs to know about the image datasets, without torchvision or the disk:
class count, channels, image size and the per-channel normalisation statistics a ResNet's input
transform uses (docs/method.md, "Training").

It sits below ``fedal.training`` so that building a model does not reach up into the dataset
loaders; ``fedal.data.vision`` builds its registry (loaders, file layouts) on these entries.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageMeta:
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    # Per-channel training-set statistics commonly used for each dataset (pixel values in [0, 1]).
    mean: tuple[float, ...]
    std: tuple[float, ...]


IMAGE_META: dict[str, ImageMeta] = {
    "cifar10": ImageMeta(10, 3, (32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ImageMeta(100, 3, (32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion-mnist": ImageMeta(10, 1, (28, 28), (0.2860,), (0.3530,)),
    "emnist-letters": ImageMeta(26, 1, (28, 28), (0.1722,), (0.3309,)),
    "cinic10": ImageMeta(10, 3, (32, 32), (0.47889522, 0.47227842, 0.43047404),
                         (0.24205776, 0.23828046, 0.25874835)),
}
IMAGE_DATASETS: tuple[str, ...] = tuple(IMAGE_META)


def image_meta_entry(name: str) -> ImageMeta:
    try:
        return IMAGE_META[name]
    except KeyError:
        raise ValueError(f"dataset = {name!r} is not an image dataset; valid: {', '.join(IMAGE_DATASETS)}") from None


def vision_meta(name: str) -> dict:
    """Metadata of a registered image dataset as the plain dict that goes into result records."""
    m = image_meta_entry(name)
    return {
        "name": name, "num_classes": m.num_classes, "channels": m.channels,
        "image_size": list(m.image_size), "mean": list(m.mean), "std": list(m.std),
    }
