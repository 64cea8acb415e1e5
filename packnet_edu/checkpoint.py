"""Checkpoints: one versioned file, plain tensors only, written atomically.

A checkpoint is a dict (loaded with `torch.load(weights_only=True)`, so no
pickled code runs) holding the model's state dict, the owner maps packed to
ceil(log2(T + 1)) bits per weight for T tasks (the original stores 8), the
task names, the config, the CPU thread count (results depend on it; resume
warns when it changes), for a run in progress what is needed to resume, for a
finished run its results (what results.json holds), and a
sha256 checksum of all of it: `load` reports a flipped bit instead of loading it.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from torch import nn

from .engine import STATE_VERSION, PackNet
from .fileio import atomic_write
from .models import MultiHeadNet, build_model

FORMAT = "packnet_edu.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do."""


# ------------------------------------------------------------ packed masks
def bits_for(num_tasks: int) -> int:
    """Bits per weight to store owners 0..num_tasks: ceil(log2(T + 1)), at least 1."""
    return max(1, math.ceil(math.log2(num_tasks + 1)))


def pack_owner(owner: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 owner map -> (bits, ceil(n / 8)) uint8 bit planes."""
    flat = owner.flatten().to(torch.int64)
    top = int(flat.max()) if flat.numel() else 0
    if top >= 2 ** bits:
        raise ValueError(f"owner ids up to {top} do not fit in {bits} bits")
    pad = (-flat.numel()) % 8
    flat = torch.cat([flat, flat.new_zeros(pad)])
    place = 2 ** torch.arange(8, dtype=torch.int64)
    planes = [(((flat >> b) & 1).view(-1, 8) * place).sum(1) for b in range(bits)]
    return torch.stack(planes).to(torch.uint8)


def unpack_owner(packed: torch.Tensor, shape, bits: int) -> torch.Tensor:
    n = math.prod(shape)
    place = 2 ** torch.arange(8, dtype=torch.int64)
    values = torch.zeros(packed.shape[1] * 8, dtype=torch.int64)
    for b in range(bits):
        plane = (packed[b].to(torch.int64).unsqueeze(1) & place).ne(0).flatten()
        values |= plane.to(torch.int64) << b
    return values[:n].view(*shape).to(torch.uint8)


# ------------------------------------------------------------ build / save / load
def make_checkpoint(model: MultiHeadNet, engine: PackNet, config: dict, task_names,
                    progress: Optional[dict] = None, results: Optional[dict] = None) -> dict:
    """`progress`: a run in progress (what resuming needs); `results`: a
    finished run's summary (what its results.json holds, rewritten from here
    by `run --resume` if that file is lost)."""
    bits = bits_for(engine.num_tasks)
    return {
        "format": FORMAT, "version": FORMAT_VERSION,
        "config": dict(config), "task_names": list(task_names),
        "num_classes": model.num_classes,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "engine": {"version": STATE_VERSION, "num_tasks": engine.num_tasks,
                   "training_task": engine.training_task},
        "owner": {name: {"shape": list(o.shape), "bits": bits, "packed": pack_owner(o.cpu(), bits)}
                  for name, o in engine.owner.items()},
        "progress": progress,
        "results": results,
        # CPU results depend on the thread count (reductions split differently):
        # recorded so that --resume can warn when it changes.
        "threads": torch.get_num_threads(),
    }


def checksum(obj) -> str:
    """sha256 of everything in a checkpoint but its own "checksum" entry: every
    tensor's dtype, shape and bytes and every other value's repr, in key order.
    A flipped bit anywhere in the stored tensors changes it."""
    h = hashlib.sha256()

    def feed(x, where: str) -> None:
        if isinstance(x, dict):
            for k in sorted(x, key=str):
                if not (where == "" and k == "checksum"):
                    feed(x[k], f"{where}/{k}")
        elif isinstance(x, (list, tuple)):
            h.update(f"{where}:{type(x).__name__}{len(x)}".encode())
            for i, v in enumerate(x):
                feed(v, f"{where}/{i}")
        elif isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"{where}:{t.dtype}{tuple(x.shape)}".encode())
            h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
        else:
            h.update(f"{where}={x!r}".encode())
    feed(obj, "")
    return h.hexdigest()


def save(ckpt: dict, path: Union[str, Path]) -> Path:
    """Write atomically (fileio.atomic_write), so a run killed mid-write or a
    full disk leaves the previous checkpoint intact, with a checksum that load
    verifies. Raises fileio.WriteError (an OSError) saying what to do."""
    ckpt = dict(ckpt, checksum=checksum(ckpt))
    return atomic_write(path, lambda f: torch.save(ckpt, f))


def load(path: Union[str, Path], kind: Optional[str] = None) -> dict:
    """Read and validate a checkpoint file (weights_only: no code is unpickled);
    `kind` is the format marker expected (default: a training checkpoint)."""
    kind = kind or FORMAT
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a cut-off zip, random bytes, or pickled code weights_only refuses
        raise CheckpointError(f"{path} is truncated or not a packnet_edu checkpoint "
                              f"({type(err).__name__}); re-run, or use an earlier checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != kind:
        what = "checkpoint" if kind == FORMAT else "exported task model"
        raise CheckpointError(f"{path} is not a packnet_edu {what} (no '{kind}' marker)")
    version = ckpt.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version}, newer than this "
                              f"packnet_edu reads ({FORMAT_VERSION}): upgrade packnet_edu")
    stored = ckpt.get("checksum")        # files written before checksums existed have none
    if stored is not None and stored != checksum(ckpt):
        raise CheckpointError(f"{path} is corrupt: its contents do not match the checksum stored "
                              "when it was written (a damaged disk or copy?); use another copy or an "
                              "earlier checkpoint, or run again")
    return ckpt


def owner_maps(ckpt: dict) -> Dict[str, torch.Tensor]:
    """The unpacked uint8 owner maps of a checkpoint."""
    return {n: unpack_owner(e["packed"], e["shape"], e["bits"]) for n, e in ckpt["owner"].items()}


def restore_into(ckpt: dict, model: MultiHeadNet, engine: PackNet) -> None:
    """Load a checkpoint into an existing model and engine of the same architecture."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        lines = [l.strip() for l in str(err).splitlines() if l.strip()][:3]
        raise CheckpointError("the checkpoint does not fit this model (wrong architecture?): "
                              + " ".join(lines)[:500]) from None
    try:
        engine.load_state_dict(dict(ckpt["engine"], owner=owner_maps(ckpt)))
    except Exception as err:
        raise CheckpointError(f"the checkpoint's owner maps do not fit this model: {err}") from None


