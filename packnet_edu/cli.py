"""Command line: `python -m packnet_edu {run,info,...} --help`.

Every field of `train.Config` is a flag (or a key of a JSON `--config` file),
so no hyperparameter is hard-coded here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from . import config
from .config import Config, add_config_flags
from .distributed import user_errors     # the one list of bad-input exceptions (torchrun uses it too)


def config_from_args(args: argparse.Namespace) -> Config:
    """The run's Config from its flags and --config (a preset name or a JSON file)."""
    from .presets import PRESETS
    return config.config_from_args(args, PRESETS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m packnet_edu", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train PackNet on a task sequence; print and save the results")
    add_config_flags(run)
    run.add_argument("--out", type=Path, default=Path("runs/packnet"), help="output folder")
    run.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    run.add_argument("--overwrite", action="store_true",
                     help="replace a run already in OUT (only its checkpoint.pt and results.json)")
    run.set_defaults(func=cmd_run)

    from .baselines import METHODS
    from .experiments import compare_cli, report_cli
    comp = sub.add_parser("compare", help="every method (PackNet and its baselines) on the same tasks; "
                                          "writes results.json, matrices.csv, report.md and figures")
    add_config_flags(comp)
    comp.add_argument("--methods", nargs="+", choices=METHODS, default=None, help="default: all")
    comp.add_argument("--sweep", default=None,
                      help="prune ratios for the accuracy-against-ratio curve ('none' to skip; default "
                           "0.25,0.5,0.75,0.9, none for a single task)")
    comp.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder")
    comp.add_argument("--overwrite", action="store_true",
                      help="replace a comparison already in OUT (its report files and packnet/ run)")
    comp.set_defaults(func=lambda a: compare_cli(a, config_from_args(a)))

    rep = sub.add_parser("report", help="rewrite report.md and figures from a results.json")
    rep.add_argument("results", type=Path, help="results.json or the folder holding it")
    rep.set_defaults(func=report_cli)

    exp = sub.add_parser("export", help="save one task as a standalone dense model (its weights and head)")
    exp.add_argument("checkpoint", type=Path)
    exp.add_argument("--task", type=int, required=True, help="task id (1-based)")
    exp.add_argument("--out", type=Path, required=True, help="file to write (never the checkpoint itself)")
    exp.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    exp.set_defaults(func=cmd_export)

    info = sub.add_parser("info", help="describe a checkpoint: tasks, ownership per layer, bytes per weight")
    info.add_argument("checkpoint", type=Path)
    info.set_defaults(func=cmd_info)

    from .bench import add_bench_command
    from .vgg_data import add_data_command
    add_bench_command(sub)
    add_data_command(sub)
    return parser


def cmd_run(args) -> int:
    from . import distributed
    if distributed.world_size() > 1:          # started by torchrun: DistributedDataParallel
        distributed.run_to(config_from_args(args), args.out, args.resume, args.overwrite)
        return 0
    from .experiments import run_method_packnet_cli
    return run_method_packnet_cli(config_from_args(args), args.out, args.resume, args.overwrite)


def cmd_info(args) -> int:
    from . import checkpoint as ck
    from .report import ownership_table
    try:
        ckpt = ck.load(args.checkpoint)
    except ck.CheckpointError as err:
        raise SystemExit(f"error: {err}")
    owner = ck.owner_maps(ckpt)
    n = sum(o.numel() for o in owner.values())
    bits = next(iter(ckpt["owner"].values()))["bits"]
    print(f"checkpoint {args.checkpoint} (format version {ckpt['version']})")
    started, training = ckpt["engine"]["num_tasks"], ckpt["engine"]["training_task"]
    done = started - (1 if training else 0)
    print(f"tasks: {', '.join(ckpt['task_names'][:done]) or 'none'} "
          f"({done} trained of {len(ckpt['task_names'])}"
          + (f"; task {training} {ckpt['task_names'][training - 1]} was in training when it was saved)"
             if training else ")"))
    print(f"model: {ckpt['config'].get('model')}, {n:,} packed weights; owner maps stored with "
          f"{bits} bit(s) per weight ({bits / 8:.3f} bytes; the original PackNet stores 1 byte)")
    print(ownership_table(owner, ckpt["task_names"]))
    return 0


def cmd_export(args) -> int:
    from . import checkpoint as ck
    try:
        path = ck.export_task_file(args.checkpoint, args.task, args.out, args.overwrite)
    except (ck.CheckpointError, ValueError) as err:
        raise SystemExit(f"error: {err}")
    print(f"wrote task {args.task} as a standalone model to {path} "
          f"(load with packnet_edu.checkpoint.load_exported)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except user_errors() as err:
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        resumable = getattr(args, "resume", None) is not None
        raise SystemExit("interrupted" + ("; continue with the same command and --resume" if resumable else "")) \
            from None
    except OSError as err:       # disk full, no permission, ...: say which file and why
        where = f" ({err.filename})" if err.filename else ""
        raise SystemExit(f"error: {err.strerror or err}{where}") from None


if __name__ == "__main__":
    sys.exit(main())
