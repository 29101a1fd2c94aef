"""Datasets and federated partitions.

``load_dataset(name)`` returns the full train/test arrays of a registered data set
(``fedal.data.registry``; the built-in ones: ``fedal.data.builtin``) (the simulation needs them to carve
client partitions; in deployment each SuperNode loads only its own files). ``partition_indices``
splits the training set across clients with flwr-datasets partitioners (docs/method.md, "Protocol", issue #3:
``dirichlet`` α, ``shard`` = each client's data from a fraction of the classes, ``iid``).
``client_data`` is what a ClientApp calls: its own partition, nothing else.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from fedal.data.builtin import cache_dir
from fedal.data.registry import Dataset, get_dataset, resolve_backbone
from fedal.errors import ConfigError


@functools.lru_cache(maxsize=4)
def load_dataset(name: str, root: str = "") -> Dataset:
    """The registered data set ``name`` (``fedal.data.registry``), loaded from ``root``."""
    return get_dataset(name).load(root)


@functools.lru_cache(maxsize=16)
def partition_indices(
    name: str, root: str, num_partitions: int, partition: str, alpha: float,
    class_fraction: float, seed: int,
) -> tuple[np.ndarray, ...]:
    """Indices into the training set for each of ``num_partitions`` clients.

    Uses flwr-datasets partitioners on a label-only table, so partitions are exactly what
    Flower users get; cached per process (every ClientApp call in an actor reuses it).
    """
    from datasets import Dataset as HFDataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    y = load_dataset(name, root).y_train
    table = HFDataset.from_dict({"label": y, "idx": np.arange(len(y))})
    if partition == "dirichlet":
        # min_partition_size keeps every client able to hold a labeled batch and an unlabeled pool
        p = DirichletPartitioner(num_partitions, "label", alpha=alpha, min_partition_size=10,
                                 self_balancing=False, seed=seed)
    elif partition == "dirichlet-equal":
        from fedal.data.partitioners import EqualSizeDirichletPartitioner

        p = EqualSizeDirichletPartitioner(num_partitions, "label", alpha=alpha, seed=seed)
    elif partition == "shard":
        n_cls = len(np.unique(y))
        per_client = max(1, int(round(class_fraction * n_cls)))
        p = PathologicalPartitioner(num_partitions, "label", num_classes_per_partition=per_client,
                                    class_assignment_mode="random", seed=seed)
    elif partition == "iid":
        p = IidPartitioner(num_partitions)
    else:
        raise ConfigError(f"partition = {partition!r} is not valid; valid values: dirichlet, dirichlet-equal, shard, iid")
    p.dataset = table
    with warnings.catch_warnings():
        # the Dirichlet partitioner warns on each resampling to meet min_partition_size; the
        # resampling is the documented behaviour we want, so the warning is noise here
        warnings.simplefilter("ignore", UserWarning)
        try:
            return tuple(np.asarray(p.load_partition(i)["idx"], dtype=np.int64)
                         for i in range(num_partitions))
        except ValueError as e:
            if partition != "dirichlet" or "max number of attempts" not in str(e):
                raise
            # flwr-datasets redraws the whole partition up to 10 times until every client holds
            # min_partition_size points, then gives up; which seeds fail depends on the data
            raise ConfigError(
                f"partition = dirichlet with dirichlet-alpha = {alpha} and seed = {seed} gives some of the "
                f"{num_partitions} clients fewer than 10 of the {len(y)} points of {name!r} in all 10 of "
                "flwr-datasets' draws; valid ways out: another seed, a larger dirichlet-alpha, fewer "
                "clients, or partition = dirichlet-equal (every client the same size)") from e


def client_data(cfg, partition_id: int, num_partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """The private data of one client: (inputs, labels). Labels are only read by the oracle."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id = {partition_id} is out of range 0..{num_partitions - 1}")
    parts = partition_indices(cfg.dataset, cfg.data_root, num_partitions, cfg.partition,
                              cfg.dirichlet_alpha, cfg.shard_class_fraction, cfg.seed)
    ds = load_dataset(cfg.dataset, cfg.data_root)
    idx = parts[partition_id]
    return ds.x_train[idx], ds.y_train[idx]


def model_inputs(cfg, x: np.ndarray, partition: int | str) -> np.ndarray:
    """What the model consumes for these private inputs: the inputs themselves, or with
    ``freeze-backbone`` the frozen backbone's features, extracted once and cached on this
    machine (issue #5; keyed by backbone weights, transform and data, so a change recomputes).
    A pretrained cnn1d/mlp backbone's features are computed directly (see _small_backbone_features)."""
    if not cfg.freeze_backbone:
        return x
    if resolve_backbone(cfg.dataset, cfg.backbone) in ("cnn1d", "mlp"):
        return _small_backbone_features(cfg, x)
    from fedal.backbones import make_backbone_transform
    from fedal.data.vision import vision_meta
    from fedal.devices import resolve_device
    from fedal.feature_cache import FeatureCache, cached_features

    weights = cfg.backbone_weights or None
    tf = make_backbone_transform(weights=weights, dataset_meta=vision_meta(cfg.dataset))
    return cached_features(FeatureCache(cache_dir() / "features"), x,
                           backbone_name=resolve_backbone(cfg.dataset, cfg.backbone), weights=weights,
                           transform=tf, dataset=cfg.dataset, partition=partition,
                           device=resolve_device(cfg.device), init_seed=cfg.seed)


def _small_backbone_features(cfg, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Frozen features (float32, (n, out_dim)) of a pretrained CNN1D/MLP backbone, loaded from
    ``backbone-weights``. Computed directly, not through the on-disk feature cache: loading the
    28 KiB file and a CNN1D pass over 4,000 signals take about 0.2 s on one busy core, and each
    ClientApp process keeps its runtime (features included) in memory anyway."""
    import torch

    from fedal.training import build_model

    if not cfg.backbone_weights:
        raise ConfigError("freeze-backbone = true with a cnn1d/mlp backbone needs backbone-weights "
                          "(a frozen random backbone would never learn features)")
    # the backbone exactly as an unfrozen run would load it (same class, same strict loading);
    # build_model seeds torch's global RNG, which must not leak out of here
    with torch.random.fork_rng(devices=[]):
        bb = build_model(cfg.dataset, tuple(x.shape[1:]), 2, cfg.backbone, cfg.backbone_weights,
                         seed=cfg.seed).backbone.eval()
    with torch.inference_mode():
        feats = [bb(torch.from_numpy(np.ascontiguousarray(x[s:s + batch_size], dtype=np.float32))).numpy()
                 for s in range(0, len(x), batch_size)]
    if not feats:
        return np.zeros((0, int(bb.out_dim)), dtype=np.float32)
    return np.concatenate(feats).astype(np.float32, copy=False)