def _architecture(config: dict, num_classes) -> MultiHeadNet:
    """The untrained network a checkpoint's config names (weights come from the file)."""
    name = config.get("model", "small_vgg")
    kwargs = {"width": config["width"]} if name == "small_vgg" and "width" in config else {}
    return build_model(name, num_classes, **kwargs)


def restore(ckpt: Union[dict, str, Path], device: str = "cpu"):
    """(model, engine) rebuilt from a checkpoint (or its path) by the config's model name."""
    if not isinstance(ckpt, dict):
        ckpt = load(ckpt)
    model = _architecture(ckpt["config"], ckpt["num_classes"])
    engine = PackNet(model.trunk, heads=model.heads)
    restore_into(ckpt, model, engine)
    return model.to(device), engine


def export_task(model: MultiHeadNet, engine: PackNet, task: int) -> nn.Sequential:
    """Task `task` as a standalone dense network: a copy of the trunk whose
    weights of later tasks (and free ones) are zero, followed by its head.
    Needs no engine at inference; the original model is not modified."""
    import copy
    masks = engine.task_masks(task)
    if task == engine.training_task:
        raise CheckpointError(f"task {task} is still in training (the run stopped before it ended): "
                              "only finished tasks can be exported; finish the run with --resume first")
    hooks = {m: dict(m._forward_pre_hooks) for m in engine.module.modules()}
    for m in engine.module.modules():      # the engine's BatchNorm hooks stay behind
        m._forward_pre_hooks.clear()
    try:
        trunk = copy.deepcopy(engine.module)
    finally:
        for m, h in hooks.items():
            m._forward_pre_hooks.update(h)
    with torch.no_grad():
        for name, p in trunk.named_parameters():
            if name in masks:
                # masked_fill, not a product: NaN/inf in later tasks' weights times 0 is NaN
                p.masked_fill_(~masks[name].to(p.device), 0.0)
    net = nn.Sequential(trunk, copy.deepcopy(model.heads[task - 1]))
    net.eval()
    return net


EXPORT_FORMAT = "packnet_edu.export"


def check_export_target(ckpt_path: Union[str, Path], task: int, out: Union[str, Path],
                        overwrite: bool = False) -> None:
    """Refuse, before anything is read, an --out that is a folder, the
    checkpoint itself (never, even with `overwrite`), or any existing file
    (another run's checkpoint, an export, the user's file) unless `overwrite`."""
    out, src = Path(out), Path(ckpt_path)
    if out.is_dir():
        raise CheckpointError(f"--out {out} is a folder: give a file name, e.g. {out / f'task{task}.pt'}")
    if out.exists() and src.exists() and os.path.samefile(out, src):
        raise CheckpointError(f"--out {out} is the checkpoint being exported: writing there would replace "
                              f"the run's checkpoint; give another file, e.g. {out.with_name(f'task{task}.pt')}")
    if out.exists() and not overwrite:
        raise CheckpointError(f"--out {out} already exists ({describe_file(out)}): give another file, or "
                              "pass --overwrite to replace it")


def describe_file(path: Path) -> str:
    """What an existing file is, in a few words, for a refusal to replace it."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return "a file packnet_edu did not write"
    kind = blob.get("format") if isinstance(blob, dict) else None
    return {FORMAT: "a packnet_edu checkpoint", EXPORT_FORMAT: "an exported task model"}.get(
        kind, "a torch file packnet_edu did not write")


def export_task_file(ckpt_path: Union[str, Path], task: int, out: Union[str, Path],
                     overwrite: bool = False) -> Path:
    """Write task `task` of a checkpoint as a standalone model file; an existing
    `out` is replaced only with `overwrite`, the checkpoint itself never."""
    check_export_target(ckpt_path, task, out, overwrite)
    ckpt = load(ckpt_path)
    model, engine = restore(ckpt)
    try:
        net = export_task(model, engine, task)
    except Exception as err:
        raise ValueError(str(err)) from None
    return save({"format": EXPORT_FORMAT, "version": FORMAT_VERSION, "config": ckpt["config"],
                 "task": task, "task_name": ckpt["task_names"][task - 1],
                 "num_classes": ckpt["num_classes"][task - 1], "state": net.state_dict()}, out)


def load_exported(path: Union[str, Path]) -> nn.Sequential:
    """A standalone task model written by export_task_file: trunk then head, in eval mode."""
    blob = load(path, kind=EXPORT_FORMAT)
    model = _architecture(blob["config"], [blob["num_classes"]])
    net = nn.Sequential(model.trunk, model.heads[0])
    net.load_state_dict(blob["state"])
    return net.eval()
