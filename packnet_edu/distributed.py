"""PackNet across processes: `torchrun` with DistributedDataParallel.

    torchrun --nproc_per_node 8 -m packnet_edu.distributed --config paper-vgg16 --data-root DATA

Every rank holds the whole model and the whole ownership map. What changes
against one process:

- `cfg.batch_size` is per GPU: a step on N ranks sees N x batch_size images
  (each rank its own `batch_size`, the paper's 32: every GPU is fed a full
  batch, and VGG-16-BN's first task computes BatchNorm statistics over 32
  images, as on one GPU). The global batches come from the *same* seeded
  shuffle a single process uses, each split `batch[rank::world]`;
- the learning rates (`lr`, `retrain_lr`) are multiplied by N (the linear
  scaling rule, Goyal et al. 2017): the averaged gradient of N x batch_size
  images is then the single-process gradient of a batch N times larger at N
  times the lr. To keep the paper's global batch of 32 on N GPUs instead, pass
  --batch-size 32/N and the lr divided by N;
- training steps run through DDP (gradients all-reduced, so every rank takes
  the same step; the engine's post-step restore then keeps old tasks exact on
  every rank);
- evaluation is sharded and the correct counts are summed over ranks, so all
  ranks choose the same best epoch;
- after each prune and at each task's end the owner maps, weights, biases,
  heads and norm buffers are checked to be identical on all ranks (a
  checksum, all-gathered); a mismatch stops the run;
- BatchNorm's running statistics, computed per rank during task 1, are
  averaged over the ranks at task 1's end (then frozen): otherwise the next
  task's DDP wrap would broadcast rank 0's into every other rank, changing
  their task 1;
- a bad input is one line on every rank: rank 0's check of the output folder
  is shared with all ranks before anything runs, so no rank waits forever.

`train.run_packnet` is reused as it is, with a `train.Runtime` of distributed
building blocks (`loader_for`, `train_one_epoch`, `evaluate`, the engine
class). On one process the runtime is the local one and the run is exactly
run_packnet's.

BatchNorm (VGG-16-BN, ResNet-50, DenseNet-121) computes batch statistics per
rank during task 1; the paper's VGG-16 has none.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from . import train as T
from .checkpoint import checksum  # one digest of named tensors for the whole package
from .engine import PackNet, PackNetError


# ------------------------------------------------------------------ process group
def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else \
        int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_from_env(device: str = "cpu") -> str:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT, LOCAL_RANK), unless joined already. Returns the device this
    rank should use: `cuda:LOCAL_RANK` for a CUDA run (nccl), else `device` (gloo)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    cuda = device.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


# ------------------------------------------------------------------ data
class ShardedBatchSampler(torch.utils.data.Sampler):
    """Rank `rank`'s share, `batch[rank::world]`, of every batch of `batches`.
    Batches smaller than `world` are dropped (a rank would get nothing)."""

    def __init__(self, batches: BatchSampler, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __iter__(self):
        for b in self.batches:
            if len(b) >= self.world:
                yield list(b)[self.rank::self.world]

    def __len__(self) -> int:   # arithmetic: iterating would advance the shuffle's generator
        n, b = len(self.batches.sampler), self.batches.batch_size
        return n // b + (1 if n % b >= self.world else 0)


def sharded_loader(dataset, cfg: T.Config, train: bool, seed: int = 0) -> DataLoader:
    """loader_for's batches, each split between the ranks (training), or a
    strided shard of the dataset (evaluation: counts are summed afterwards)."""
    from .vgg_data import image_loader
    r, w = dist.get_rank(), dist.get_world_size()
    if train:                                    # batch_size per rank: global batches of w x batch_size
        order = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        sampler = ShardedBatchSampler(BatchSampler(order, cfg.batch_size * w, drop_last=False), r, w)
    else:
        indices = list(range(r, len(dataset), w))
        sampler = BatchSampler(indices, max(cfg.batch_size, 256), drop_last=False)
    if isinstance(dataset, TensorDataset):       # slice the tensors, one op per batch
        return DataLoader(dataset, batch_size=None, sampler=sampler)
    return image_loader(dataset, workers=cfg.workers, device=cfg.device, batch_sampler=sampler)


# ------------------------------------------------------------------ model and evaluation
def wrap_ddp(model: torch.nn.Module, task: int, device: str):
    """`model` in DDP for training head `task`: the other heads get no gradient
    in this phase, so they are left out of DDP's gradient buckets."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    others = [p for k, h in enumerate(model.heads, start=1) if k != task for p in h.parameters()]
    flags = [p.requires_grad for p in others]
    for p in others:
        p.requires_grad_(False)
    try:
        ids = [torch.device(device).index] if device.startswith("cuda") else None
        return DDP(model, device_ids=ids)   # buffers (BatchNorm statistics) follow rank 0
    finally:
        for p, f in zip(others, flags):
            p.requires_grad_(f)


