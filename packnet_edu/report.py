"""Plain-text and markdown tables of results and ownership."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch


def ownership_counts(owner: Dict[str, torch.Tensor]) -> Dict[str, Dict[int, int]]:
    """Per layer: {owner id: count} (0 = free)."""
    out = {}
    for name, o in owner.items():
        ids, counts = torch.unique(o, return_counts=True)
        out[name] = {int(i): int(c) for i, c in zip(ids, counts)}
    return out


def ownership_table(owner: Dict[str, torch.Tensor], task_names: Sequence[str]) -> str:
    """Weights each task owns in each layer (count and share), and the free ones."""
    counts = ownership_counts(owner)
    num = max([max(c) for c in counts.values()] + [0])
    names = [f"{k}:{task_names[k - 1]}" if k <= len(task_names) else str(k) for k in range(1, num + 1)]
    head = ["layer", "weights"] + names + ["free"]
    rows = []
    for layer, c in counts.items():
        total = sum(c.values())
        cells = [f"{c.get(k, 0):,} ({100 * c.get(k, 0) / total:.1f}%)" for k in list(range(1, num + 1)) + [0]]
        rows.append([layer, f"{total:,}"] + cells)
    return text_table(head, rows)


def text_table(head: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def markdown_table(head: List[str], rows: List[List[str]]) -> str:
    return "\n".join(["| " + " | ".join(map(str, head)) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def fmt(x: Optional[float], digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def accuracy_table(task_names: Sequence[str], matrix: List[List[Optional[float]]],
                   identical: Optional[Sequence[bool]] = None) -> str:
    """Each task's test accuracy right after it was learned and after the whole sequence."""
    head = ["task", "after its own training", "after all tasks", "forgetting"]
    if identical is not None:
        head.append("outputs bit-identical")
    rows = []
    for j, name in enumerate(task_names):
        row = [f"{j + 1}:{name}", fmt(matrix[j][j]), fmt(matrix[-1][j]), fmt(matrix[j][j] - matrix[-1][j])]
        if identical is not None:
            row.append("yes" if identical[j] else "NO")
        rows.append(row)
    final = [r[j] for j, r in enumerate([matrix[-1]] * len(task_names))]
    rows.append(["average", fmt(sum(m[j] for j, m in enumerate(matrix)) / len(matrix)),
                 fmt(sum(final) / len(final)), ""] + ([""] if identical is not None else []))
    return text_table(head, rows)
