"""External clustering metrics against true labels: ARI, NMI and ACC (Hungarian matching)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def clustering_accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    """Best one-to-one match of predicted to true clusters (Hungarian), as a fraction of cells."""
    t_codes, t = np.unique(np.asarray(truth), return_inverse=True)
    p_codes, p = np.unique(np.asarray(pred), return_inverse=True)
    table = np.zeros((len(p_codes), len(t_codes)), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(t))


def score_labels(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    return {
        "ari": float(adjusted_rand_score(truth, pred)),
        "nmi": float(normalized_mutual_info_score(truth, pred)),
        "acc": clustering_accuracy(truth, pred),
    }
