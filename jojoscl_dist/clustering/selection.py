"""Label-free model selection: scores computed at each evaluation, and the rule that picks the epoch.

Scores (no labels involved):
- ``silhouette``: mean cosine silhouette of the k-means labels on the instance embedding z (subsampled).
- ``stability``: ARI between the k-means labels of this evaluation and of the previous one; a model whose
  clustering has stopped moving is preferred.
- ``input_silhouette`` (when a reference is given): euclidean silhouette of the same labels in PCA(50) of the
  evaluated cells' preprocessed expression. That space does not depend on the model, so unlike the silhouette in
  z it compares across hyper-parameters (sweeps): a config that shrinks z into tight balls scores high in its own
  z whatever it groups, but not here (measured on a PBMC sweep: docs/tune.md).
Rules: ``last`` (final epoch), ``silhouette`` (max), ``stability`` (max; ties -> later epoch). Evaluations before
``min_epoch`` are scored and logged but cannot be picked: right after initialisation the embedding has a high
silhouette for reasons unrelated to cell types (measured: the first evaluations won on human_kidney and PBMC and
were the worst epochs there; docs/decisions.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import adjusted_rand_score, silhouette_score


@dataclass
class Selector:
    rule: str = "last"
    seed: int = 0
    max_cells: int = 20000
    min_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_value: float = -np.inf
    _prev_labels: np.ndarray | None = None

    def update(self, epoch: int, z: np.ndarray, labels: np.ndarray,
               reference: np.ndarray | None = None) -> tuple[dict, bool]:
        """Score one evaluation; returns (scores, is_new_best). z: (n, d) embedding, labels: (n,), reference:
        (n, p) model-independent coordinates of the same cells (see ``input_reference``) or None."""
        n = len(labels)
        rng = np.random.default_rng(self.seed + epoch)
        idx = rng.choice(n, self.max_cells, replace=False) if n > self.max_cells else slice(None)
        scores: dict[str, float] = {}
        defined = 1 < len(np.unique(labels[idx])) < len(labels[idx])  # silhouette needs 2..n-1 clusters
        scores["silhouette"] = float(silhouette_score(z[idx], labels[idx], metric="cosine")) if defined else -1.0
        if reference is not None:
            scores["input_silhouette"] = float(silhouette_score(reference[idx], labels[idx])) if defined else -1.0
        scores["stability"] = (float(adjusted_rand_score(self._prev_labels, labels))
                               if self._prev_labels is not None else 0.0)
        self._prev_labels = labels.copy()
        value = {"last": float(epoch), "silhouette": scores["silhouette"], "stability": scores["stability"]}[self.rule]
        is_best = epoch >= self.min_epoch and value >= self.best_value  # >=: ties go to the later epoch
        if is_best:
            self.best_epoch, self.best_value = epoch, value
        self.history.append({"epoch": epoch, **scores})
        return scores, is_best

    def state_dict(self) -> dict:
        return {"rule": self.rule, "history": self.history, "best_epoch": self.best_epoch,
                "best_value": self.best_value, "prev_labels": self._prev_labels}

    def load_state_dict(self, s: dict) -> None:
        self.history = list(s["history"])
        self.best_epoch, self.best_value = int(s["best_epoch"]), float(s["best_value"])
        self._prev_labels = s.get("prev_labels")


def input_reference(x: np.ndarray, seed: int, n_components: int = 50) -> np.ndarray:
    """(n, G) preprocessed expression of the evaluated cells -> (n, min(50, n-1, G-1)) PCA coordinates (seeded)."""
    from sklearn.decomposition import PCA

    n_comp = max(1, min(n_components, x.shape[0] - 1, x.shape[1] - 1))
    return PCA(n_components=n_comp, random_state=seed).fit_transform(np.asarray(x, dtype=np.float32))
