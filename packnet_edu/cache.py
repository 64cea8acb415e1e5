"""Training results the notebooks share: computed once, then loaded.

    cfg = notebook_config()                       # fast (PACKNET_FAST=1) or full
    res = load_or_run("finetune", cfg, lambda: run_method("finetune", cfg, tasks))

A result is stored under `cache/<name>-<key hash>/` (the folder is set by
PACKNET_CACHE; default `cache/` at the repository root, git-ignored). The key
is the config dict, the `extra` arguments, the package version, a hash of
the source of the modules that compute results (engine, models, data, train,
baselines, checkpoint) and torch's thread count (it changes results' last bits). A result is only ever loaded under the exact key it
was computed with; anything else is recomputed, and a message says so and
what changed. `PACKNET_REFRESH=1` recomputes everything.

Storage: plain data as JSON, a model with its PackNet engine as a
`packnet_edu.checkpoint` file, other tensors with `torch.save` (all loaded
with `weights_only=True`).
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from . import __version__
from . import checkpoint as ck
from .train import Config

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_MODULES = ("engine.py", "models.py", "data.py", "train.py", "baselines.py", "checkpoint.py")
FAST_ENV = "PACKNET_FAST"


# ------------------------------------------------------------ the notebooks' configs
def fast_mode() -> bool:
    """True when PACKNET_FAST is set (to anything but '', '0', 'false', 'no')."""
    return os.environ.get(FAST_ENV, "").strip().lower() not in ("", "0", "false", "no")


def notebook_config(**overrides) -> Config:
    """The config every notebook uses, in one place.

    Full mode (default): the `make demo` run (3 epochs per task, then prune and
    1 retraining epoch, up to 10,000 training images per task): a few minutes
    per notebook on a laptop CPU. Fast mode (PACKNET_FAST=1, for CI): 1 epoch
    on 1,000 images per task; the numbers are worse, every step is the same."""
    cfg = Config(epochs=1, retrain_epochs=1, max_train=1000) if fast_mode() else Config()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise TypeError(f"Config has no field {k!r}")
        setattr(cfg, k, v)
    return cfg


def eval_cap() -> Optional[int]:
    """Fast mode also caps each task's validation and test splits (a fixed,
    seeded subsample): evaluation, not training, dominates a tiny run."""
    return 500 if fast_mode() else None


def describe(cfg: Config) -> str:
    mode = "FAST mode (PACKNET_FAST=1)" if fast_mode() else "full mode"
    return (f"{mode}: {cfg.epochs} epoch(s) per task + {cfg.retrain_epochs} after pruning, "
            f"up to {cfg.max_train or 'all'} training images per task, tasks {', '.join(cfg.tasks)}")


# ------------------------------------------------------------ keys
def cache_dir() -> Path:
    env = os.environ.get("PACKNET_CACHE")
    return Path(env) if env else PACKAGE_DIR.parent / "cache"


def source_hash() -> str:
    """Hash of the modules whose code decides a result (not plots, widgets, this file)."""
    h = hashlib.sha256()
    for name in SOURCE_MODULES:
        path = PACKAGE_DIR / name
        h.update(name.encode())
        h.update(path.read_bytes() if path.is_file() else b"")
    return h.hexdigest()[:16]


def cache_key(name: str, cfg: Config, extra: Optional[dict] = None) -> dict:
    cfg_dict = cfg.to_dict() if isinstance(cfg, Config) else dict(cfg)
    # torch's CPU thread count changes the order of float sums, so results differ
    # in the last bits between thread counts (seen: 59.6% vs 59.4%): part of the key
    return {"name": name, "config": cfg_dict, "extra": extra or {}, "eval_cap": eval_cap(),
            "version": __version__, "source": source_hash(), "threads": torch.get_num_threads()}


def code_hash(fn: Callable) -> str:
    """Hash of a function's source (for a loop written in a notebook cell:
    editing it must recompute, like editing the library does). IPython keeps
    each cell's source, so inspect finds it; compiled code is the fallback."""
    try:
        text = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        text = fn.__code__.co_code
    return hashlib.sha256(text).hexdigest()[:16]


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _differences(old: dict, new: dict, prefix: str = "") -> List[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            what = {"source": "source code changed", "code": "the cell's code changed"}.get(k)
            out.append(what or f"{prefix}{k}: {a!r} -> {b!r}")
    return out


# ------------------------------------------------------------ load or run
def _to_json(obj: Any) -> Optional[str]:
    try:
        return json.dumps(obj)
    except (TypeError, ValueError):
        return None


def _save(folder: Path, result: dict) -> None:
    rest = dict(result)
    ckpt = rest.pop("checkpoint", None)
    if ckpt is not None:
        ck.save(ckpt, folder / "checkpoint.pt")
    text = _to_json(rest)
    if text is not None:
        (folder / "result.json").write_text(text)
    else:
        torch.save(rest, folder / "result.pt")


def _load(folder: Path) -> dict:
    if (folder / "result.json").is_file():
        result = json.loads((folder / "result.json").read_text())
    else:
        result = torch.load(folder / "result.pt", map_location="cpu", weights_only=True)
    if (folder / "checkpoint.pt").is_file():
        result["checkpoint"] = ck.load(folder / "checkpoint.pt")
        result["checkpoint_path"] = str(folder / "checkpoint.pt")
    return result


def load_or_run(name: str, cfg: Config, fn: Callable[[], dict], extra: Optional[dict] = None,
                refresh: bool = False, verbose: bool = True, code: Optional[Callable] = None) -> dict:
    """`fn()`'s result (a dict), loaded from the cache if it was computed with
    this exact key (name, config, `extra`, package version and source), else
    computed and stored. `code`: a function written outside the library (a
    notebook's loop) whose source is part of the key too. A "checkpoint" entry
    (a `checkpoint.make_checkpoint` dict) is stored as a checkpoint file. Never
    loads a result silently: it prints what it loaded, or why it computes."""
    if code is not None:
        extra = {**(extra or {}), "code": code_hash(code)}
    key = cache_key(name, cfg, extra)
    h = key_hash(key)
    root = cache_dir()
    folder = root / f"{name}-{h}"
    refresh = refresh or os.environ.get("PACKNET_REFRESH", "") not in ("", "0")
    say = print if verbose else (lambda *a, **k: None)
    if folder.is_dir() and not refresh:
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta["key"] != key:
                raise ValueError("the stored key differs from the folder's hash")
            result = _load(folder)
            say(f"cache: loaded '{name}' from {folder} (computed {meta['created']} in {meta['seconds']:.0f}s "
                f"with this exact config; PACKNET_REFRESH=1 recomputes)")
            return result
        except Exception as err:  # unreadable or inconsistent: never used
            say(f"cache: '{name}' in {folder} is unusable ({type(err).__name__}: {err}); recomputing")
    if refresh:
        say(f"cache: recomputing '{name}' (refresh requested)")
    else:
        others = sorted(root.glob(f"{name}-*/meta.json"), key=lambda p: p.stat().st_mtime)
        if others:
            try:
                old = json.loads(others[-1].read_text())["key"]
                changes = "; ".join(_differences(old, key)[:6])
            except Exception:
                changes = "unreadable"
            say(f"cache: computing '{name}': the cached '{name}' was made with a different key "
                f"({changes}), so it is not used")
        else:
            say(f"cache: computing '{name}' (nothing cached yet for it)")
    t0 = time.time()
    result = fn()
    seconds = time.time() - t0
    tmp = root / f".{name}-{h}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _save(tmp, result)
    meta = {"key": key, "created": time.strftime("%Y-%m-%d %H:%M"), "seconds": seconds}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    say(f"cache: stored '{name}' in {folder} ({seconds:.0f}s)")
    return _load(folder) if "checkpoint" in result else result


# ------------------------------------------------------------ the shared runs
_TASKS: Dict[tuple, list] = {}


def tasks_for(cfg: Config):
    """The config's tasks, loaded once per process."""
    from .data import _subsample
    from .train import load_tasks
    cap = eval_cap()
    key = (tuple(cfg.tasks), cfg.seed, cfg.max_train, cfg.data_root, cap)
    if key not in _TASKS:
        tasks = load_tasks(cfg)
        if cap is not None:
            for t in tasks:
                for split in ("val", "test"):
                    ds = getattr(t, split)
                    idx = torch.from_numpy(_subsample(np.arange(len(ds)), cap, cfg.seed))
                    setattr(t, split, torch.utils.data.TensorDataset(*(x[idx] for x in ds.tensors)))
        _TASKS[key] = tasks
    return _TASKS[key]


def baseline(method: str, cfg: Config) -> dict:
    """run_method(method)'s accuracy matrix, cached: {"matrix", "task_names", "seconds"}."""
    from .baselines import run_method

    def run():
        tasks = tasks_for(cfg)
        out = run_method(method, cfg, tasks)
        return {"matrix": out["matrix"], "task_names": [t.name for t in tasks], "seconds": out["seconds"]}
    return load_or_run(method, cfg, run)


def packnet_run(cfg: Config, layer: str = "conv1.weight") -> dict:
    """`train.run_packnet`, cached, plus snapshots of one layer after every phase.

    Returns the run's summary (matrix, ratios, outputs_identical, owned, val,
    task_names, seconds), "snapshots" (list of {"label", "task", "phase",
    "weight", "owner"} for `layer`: after training, after pruning, after
    retraining each task), "checkpoint" (the final checkpoint dict) and
    "checkpoint_path"; `restore(result)` gives the model and engine back.

    The after-prune snapshot is exact without a hook inside run_packnet:
    pruning zeroes the released weights and frees them, and retraining moves
    only kept weights without changing any owner, so "after pruning" is the
    after-training weights where the final owner map of the task keeps them."""
    def run():
        from .train import run_packnet
        snaps: List[dict] = []

        def record(progress, model, engine, task_names):
            t, phase = progress["task"], progress["phase"]
            w = dict(model.trunk.named_parameters())[layer].detach().cpu().clone()
            o = engine.owner[layer].cpu().clone()
            name = task_names[t - 1]
            if phase == "train":
                snaps.append({"label": f"{t} {name}: trained", "task": t, "phase": "train", "weight": w, "owner": o})
                return
            trained = snaps[-1]
            if torch.equal(trained["owner"], o) and torch.equal(trained["weight"], w):
                return                      # not pruned (the last task): nothing changed
            pruned_w = torch.where(o != 0, trained["weight"], torch.zeros_like(w))
            snaps.append({"label": f"{t} {name}: pruned", "task": t, "phase": "prune", "weight": pruned_w, "owner": o})
            snaps.append({"label": f"{t} {name}: retrained", "task": t, "phase": "retrain", "weight": w, "owner": o})

        res = run_packnet(cfg, tasks_for(cfg), on_phase_end=record, verbose=True)
        summary = {k: res[k] for k in ("task_names", "ratios", "matrix", "val", "outputs_identical", "owned", "seconds")}
        summary["snapshots"] = snaps
        summary["layer"] = layer
        summary["checkpoint"] = ck.make_checkpoint(res["model"], res["engine"], cfg.to_dict(), res["task_names"])
        return summary
    return load_or_run("packnet", cfg, run, extra={"layer": layer})


def restore(result: dict):
    """(model, engine) from a cached result holding a checkpoint."""
    return ck.restore(result["checkpoint"])


def pruning_study(cfg: Config, ratios: Sequence[float], task: int = 1) -> dict:
    """One network trained on task `task` alone (`epochs`), then for each ratio:
    magnitude pruning (per layer, as PackNet), test accuracy, one retraining
    phase (`retrain_epochs` at `retrain_lr`), test accuracy again.

    The fair reference for "after retraining" is not the network as trained
    (it had fewer epochs) but the same network given the same retraining phase
    without pruning: "dense_same_epochs". Without it, retraining's extra
    low-lr epoch reads as "pruning improves accuracy".

    Cached: {"checkpoint" (the trained network; its engine has task 1 in
    training, owning every weight), "dense" (its accuracy), "dense_same_epochs",
    "curve": [{"ratio", "before", "after", "dense_same_epochs"}], "task_name"}."""
    from .engine import PackNet
    from .train import evaluate_task, fit, loader_for, make_model, trainable_parameters

    def run():
        tasks = tasks_for(cfg)
        data = tasks[task - 1]
        test_loader = loader_for(data.test, cfg, train=False)
        model = make_model(cfg, [data.num_classes])
        engine = PackNet(model.trunk)
        engine.start_task()
        fit(model, 1, data, cfg, cfg.epochs, cfg.lr, trainable_parameters(model, 1), engine, desc="train")
        ckpt = ck.make_checkpoint(model, engine, cfg.to_dict(), [data.name])
        dense = evaluate_task(model, engine, 1, test_loader, cfg.device)

        def retrained(ratio: Optional[float]):
            m, e = ck.restore(ckpt)
            if ratio is not None:
                e.prune(float(ratio))
            before = evaluate_task(m, e, 1, test_loader, cfg.device)
            fit(m, 1, data, cfg, cfg.retrain_epochs, cfg.retrain_lr, trainable_parameters(m, 1), e,
                desc=f"retrain {ratio}")
            return before, evaluate_task(m, e, 1, test_loader, cfg.device)

        _, same_epochs = retrained(None)
        print(f"dense {dense:5.1f}%, dense + the retraining phase {same_epochs:5.1f}%")
        curve = []
        for r in ratios:
            before, after = retrained(r)
            curve.append({"ratio": float(r), "before": before, "after": after, "dense_same_epochs": same_epochs})
            print(f"ratio {r:.2f}: {before:5.1f}% pruned, {after:5.1f}% retrained")
        return {"checkpoint": ckpt, "curve": curve, "dense": dense, "dense_same_epochs": same_epochs,
                "task_name": data.name}
    return load_or_run("pruning", cfg, run, extra={"ratios": [float(r) for r in ratios], "task": task})


def pruning_ratios() -> List[float]:
    """The ratios of the pruning notebook's precomputed curve (fewer in fast
    mode); both hold 0.75, the ratio PackNet prunes its later tasks with."""
    if fast_mode():
        return [0.0, 0.5, 0.75, 0.9]
    return [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95]
