"""LoGo (Kim et al., "Re-thinking Federated Active Learning based on Inter-class Diversity",
CVPR 2023): a local-only model decides WHERE to look, the global model decides WHAT to take.

- Macro step: k-means with k = n (the budget) on the unlabeled points' gradient embeddings
  (p_l − onehot(ŷ_l)) ⊗ z_l of the LOCAL-ONLY model (trained only on this client's labels),
  ŷ_l = argmax p_l. The local model knows the client's own class structure (inter-class
  diversity under label skew), so its clusters spread the batch over local classes.
- Micro step: in each cluster take the point with the largest entropy under the GLOBAL model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from fedal import uncertainty as measures

from ._geometry import gradient_embedding_factors, kmeans_pp_seeding
from .base import LocalView, Strategy, register

_FALLBACKS = ("error", "global")


@register("logo")
@dataclass(frozen=True)
class LoGo(Strategy):
    """LoGo. Needs `local_probs` and `local_embeddings` in the view (needs_local_model = True).

    Parameters
    max_iter, tol     Lloyd iterations of the k-means (sklearn KMeans from one k-means++
                      seeding drawn from rng, with BADGE's first center = largest gradient
                      norm; the LoGo code uses sklearn's defaults, n_init=10 restarts).
    without_local_model
                      "error" (default): a view without a local-only model is a ValueError.
                      "global": use the global model's probs/embeddings for the macro step
                      instead — for clients with no labels, where a local-only model is
                      undefined (seeds/001 §2). This is a fallback of ours, not LoGo.

    Differences from the LoGo code, deliberate: if k-means yields fewer non-empty clusters than
    n (duplicated embeddings), the batch is completed round-robin with each cluster's next most
    uncertain point (the LoGo code does something similar but through a set, so its order is
    arbitrary). Pick order: by within-cluster rank, then global entropy (descending), then index.
    Utility = global-model entropy of each pick.

    Cost: the gradient embeddings are materialised as an N × (C·d') float32 array for k-means
    (k-means centroids are not rank-one, so BADGE's factorisation does not carry over); this is
    N·C·d'·4 bytes, e.g. 80 MB for N = 10^4, C = 10, d' = 200, and each Lloyd iteration costs
    O(N·n·C·d').
    """

    needs_local_model = True

    max_iter: int = 100
    tol: float = 1e-4
    without_local_model: str = "error"

    @classmethod
    def params_from_config(cls, cfg) -> dict:
        # a client whose labels all came from others' rounds may hold none yet: use f^r there
        return {"without_local_model": "global"}

    def __post_init__(self):
        if not isinstance(self.max_iter, int) or isinstance(self.max_iter, bool) or self.max_iter < 1:
            raise ValueError(f"logo: max_iter must be a positive integer; got {self.max_iter!r}")
        if not isinstance(self.tol, (int, float)) or self.tol < 0:
            raise ValueError(f"logo: tol must be a number ≥ 0; got {self.tol!r}")
        if self.without_local_model not in _FALLBACKS:
            raise ValueError(
                f"logo: without_local_model must be one of {_FALLBACKS}; "
                f"got {self.without_local_model!r}"
            )

    def _select(self, view: LocalView, pool, n, rng):
        if view.local_probs is not None:
            local_probs, local_emb = view.local_probs, view.local_embeddings
        elif self.without_local_model == "global":
            local_probs, local_emb = view.probs, view.embeddings
        else:
            raise ValueError(
                "logo needs local_probs and local_embeddings (a local-only model trained on the "
                "client's labels) in the LocalView; pass without_local_model='global' to fall "
                "back to the global model"
            )

        # Macro step.
        a, e = gradient_embedding_factors(local_probs[pool], local_emb[pool])
        # k-means++ seeding on the factored embeddings costs O(n·N·(C + d')); sklearn's own
        # seeding (greedy, several trials per center, on the materialised N × C·d' array) was
        # the dominant cost, ~10× the Lloyd iterations at N = 400, n = 200.
        seeds, _ = kmeans_pp_seeding(a, e, n, rng)
        grad_emb = (a.astype(np.float32)[:, :, None] * e.astype(np.float32)[:, None, :]).reshape(
            pool.size, -1
        )
        clusters = _kmeans_labels(grad_emb, grad_emb[seeds], self.max_iter, self.tol)

        # Micro step: rank each cluster's members by global entropy; taking every cluster's
        # rank-0 member first is exactly "the most uncertain point per cluster" when all n
        # clusters are non-empty, and completes the batch gracefully when some are empty.
        h = measures.entropy(view.probs[pool])
        pos = np.arange(pool.size)
        by_cluster = np.lexsort((pos, -h, clusters))
        sorted_clusters = clusters[by_cluster]
        group_start = np.flatnonzero(np.r_[True, sorted_clusters[1:] != sorted_clusters[:-1]])
        group_len = np.diff(np.r_[group_start, pool.size])
        rank = np.empty(pool.size, dtype=np.int64)
        rank[by_cluster] = pos - np.repeat(group_start, group_len)
        order = np.lexsort((pos, -h, rank))[:n]
        return pool[order], h[order]


def _kmeans_labels(x: np.ndarray, centers: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """Lloyd's iterations from the given initial centers; the cluster label of each row."""
    from sklearn.cluster import KMeans  # lazy: sklearn's import is slow and only LoGo needs it
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # "fewer distinct clusters than n_clusters" is handled by the round-robin completion
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=centers.shape[0], init=centers, n_init=1, max_iter=max_iter, tol=tol)
        return km.fit_predict(x)
