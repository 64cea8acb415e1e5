"""Plain-text and markdown tables of results and ownership."""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence

import torch

from .engine import ownership_counts


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
    from .metrics import average_accuracy, forgetting_per_task
    head = ["task", "after its own training", "after all tasks", "forgetting"]
    if identical is not None:
        head.append("outputs bit-identical")
    forgetting = forgetting_per_task(matrix)
    rows = []
    for j, name in enumerate(task_names):
        row = [f"{j + 1}:{name}", fmt(matrix[j][j]), fmt(matrix[-1][j]), fmt(forgetting[j])]
        if identical is not None:
            row.append("yes" if identical[j] else "NO")
        rows.append(row)
    own = sum(matrix[j][j] for j in range(len(task_names))) / len(task_names)
    rows.append(["average", fmt(own), fmt(average_accuracy(matrix)), ""] + ([""] if identical is not None else []))
    return text_table(head, rows)


# ------------------------------------------------------------ the comparison report
# The paper's VGG-16 numbers (top-1 error %, Mallya & Lazebnik 2018, Table 2;
# shared/DESIGN.md), shown beside ours for scale.
PAPER_VGG16 = {
    "tasks": ["ImageNet", "CUBS", "Stanford Cars", "Flowers"],
    "individual": [28.42, 22.57, 13.97, 8.65],
    "packnet": [29.33, 25.72, 18.08, 10.05],
    "released checkpoint": [29.19, 22.56, 17.09, 11.07],
}
METHOD_TITLES = {"individual": "Individual networks", "finetune": "Sequential fine-tuning",
                 "classifier_only": "Classifier only", "joint": "Joint (all tasks at once)",
                 "lwf": "LwF", "packnet": "PackNet"}


def megabytes(memory: Optional[dict]) -> str:
    """A method's measured memory (baselines.network_memory) in MB (10^6 bytes)."""
    return "-" if not memory else f"{memory['bytes'] / 1e6:.2f}"


def comparison_table(results: dict) -> str:
    """The comparison in the paper's layout (task by method, top-1 error % after
    the whole sequence), then the average error, backward transfer and the
    memory each method needs for all the tasks. README.md shows this table."""
    from .metrics import average_accuracy, backward_transfer
    names = results["task_names"]
    methods = [m for m in METHOD_TITLES if m in results["methods"]]
    res = {m: results["methods"][m] for m in methods}
    rows = [[f"{j + 1}. {n}"] + [fmt(100 - res[m]["matrix"][-1][j]) for m in methods] for j, n in enumerate(names)]
    bwt = {m: backward_transfer(res[m]["matrix"]) for m in methods}
    rows += [["**average**"] + [f"**{fmt(100 - average_accuracy(res[m]['matrix']))}**" for m in methods],
             ["backward transfer (points)"] + ["n/a" if bwt[m] is None else fmt(bwt[m]) for m in methods],
             [f"memory for {len(names)} tasks (MB)"] + [megabytes(res[m].get("memory")) for m in methods]]
    return markdown_table(["task"] + [METHOD_TITLES[m] for m in methods], rows)


