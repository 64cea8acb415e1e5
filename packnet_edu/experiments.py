"""Runs that write results to an output folder: PackNet with checkpoints and resume."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from . import checkpoint as ck
from .report import accuracy_table, ownership_table
from .train import Config, run_packnet


def run_packnet_to(cfg: Config, out: Path, resume: bool = False, verbose: bool = True) -> dict:
    """run_packnet with a checkpoint after every phase (OUT/checkpoint.pt, atomic)
    and results in OUT/results.json. With `resume`, continues from the checkpoint."""
    out = Path(out)
    path = out / "checkpoint.pt"
    resume_from = None
    if resume:
        ckpt = ck.load(path)
        if ckpt.get("progress") is None:
            raise SystemExit(f"error: {path} holds a finished run; nothing to resume")
        if ckpt["config"] != cfg.to_dict():
            changed = sorted(k for k in ckpt["config"] if ckpt["config"][k] != cfg.to_dict().get(k))
            raise SystemExit(f"error: --resume with a different config (changed: {changed}); "
                             "use the same flags as the interrupted run")
        resume_from = dict(ckpt["progress"], model=ckpt["model"],
                           engine=dict(ckpt["engine"], owner=ck.owner_maps(ckpt)))
        if verbose:
            print(f"resuming from {path}: task {resume_from['task']} after phase '{resume_from['phase']}'")

    def save_phase(progress: dict, model, engine, task_names) -> None:
        ck.save(ck.make_checkpoint(model, engine, cfg.to_dict(), task_names, progress), path)

    result = run_packnet(cfg, on_phase_end=save_phase, resume_from=resume_from, verbose=verbose)
    final = ck.make_checkpoint(result["model"], result["engine"], cfg.to_dict(), result["task_names"])
    ck.save(final, path)
    summary = {k: result[k] for k in ("config", "task_names", "ratios", "matrix", "val",
                                      "outputs_identical", "owned", "seconds")}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    return result


def run_method_packnet_cli(cfg: Config, out: Path, resume: bool) -> int:
    t0 = time.time()
    result = run_packnet_to(cfg, out, resume)
    print()
    print("Test accuracy (%) of each task, PackNet:")
    print(accuracy_table(result["task_names"], result["matrix"], result["outputs_identical"]))
    print()
    print("Weights each task owns, per layer (count and share):")
    print(ownership_table(result["engine"].owner, result["task_names"]))
    print(f"\nwrote {out}/checkpoint.pt and {out}/results.json in {time.time() - t0:.0f}s")
    return 0