def _train_one_epoch(model, task, optimizer, loader, device="cpu", desc="train", amp=False):
    ddp = wrap_ddp(model, task, device)
    return T.train_one_epoch(ddp, task, optimizer, loader, device, desc, amp)


def _evaluate(model, task, loader, device="cpu", amp=False):
    """Top-1 accuracy (%) over all ranks' shards (sums of counts, then one division)."""
    counts = torch.tensor(T.count_correct(model, task, loader, device, amp), dtype=torch.float64)
    if device.startswith("cuda"):
        counts = counts.to(device)
    dist.all_reduce(counts)
    correct, count = counts.tolist()
    return 100.0 * correct / max(count, 1)


# ------------------------------------------------------------------ ownership
def all_checksums(tensors: Dict[str, torch.Tensor]) -> List[str]:
    """Every rank's checksum of `tensors` (one entry on a single process)."""
    mine = checksum(tensors)
    if not active():
        return [mine]
    out: List[Optional[str]] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


def replicated_state(engine: PackNet) -> Dict[str, torch.Tensor]:
    """Everything that must be identical on every rank: owner maps, every
    parameter of the trunk and heads, and every buffer (norm statistics)."""
    heads = {f"heads.{k}.{n}": p for k, h in enumerate(engine.heads) for n, p in h.named_parameters()}
    return {**{f"owner/{k}": v for k, v in engine.owner.items()},
            **{f"param/{k}": v for k, v in engine.module.named_parameters()},
            **{f"param/{k}": v for k, v in heads.items()},
            **{f"buffer/{k}": v for k, v in engine.module.named_buffers()}}


def check_identical(engine: PackNet, what: str = "owner maps") -> None:
    """Raise if the owner maps, parameters or buffers differ between ranks."""
    sums = all_checksums(replicated_state(engine))
    if len(set(sums)) > 1:
        raise PackNetError(f"{what} differ between ranks (checksums {[s[:12] for s in sums]}): the ranks "
                           "trained on different data or weights; every rank must start from the same model")


@torch.no_grad()
def average_norm_buffers(buffers) -> None:
    """Make every rank's norm statistics the mean over the ranks (bit-identical
    everywhere: rank 0's result is broadcast)."""
    for b in buffers:
        if b.dtype.is_floating_point:
            dist.all_reduce(b)
            b.div_(dist.get_world_size())
        dist.broadcast(b, src=0)


class DistributedPackNet(PackNet):
    """PackNet whose phase calls keep every rank identical: prune checks that
    every rank chose the same weights (identical weights give identical masks);
    end_task averages task 1's norm statistics over the ranks and checks
    everything, buffers included."""

    def _average_task1_statistics(self) -> None:
        if active() and self.training_task == 1:     # still task 1's: not frozen yet
            average_norm_buffers(self.norm_buffers().values())

    def prune(self, ratio: float):
        released = super().prune(ratio)
        self._average_task1_statistics()
        check_identical(self, f"after prune({ratio}), the owner maps")
        return released

    def end_task(self) -> int:
        self._average_task1_statistics()
        done = super().end_task()
        if active():
            check_identical(self, f"at the end of task {done}, the model")
        return done


