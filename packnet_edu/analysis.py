"""PackNet's drawbacks, measured (notebook 8).

- `inferred_task_accuracy`: PackNet needs the task id at test time. Without
  it, a natural guess is the most confident head; this measures what that
  costs on each task's test split.
- `planned_counts`: capacity arithmetic with the engine's own rounding, for
  any number of tasks (how many weights of a layer each task gets).
- `head_only_accuracy`: a task that arrives after the last one kept every
  free weight gets no weight of the trunk (`start_task` refuses); all it can
  still learn is its own classifier head on the frozen features.
- `storage`: bytes of PackNet against separate networks.

Plain functions over a model and its engine; nothing here trains the trunk.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from .engine import PackNet, prune_count
from .train import Config, loader_for


@torch.no_grad()
def inferred_task_accuracy(model, engine: PackNet, tasks: Sequence, cfg: Config) -> Dict[str, List[float]]:
    """For each task's test split: accuracy (%) when the task id is given
    ("known"), when it is guessed as the head with the highest softmax
    confidence, each head computing with its own task's weights ("inferred"),
    and how often that guess is the right task ("identified")."""
    model.eval()
    num = engine.num_tasks
    out = {"known": [], "inferred": [], "identified": []}
    for k, data in enumerate(tasks, start=1):
        loader = loader_for(data.test, cfg, train=False)
        conf, pred = [], []                                # [head][image]
        for j in range(1, num + 1):
            c, p = [], []
            with engine.task_view(j):                      # head j sees the weights of tasks 1..j
                for x, _ in loader:
                    prob = F.softmax(model(x.to(cfg.device), j).float(), dim=1).cpu()
                    top = prob.max(dim=1)
                    c.append(top.values)
                    p.append(top.indices)
            conf.append(torch.cat(c))
            pred.append(torch.cat(p))
        conf, pred = torch.stack(conf), torch.stack(pred)
        labels = torch.cat([y for _, y in loader])
        guess = conf.argmax(dim=0)                         # 0-based head index
        inferred = pred.gather(0, guess.unsqueeze(0)).squeeze(0)
        n = len(labels)                                    # counts, as train.evaluate computes them
        out["known"].append(100.0 * int((pred[k - 1] == labels).sum()) / n)
        out["inferred"].append(100.0 * int(((guess == k - 1) & (inferred == labels)).sum()) / n)
        out["identified"].append(100.0 * int((guess == k - 1).sum()) / n)
    return out


def planned_counts(ratios: Sequence[float], n: int) -> List[int]:
    """Weights of an n-weight layer each task keeps under the schedule
    `ratios` (the engine's rounding: `prune_count`), then the number left free."""
    counts, free = [], n
    for r in ratios:
        released = prune_count(float(r), free)
        counts.append(free - released)
        free = released
    return counts + [free]


@torch.no_grad()
def _features(model, engine: PackNet, dataset, cfg: Config) -> torch.Tensor:
    model.eval()
    with engine.task_view(engine.num_tasks):               # every task's weights
        return torch.cat([model.trunk(x.to(cfg.device)).cpu() for x, _ in loader_for(dataset, cfg, train=False)])


def head_only_accuracy(model, engine: PackNet, data, cfg: Config, epochs: int) -> float:
    """Test accuracy (%) of task `data` when no weight of the trunk is left
    for it: a new linear head trained (`epochs` of SGD at `cfg.lr`) on the
    frozen trunk's features, computed with the weights of every task."""
    feats = {s: _features(model, engine, getattr(data, s), cfg) for s in ("train", "test")}
    labels = {s: getattr(data, s).tensors[1] for s in ("train", "test")}
    torch.manual_seed(cfg.seed)
    head = torch.nn.Linear(feats["train"].shape[1], data.num_classes)
    opt = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(epochs):
        order = torch.randperm(len(labels["train"]), generator=gen)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            loss = F.cross_entropy(head(feats["train"][idx]), labels["train"][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return 100.0 * int((head(feats["test"]).argmax(1) == labels["test"]).sum()) / len(labels["test"])


def storage(model, engine: PackNet, bytes_per_value: int = 4) -> Dict[str, int]:
    """Bytes to hold the model's T tasks (one head each): as T separate
    networks (a trunk and a head each) or as PackNet (one trunk, the T heads,
    and an owner map of ceil(log2(T + 1)) bits for every prunable weight)."""
    num_tasks = len(model.heads)
    trunk = sum(p.numel() for p in model.trunk.parameters())
    heads = sum(p.numel() for p in model.heads.parameters())
    owned = sum(w.numel() for w in engine.weights.values())
    bits = math.ceil(math.log2(num_tasks + 1))
    return {"tasks": num_tasks, "trunk": trunk, "heads": heads, "owned": owned, "bits": bits,
            "separate": (num_tasks * trunk + heads) * bytes_per_value,
            "packnet": (trunk + heads) * bytes_per_value + math.ceil(owned * bits / 8)}
