"""Continual-learning metrics of an accuracy matrix.

R[i][j] is the test accuracy (%) on task j after training task i (0-based
here; None where task j was not yet trained). Definitions as in Lopez-Paz &
Ranzato, "Gradient Episodic Memory" (2017):

  average accuracy  ACC = (1/T) sum_j R[T-1][j]
  backward transfer BWT = (1/(T-1)) sum_{j<T-1} (R[T-1][j] - R[j][j])
                      (negative = forgetting; PackNet's is exactly 0)
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

Matrix = Sequence[Sequence[Optional[float]]]


def _check(R: Matrix) -> None:
    if not R or any(len(row) != len(R[0]) for row in R):
        raise ValueError("the accuracy matrix must be a non-empty list of equal-length rows")


def average_accuracy(R: Matrix) -> float:
    _check(R)
    final = R[-1]
    if any(a is None for a in final):
        raise ValueError("the last row must hold an accuracy for every task")
    return sum(final) / len(final)


def backward_transfer(R: Matrix) -> Optional[float]:
    """None for a single-row matrix (joint training has no 'before')."""
    _check(R)
    T = len(R[0])
    if len(R) != T:
        return None
    if T < 2:
        return 0.0
    return sum(R[-1][j] - R[j][j] for j in range(T - 1)) / (T - 1)


def forgetting_per_task(R: Matrix) -> Optional[List[float]]:
    """R[j][j] - R[T-1][j] for each task (0 for the last)."""
    _check(R)
    if len(R) != len(R[0]):
        return None
    return [R[j][j] - R[-1][j] for j in range(len(R[0]))]


def capacity_shares(owned: Dict[str, Dict[int, int]], num_tasks: int) -> List[float]:
    """Each task's share (%) of all packed weights, from per-layer counts
    {layer: {owner: count}}; index 0 is task 1. Free weights are left out."""
    total = sum(sum(c.values()) for c in owned.values())
    return [100.0 * sum(c.get(k, 0) for c in owned.values()) / total for k in range(1, num_tasks + 1)]
