"""Command line: `python -m packnet_edu {run,info,...} --help`.

Every field of `train.Config` is a flag (or a key of a JSON `--config` file),
so no hyperparameter is hard-coded here.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import List, Optional

from .train import Config


def parse_prune(text: str):
    """'paper', 'equal', '0.75' or '0.5,0.75,0.75,0'."""
    if text in ("paper", "equal"):
        return text
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--prune {text!r}: use 'paper', 'equal', a ratio such as 0.75, or one per task: 0.5,0.75,0.75,0")
    return values[0] if len(values) == 1 else values


def _optional_int(text: str) -> Optional[int]:
    return None if text.lower() in ("none", "all") else int(text)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field, default None (= keep the config file's or default value)."""
    parser.add_argument("--config", help="a named preset (paper-vgg16, paper-vgg16-bn) or a JSON file "
                                         "of Config fields; flags override it")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        kwargs = {"default": None, "help": f"(default: {default})"}
        if f.name == "tasks":
            kwargs.update(nargs="+")
        elif f.name == "prune":
            kwargs.update(type=parse_prune, help="'paper' (0.5, 0.75, ..., last 0), 'equal' (1 - 1/(T - t)), "
                                                 "a ratio, or a comma list, one per task (default: paper)")
        elif f.name in ("max_train", "lr_step", "first_task_epochs"):
            kwargs.update(type=_optional_int)
        elif isinstance(default, bool):
            kwargs.update(type=lambda s: s.lower() in ("1", "true", "yes"))
        elif isinstance(default, (int, float, str)):
            kwargs.update(type=type(default))
        parser.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> Config:
    values = {}
    name = getattr(args, "config", None)
    if name:
        presets = _presets()
        if name in presets:
            values = presets[name].to_dict()
        else:
            try:
                values = json.loads(Path(name).read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise SystemExit(f"error: --config {name} is neither a preset ({', '.join(presets) or 'none'}) "
                                 f"nor a readable JSON file: {err}")
        unknown = set(values) - {f.name for f in dataclasses.fields(Config)}
        if unknown:
            raise SystemExit(f"error: unknown keys in {args.config}: {sorted(unknown)}; "
                             f"valid keys: {[f.name for f in dataclasses.fields(Config)]}")
    for f in dataclasses.fields(Config):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return Config(**values)


def _presets() -> dict:
    from .presets import PRESETS      # imported late: presets imports train
    return PRESETS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m packnet_edu", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train PackNet on a task sequence; print and save the results")
    add_config_flags(run)
    run.add_argument("--out", type=Path, default=Path("runs/packnet"), help="output folder")
    run.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    run.set_defaults(func=cmd_run)

    from .baselines import METHODS
    from .experiments import compare_cli, report_cli
    comp = sub.add_parser("compare", help="every method (PackNet and its baselines) on the same tasks; "
                                          "writes results.json, matrices.csv, report.md and figures")
    add_config_flags(comp)
    comp.add_argument("--methods", nargs="+", choices=METHODS, default=None, help="default: all")
    comp.add_argument("--sweep", default="0.25,0.5,0.75,0.9",
                      help="prune ratios for the accuracy-against-ratio curve ('none' to skip)")
    comp.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder")
    comp.set_defaults(func=compare_cli)

    rep = sub.add_parser("report", help="rewrite report.md and figures from a results.json")
    rep.add_argument("results", type=Path, help="results.json or the folder holding it")
    rep.set_defaults(func=report_cli)

    exp = sub.add_parser("export", help="save one task as a standalone dense model (its weights and head)")
    exp.add_argument("checkpoint", type=Path)
    exp.add_argument("--task", type=int, required=True, help="task id (1-based)")
    exp.add_argument("--out", type=Path, required=True, help="file to write")
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
        distributed.run_to(config_from_args(args), args.out, args.resume)
        return 0
    from .experiments import run_method_packnet_cli
    return run_method_packnet_cli(config_from_args(args), args.out, args.resume)


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
    print(f"tasks: {', '.join(ckpt['task_names'][:ckpt['engine']['num_tasks']])} "
          f"({ckpt['engine']['num_tasks']} trained of {len(ckpt['task_names'])})")
    print(f"model: {ckpt['config'].get('model')}, {n:,} packed weights; owner maps stored with "
          f"{bits} bit(s) per weight ({bits / 8:.3f} bytes; the original PackNet stores 1 byte)")
    print(ownership_table(owner, ckpt["task_names"]))
    return 0


def cmd_export(args) -> int:
    from . import checkpoint as ck
    try:
        path = ck.export_task_file(args.checkpoint, args.task, args.out)
    except (ck.CheckpointError, ValueError) as err:
        raise SystemExit(f"error: {err}")
    print(f"wrote task {args.task} as a standalone model to {path} "
          f"(load with packnet_edu.checkpoint.load_exported)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
