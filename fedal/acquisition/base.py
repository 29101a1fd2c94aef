"""The point-acquisition interface: what a client knows at acquisition time, what a strategy
returns, and the registry that maps a configured name to a strategy (docs/method.md, "Local batch", "Baselines and training modes").

Every strategy is a frozen dataclass whose fields are its hyper-parameters; the model is not
owned by the strategy but summarised in a `LocalView` that the client fills from the global
model (and, for LoGo, a local-only model) just before acquisition.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

import numpy as np

from fedal.registry import Registry
from fedal.validation import check_int, invalid


class PoolExhausted(ValueError):
    """Raised when a batch larger than the client's unlabeled pool is requested.

    docs/method.md, "Protocol" makes the caller (the client batch loop) responsible for giving all remaining points
    and moving on, so a strategy refuses rather than silently returning fewer points.
    """

    def __init__(self, n: int, pool_size: int):
        self.n = n
        self.pool_size = pool_size
        super().__init__(
            f"asked for n={n} points but the unlabeled pool holds only {pool_size}"
        )


def _as_float_array(name: str, value, ndim: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise invalid(f"dtype of {name}", str(arr.dtype), "a numeric array")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if arr.ndim != ndim:
        raise invalid(f"shape of {name}", arr.shape, f"a {ndim}-D array")
    if not np.all(np.isfinite(arr)):
        raise invalid(name, "an array with NaN or inf", "finite values")
    return arr


@dataclass(frozen=True, eq=False)
class LocalView:
    """One client's pool at acquisition time. All per-point arrays cover ALL local points
    (labeled and unlabeled) in the same order, so a Selection's indices index each of them.

    probs            (n, C) softmax probabilities of the global model f^r.
    embeddings       (n, d) penultimate activations of f^r, i.e. the input of its final linear
                     layer (the feature space of MASE/BASE, BADGE, coreset, hybrid, diffusion).
    labeled          (n,) bool mask of L_z; its complement is the unlabeled pool U_z.
    head_weight      (C, d) weight of f^r's final linear layer (logits = z @ W.T + b).
    head_bias        (C,) bias of that layer.
    inputs           optional (n, ...) raw inputs, only for diffusion with space="input".
    labels           optional (n,) int, the class of each labeled point and -1 where unlabeled
                     (known only to the client; no current strategy needs it).
    local_probs      optional (n, C) probabilities of a local-only model (LoGo's macro step).
    local_embeddings optional (n, d') penultimate activations of that local-only model; given
                     together with local_probs. d' may differ from d.

    Arrays are referenced, not copied (a client pool can be large); do not mutate them while a
    view is in use.
    """

    probs: np.ndarray
    embeddings: np.ndarray
    labeled: np.ndarray
    head_weight: np.ndarray
    head_bias: np.ndarray
    inputs: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    local_probs: Optional[np.ndarray] = None
    local_embeddings: Optional[np.ndarray] = None

    def __post_init__(self):
        # object.__setattr__ because the dataclass is frozen: normalise once, here, so every
        # strategy can rely on the shapes below without re-checking.
        def put(name, value):
            object.__setattr__(self, name, value)

        probs = _as_float_array("probs", self.probs, 2)
        if np.any(probs < 0):
            raise ValueError("probs contains negative values; expected probabilities")
        n, n_classes = probs.shape
        if n_classes < 1:
            raise ValueError(f"probs must have at least one class column; got shape {probs.shape}")
        put("probs", probs)

        emb = _as_float_array("embeddings", self.embeddings, 2)
        if emb.shape[0] != n:
            raise ValueError(f"embeddings has {emb.shape[0]} rows but probs has {n}")
        put("embeddings", emb)
        d = emb.shape[1]

        labeled = np.asarray(self.labeled)
        if labeled.dtype != np.bool_:
            raise ValueError(
                f"labeled must be a boolean mask over all points; got dtype {labeled.dtype}"
            )
        if labeled.shape != (n,):
            raise ValueError(f"labeled must have shape ({n},); got {labeled.shape}")
        put("labeled", labeled)

        w = _as_float_array("head_weight", self.head_weight, 2)
        if w.shape != (n_classes, d):
            raise ValueError(
                f"head_weight must have shape (classes, d) = ({n_classes}, {d}); got {w.shape}"
            )
        put("head_weight", w)
        b = _as_float_array("head_bias", self.head_bias, 1)
        if b.shape != (n_classes,):
            raise ValueError(f"head_bias must have shape ({n_classes},); got {b.shape}")
        put("head_bias", b)

        if self.inputs is not None:
            x = np.asarray(self.inputs)
            if x.ndim < 1 or x.shape[0] != n:
                raise ValueError(f"inputs must have {n} rows (one per point); got shape {x.shape}")
            put("inputs", x)

        if self.labels is not None:
            y = np.asarray(self.labels)
            if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
                raise ValueError(
                    f"labels must be an integer array of shape ({n},); got {y.dtype} {y.shape}"
                )
            if np.any(y[~labeled] != -1):
                raise ValueError("labels must be -1 exactly where labeled is False")
            if np.any((y[labeled] < 0) | (y[labeled] >= n_classes)):
                raise ValueError(f"labels of labeled points must lie in [0, {n_classes})")
            put("labels", y)

        if (self.local_probs is None) != (self.local_embeddings is None):
            raise ValueError(
                "local_probs and local_embeddings come from the same local-only model: "
                "give both or neither"
            )
        if self.local_probs is not None:
            lp = _as_float_array("local_probs", self.local_probs, 2)
            if lp.shape != (n, n_classes):
                raise ValueError(f"local_probs must have shape ({n}, {n_classes}); got {lp.shape}")
            if np.any(lp < 0):
                raise ValueError("local_probs contains negative values; expected probabilities")
            put("local_probs", lp)
            le = _as_float_array("local_embeddings", self.local_embeddings, 2)
            if le.shape[0] != n:
                raise ValueError(f"local_embeddings has {le.shape[0]} rows but probs has {n}")
            put("local_embeddings", le)

    @property
    def n_points(self) -> int:
        return self.probs.shape[0]

    @property
    def n_classes(self) -> int:
        return self.probs.shape[1]

    @property
    def pool(self) -> np.ndarray:
        """Indices of the unlabeled points U_z, ascending."""
        return np.flatnonzero(~self.labeled)


@dataclass(frozen=True, eq=False)
class Selection:
    """A local batch B_z: `indices` into the LocalView (unlabeled only, unique, in pick order)
    and `utilities`, aligned with `indices`: the score that justified each pick at the moment it
    was made, oriented so that larger = more wanted (e.g. entropy, −distance to a decision
    boundary, distance to the nearest center). Each strategy's docstring says which score.
    """

    indices: np.ndarray
    utilities: np.ndarray

    def __post_init__(self):
        idx = np.asarray(self.indices)
        if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
            raise ValueError(f"indices must be a 1-D integer array; got {idx.dtype} {idx.shape}")
        idx = idx.astype(np.int64, copy=False)
        util = np.asarray(self.utilities, dtype=np.float64)
        if util.shape != idx.shape:
            raise ValueError(
                f"utilities must align with indices: shapes {util.shape} vs {idx.shape}"
            )
        if np.unique(idx).size != idx.size:
            raise ValueError("indices contains duplicates")
        object.__setattr__(self, "indices", idx)
        object.__setattr__(self, "utilities", util)

    def __len__(self) -> int:
        return self.indices.size


def _check_budget(n) -> int:
    return check_int(n, "n", 1)


class Strategy:
    """Base of every point strategy (template method).

    `select` validates the request, hands the unlabeled pool to the subclass's `_select`, and
    checks the contract on the way out, so that no strategy can return a labeled point, a
    duplicate or the wrong batch size without it being noticed at once.
    """

    name: ClassVar[str] = ""
    # True when the client must train a local-only model first and fill local_probs /
    # local_embeddings in the view (LoGo).
    needs_local_model: ClassVar[bool] = False
    # run-config keys this strategy reads (``params_from_config``); keys no strategy of a run
    # reads stay out of the run's hash (fedal.config.experiment_key)
    config_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def params_from_config(cls, cfg) -> dict:
        """The strategy's hyper-parameters taken from a ``fedal.config.Config``."""
        return {}

    def select(self, view: LocalView, n: int, rng: np.random.Generator) -> Selection:
        if not isinstance(view, LocalView):
            raise TypeError(f"view must be a LocalView; got {type(view).__name__}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"rng must be a numpy.random.Generator (np.random.default_rng(seed)); got "
                f"{type(rng).__name__}"
            )
        n = _check_budget(n)
        pool = view.pool
        if n > pool.size:
            raise PoolExhausted(n, pool.size)
        indices, utilities = self._select(view, pool, n, rng)
        sel = Selection(np.asarray(indices), np.asarray(utilities))
        if len(sel) != n or np.any(view.labeled[sel.indices]):
            raise RuntimeError(
                f"point strategy {self.name!r} broke its contract: returned {len(sel)} indices "
                f"for n={n}, {int(np.sum(view.labeled[sel.indices]))} of them labeled"
            )
        return sel

    def _select(
        self, view: LocalView, pool: np.ndarray, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (indices into the view, utilities aligned with them). `pool` holds the
        unlabeled indices ascending and 1 ≤ n ≤ len(pool) is guaranteed."""
        raise NotImplementedError


_REGISTRY: Registry[type[Strategy]] = Registry("point strategy", "unknown point strategy {name!r}; valid names: {valid}",
                                               sort=True)


def register(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator adding a strategy to the registry under its configured name."""

    def add(cls: type[Strategy]) -> type[Strategy]:
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"{cls!r} is not a Strategy subclass")
        _REGISTRY.add(name, cls)
        cls.name = name
        return cls

    return add


unregister = _REGISTRY.remove
strategy_class = _REGISTRY.get


def available() -> list[str]:
    """Names accepted by `get`, sorted."""
    return list(_REGISTRY.names())


def from_config(name: str, cfg) -> Strategy:
    """The strategy ``name`` with the hyper-parameters it takes from the run's config."""
    return get(name, **strategy_class(name).params_from_config(cfg))


def get(name: str, **params) -> Strategy:
    """Build the strategy registered as `name` with the given hyper-parameters."""
    cls = strategy_class(name)
    accepted = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"point strategy {name!r} takes no parameter(s) {', '.join(unknown)}; accepted: "
            f"{', '.join(accepted) if accepted else '(none)'}"
        )
    return cls(**params)
