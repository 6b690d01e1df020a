"""Sequence-classification metrics: single-label, multi-label (with threshold tuning) and regression.

All functions return plain Python floats/ints/lists, ready for JSON. Per-class rows use the label names.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, precision_score, recall_score

THRESHOLD_GRID = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))


def _per_class(true, pred, labels: Sequence[str], multi_label: bool = False) -> dict:

    kwargs = {} if multi_label else {"labels": list(range(len(labels)))}
    precision, recall, f1, support = precision_recall_fscore_support(true, pred, average=None,
                                                                     zero_division=0, **kwargs)
    return {label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)}


def _averaged_f1(true, pred, average: str, labels=None) -> float:
    return float(f1_score(true, pred, average=average, labels=labels, zero_division=0))


def single_label_metrics(true_ids: Sequence[int], probs: np.ndarray, labels: Sequence[str]) -> dict:
    """Accuracy, macro/micro/weighted F1, macro precision/recall, per-class report and confusion matrix
    (rows: true label, columns: predicted, in `labels` order) from class probabilities [N, K]."""

    true = np.asarray(true_ids, dtype=int)
    pred = np.asarray(probs).argmax(-1) if len(true) else np.zeros(0, int)
    ids = list(range(len(labels)))
    if not len(true):
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "micro_f1": float("nan"), "examples": 0}
    return {
        "accuracy": float((true == pred).mean()),
        "macro_f1": _averaged_f1(true, pred, "macro", ids),
        "micro_f1": _averaged_f1(true, pred, "micro", ids),
        "weighted_f1": _averaged_f1(true, pred, "weighted", ids),
        "macro_precision": float(precision_score(true, pred, average="macro", labels=ids, zero_division=0)),
        "macro_recall": float(recall_score(true, pred, average="macro", labels=ids, zero_division=0)),
        "per_class": _per_class(true, pred, labels),
        "confusion_matrix": confusion_matrix(true, pred, labels=ids).tolist(),
        "labels": list(labels),
        "examples": int(len(true)),
    }


def multi_label_metrics(true_multi_hot: np.ndarray, probs: np.ndarray, labels: Sequence[str],
                        threshold: float = 0.5) -> dict:
    """Micro/macro F1, subset accuracy (all labels right), label-wise (Hamming) accuracy and per-class
    scores, with label k predicted when its probability is >= threshold."""
    true = np.asarray(true_multi_hot, dtype=int).reshape(-1, len(labels))
    pred = (np.asarray(probs).reshape(-1, len(labels)) >= threshold).astype(int)
    if not len(true):
        return {"micro_f1": float("nan"), "macro_f1": float("nan"), "examples": 0, "threshold": float(threshold)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "micro_f1": _averaged_f1(true, pred, "micro"),
            "macro_f1": _averaged_f1(true, pred, "macro"),
            "samples_f1": _averaged_f1(true, pred, "samples"),
            "subset_accuracy": float((true == pred).all(axis=1).mean()),
            "hamming_accuracy": float((true == pred).mean()),
            "threshold": float(threshold),
            "per_class": _per_class(true, pred, labels, multi_label=True),
            "labels": list(labels),
            "examples": int(len(true)),
        }


def tune_threshold(true_multi_hot: np.ndarray, probs: np.ndarray, grid: Sequence[float] = THRESHOLD_GRID) -> float:
    """The threshold of `grid` with the best micro F1; among ties the one nearest 0.5, so that a flat
    optimum keeps the conventional value."""

    true = np.asarray(true_multi_hot, dtype=int)
    probs = np.asarray(probs)
    if not len(true):
        return 0.5
    scores = [(f1_score(true, (probs >= t).astype(int), average="micro", zero_division=0), -abs(t - 0.5), t)
              for t in grid]
    return float(max(scores)[2])


def regression_metrics(targets: Sequence[float], predictions: Sequence[float]) -> dict:
    """MSE, RMSE, MAE, Pearson and Spearman correlation. A constant prediction (or target) has no defined
    correlation; it is reported as 0.0 so that it never looks better than a real one."""

    y = np.asarray(targets, dtype=np.float64)
    p = np.asarray(predictions, dtype=np.float64)
    if not len(y):
        return {"mse": float("nan"), "pearson": float("nan"), "spearman": float("nan"), "examples": 0}
    constant = np.ptp(y) == 0 or np.ptp(p) == 0 or len(y) < 2
    error = p - y
    return {
        "mse": float(np.mean(error ** 2)),
        "rmse": float(np.sqrt(np.mean(error ** 2))),
        "mae": float(np.mean(np.abs(error))),
        "pearson": 0.0 if constant else float(pearsonr(y, p)[0]),
        "spearman": 0.0 if constant else float(spearmanr(y, p)[0]),
        "examples": int(len(y)),
    }


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], png_path,
                          title: str = "confusion matrix") -> Path:
    """Counts with row-normalised shading (rows: true label, columns: predicted)."""
    from matplotlib.figure import Figure  # matplotlib loads only where a plot is drawn

    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(labels) + 2.5)
    figure = Figure(figsize=(size + 1, size))
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true label's examples")
    axes.set_xticks(range(len(labels)), labels=list(labels), rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels=list(labels))
    axes.set(xlabel="predicted", ylabel="true", title=title)
    if len(labels) <= 30:
        for i in range(len(labels)):
            for j in range(len(labels)):
                axes.text(j, i, f"{int(counts[i, j])}", ha="center", va="center",
                          color="white" if shares[i, j] > 0.5 else "black", fontsize=9)
    figure.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png_path, dpi=100)
    return png_path