def comparison_markdown(results: dict) -> str:
    """The report of `experiments.compare`: the paper's layout (task by method,
    top-1 error %), then summaries, then the paper's numbers."""
    from .metrics import average_accuracy, backward_transfer
    names = results["task_names"]
    methods = [m for m in METHOD_TITLES if m in results["methods"]]
    out = [f"# PackNet against its baselines: {' -> '.join(names)}", "",
           f"Config: `{json.dumps(results['config'])}`", "",
           "## Top-1 error (%) on each task's test split after the whole sequence", "",
           comparison_table(results), "",
           "Backward transfer: the mean change of each earlier task's accuracy from right after "
           "it was learned to the end (negative = forgetting; n/a: joint training has no 'before'). "
           f"Memory: what the {len(names)} tasks need at inference, measured from the trained "
           "networks' state (parameters and BatchNorm statistics, float32) plus PackNet's packed "
           "owner maps: individual networks store one trunk per task, the others one trunk and "
           "a head per task.", "",
           "## Summary", ""]
    summ = []
    for m in methods:
        R = results["methods"][m]["matrix"]
        bwt = backward_transfer(R)
        mem = results["methods"][m].get("memory")
        summ.append([METHOD_TITLES[m], fmt(average_accuracy(R)), "n/a (one row)" if bwt is None else fmt(bwt),
                     "-" if not mem else f"{mem['values']:,}", "-" if not mem else f"{mem['bytes']:,}",
                     f"{results['methods'][m]['seconds']:.0f}"])
    out += [markdown_table(["method", "average accuracy (%)", "backward transfer (points)",
                            f"values stored for {len(names)} tasks", "bytes", "time (s)"], summ), ""]
    pk = results["methods"].get("packnet")
    if pk:
        ident = pk["outputs_identical"]
        out += ["## PackNet", "",
                f"- Forgetting, checked: after the last task, every earlier task's logits on a fixed "
                f"batch are {'bit-identical (torch.equal) to' if all(ident) else 'NOT identical to'} "
                f"those recorded when it ended ({sum(ident)}/{len(ident)} tasks).",
                f"- Prune ratios: {pk['ratios']}.",
                "- Share of the packed weights each task owns: " + ", ".join(
                    f"{n} {s:.1f}%" for n, s in zip(names, pk["shares"])) + ".",
                f"- Owner maps stored with {pk['mask_bits']} bit(s) per weight = "
                f"{pk['mask_bits'] / 8:.3f} bytes per weight (the original stores 1 byte).", ""]
        if pk.get("memory") and results["methods"].get("individual", {}).get("memory"):
            mine, alone = pk["memory"], results["methods"]["individual"]["memory"]
            out += [f"- Memory for the {len(names)} tasks: {mine['bytes']:,} bytes, of which "
                    f"{mine['mask_bytes']:,} are owner maps; individual networks need {alone['bytes']:,} "
                    f"({alone['bytes'] / mine['bytes']:.2f} times as much).", ""]
        if "individual" in results["methods"]:
            gap = average_accuracy(results["methods"]["individual"]["matrix"]) - average_accuracy(pk["matrix"])
            out += [f"- Gap to individual networks (average accuracy): {gap:.2f} points.", ""]
    if results.get("sweep"):
        out += ["## PackNet's average accuracy against the prune ratio", "",
                markdown_table(["prune ratio (every task but the last)", "average accuracy (%)"],
                               [[f"{r:g}", fmt(a)] for r, a in results["sweep"]]), ""]
    out += ["## Accuracy matrices R[i][j] (test accuracy % on task j after training task i)", ""]
    for m in methods:
        R = results["methods"][m]["matrix"]
        label = ["all tasks"] if len(R) == 1 else [f"after {i + 1}. {names[i]}" for i in range(len(R))]
        out += [f"**{METHOD_TITLES[m]}**", "",
                markdown_table(["", *names], [[l] + [fmt(a) for a in row] for l, row in zip(label, R)]), ""]
    for fig in results.get("figures", []):
        out += [f"![{fig}]({fig})", ""]
    out += ["## For scale: the paper's VGG-16 (top-1 error %)", "", paper_table(), ""]
    return "\n".join(out)


def matrices_csv(results: dict) -> str:
    """One line per (method, after task i, on task j) with the accuracy."""
    lines = ["method,after_task,on_task,accuracy"]
    names = results["task_names"]
    for m, r in results["methods"].items():
        R = r["matrix"]
        for i, row in enumerate(R):
            after = "all" if len(R) == 1 else names[i]
            lines += [f"{m},{after},{names[j]},{a:.4f}" for j, a in enumerate(row) if a is not None]
    return "\n".join(lines) + "\n"


def paper_table(final_accuracy=None) -> str:
    """The paper's table (top-1 error %) with a column for this run's PackNet
    errors (100 - final test accuracy of each task), as markdown."""
    columns = {"individual networks": "individual", "PackNet (0.5, 0.75, 0.75)": "packnet",
               "released checkpoint": "released checkpoint"}
    head = ["task", *columns] + (["this run (PackNet)"] if final_accuracy is not None else [])
    rows = []
    for j, title in enumerate(PAPER_VGG16["tasks"]):
        row = [title] + [fmt(PAPER_VGG16[k][j]) for k in columns.values()]
        if final_accuracy is not None:
            row.append(fmt(100 - final_accuracy[j]) if j < len(final_accuracy) else "-")
        rows.append(row)
    return markdown_table(head, rows)