def distributed_runtime(build_model: Optional[Callable] = None) -> T.Runtime:
    """run_packnet's building blocks for this process: data-parallel ones when a
    process group of more than one process is initialised, the local ones
    otherwise. `build_model(num_classes)` replaces the model that `cfg.model`
    names (tests and fast mode use `replicas.tiny_vgg16`)."""
    parts = {}
    if active():
        parts.update(loader_for=sharded_loader, train_one_epoch=_train_one_epoch,
                     evaluate=_evaluate, engine_class=DistributedPackNet)
    if build_model is not None:
        def make_model(cfg, num_classes):
            torch.manual_seed(cfg.seed)
            return build_model(num_classes).to(cfg.device)
        parts["make_model"] = make_model
    return T.Runtime(**parts)


def scaled_for_world(cfg: T.Config, world: int) -> T.Config:
    """`cfg` for `world` ranks of `cfg.batch_size` images each: the learning
    rates multiplied by `world` (the linear scaling rule); unchanged for one."""
    import dataclasses
    if world <= 1:
        return cfg
    return dataclasses.replace(cfg, lr=cfg.lr * world, retrain_lr=cfg.retrain_lr * world)


def _on_this_rank(cfg: T.Config) -> T.Config:
    """Join the process group torchrun describes; this rank's device in cfg,
    the learning rates scaled to the number of ranks."""
    import dataclasses
    device = init_from_env(cfg.device)
    cfg = cfg if device == cfg.device else dataclasses.replace(cfg, device=device)
    return scaled_for_world(cfg, world_size())


def run_packnet_distributed(cfg: T.Config, tasks: Optional[Sequence] = None,
                            build_model: Optional[Callable] = None, **kwargs) -> dict:
    """train.run_packnet on every rank of the current process group (or on
    one process, unchanged, when there is none). Joins the group torchrun
    describes if it is not joined yet. Only rank 0 prints."""
    cfg = _on_this_rank(cfg)
    kwargs.setdefault("verbose", rank() == 0)
    result = T.run_packnet(cfg, tasks, runtime=distributed_runtime(build_model), **kwargs)
    if active():
        check_identical(result["engine"], "at the end of the run, owner maps or weights")
    return result


# ------------------------------------------------------------------ command line
def run_to(cfg: T.Config, out, resume: bool = False, overwrite: bool = False) -> dict:
    """experiments.run_packnet_to under torchrun: every rank trains and reads
    the checkpoint to resume; only rank 0 writes checkpoints and results."""
    from pathlib import Path

    from .experiments import run_packnet_to
    cfg = _on_this_rank(cfg)
    result = run_packnet_to(cfg, Path(out), resume, runtime=distributed_runtime(), write=rank() == 0,
                            overwrite=overwrite)
    if active():
        check_identical(result["engine"], "at the end of the run, owner maps or weights")
    return result


def user_errors() -> tuple:
    """The exceptions that describe a wrong input, not a bug: shown as one line."""
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataMissingError
    return (ConfigError, PackNetError, CheckpointError, DataMissingError)


def agree_on_errors(error: Optional[str]) -> Optional[str]:
    """Every rank's error (or None), shared: the first one found, on every rank."""
    if not active():
        return error
    errors: List[Optional[str]] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    return next((e for e in errors if e is not None), None)


def main(argv: Optional[List[str]] = None) -> int:
    """`torchrun --nproc_per_node N -m packnet_edu.distributed [run flags]`."""
    import argparse
    from pathlib import Path

    from .config import add_config_flags, config_from_args
    from .experiments import check_run_folder
    from .presets import PRESETS
    parser = argparse.ArgumentParser(prog="torchrun ... -m packnet_edu.distributed",
                                     description="PackNet with DistributedDataParallel (one process per GPU)")
    add_config_flags(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/packnet"))
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in OUT (its checkpoint and results only)")
    args = parser.parse_args(argv)          # the same flags on every rank: every rank stops alike
    if rank() != 0:
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        cfg = config_from_args(args, PRESETS)
        init_from_env(cfg.device)
        error = None
        if rank() == 0:                     # only rank 0 judges the folder (it alone writes)
            try:
                check_run_folder(args.out, args.resume, args.overwrite)
            except user_errors() as err:
                error = str(err)
        error = agree_on_errors(error)
        if error is not None:
            raise PackNetError(error)
        run_to(cfg, args.out, args.resume, args.overwrite)
    except user_errors() as err:
        print(f"error: {err}" + (f" (rank {rank()})" if rank() else ""), file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
