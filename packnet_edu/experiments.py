"""Runs that write results to an output folder: PackNet with checkpoints and resume.

An output folder has one writer at a time (fileio.FolderLock on OUT/.lock)
and every file in it is written atomically. A folder holding a run is never
silently reused: a finished run is refused unless `overwrite`, an
interrupted one is continued with `resume` (or restarted with `overwrite`).
`overwrite` only ever replaces the files a run writes (checkpoint.pt,
results.json); nothing else in the folder is touched. `run` and `compare`
never replace each other's folders, whatever the flags. A finished run's
checkpoint holds its results too, so `resume` rewrites a lost or cut-off
results.json from it without training.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from . import checkpoint as ck
from .config import ConfigError
from .fileio import FolderLock, atomic_write, remove_leftover_temp_files
from .report import accuracy_table, ownership_table
from .train import LOCAL, Config, Runtime, run_packnet

RUN_FILES = ("checkpoint.pt", "results.json")
REPORT_FILES = ("results.json", "matrices.csv", "report.md")


class RunFolderError(ConfigError):
    """An output folder that cannot be used as asked; the message says what to do."""


class ThreadCountWarning(UserWarning):
    """A run resumed with another CPU thread count than it was checkpointed with."""


def _write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1))


def results_kind(path: Path) -> Optional[str]:
    """What a results.json is: None (no file), 'comparison' (written by
    `compare`), 'run' (written by `run`) or 'unreadable' (cut off, damaged)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "unreadable"
    if not isinstance(results, dict):
        return "unreadable"
    return "comparison" if "methods" in results else "run" if "matrix" in results else "unreadable"


def run_folder_state(out: Path) -> str:
    """'new', 'interrupted' (a checkpoint with progress), 'finished',
    'unreadable' (a checkpoint.pt that does not load) or 'comparison' (the
    folder holds what `compare` wrote, not a run)."""
    out = Path(out)
    if results_kind(out / "results.json") == "comparison":
        return "comparison"
    if not (out / "checkpoint.pt").exists():
        return "finished" if (out / "results.json").exists() else "new"
    try:
        ckpt = ck.load(out / "checkpoint.pt")
    except ck.CheckpointError:
        return "unreadable"
    return "finished" if ckpt.get("progress") is None else "interrupted"


def check_run_folder(out: Path, resume: bool = False, overwrite: bool = False) -> str:
    """Refuse, before any training, a folder that holds a run the user did not
    say to continue (`resume`) or replace (`overwrite`), and a comparison's
    folder whatever the flags. Returns its state."""
    out = Path(out)
    state = run_folder_state(out)
    if resume and overwrite:
        raise RunFolderError("--resume continues the run in the folder, --overwrite starts it again: "
                             "pass one of them")
    if state == "comparison":         # --overwrite replaces a run, never another command's results
        raise RunFolderError(f"{out} holds a comparison (its results.json was written by `compare`), not a "
                             f"run: `run` would replace it; choose another --out (the comparison's PackNet "
                             f"run is in {out / 'packnet'})")
    if resume:
        if not (out / "checkpoint.pt").exists():
            raise RunFolderError(f"--resume: no checkpoint in {out} ({out / 'checkpoint.pt'} is missing), "
                                 "so nothing to resume; run without --resume to start"
                                 + (" (or with --overwrite to replace its results.json)" if state != "new" else ""))
        if state == "finished" and results_kind(out / "results.json") == "run":
            raise RunFolderError(f"{out / 'checkpoint.pt'} holds a finished run; nothing to resume "
                                 "(its results are in results.json; --overwrite runs it again)")
        if state == "unreadable":
            try:
                ck.load(out / "checkpoint.pt")
            except ck.CheckpointError as err:     # say why, and how to start again
                raise ck.CheckpointError(f"--resume: {err}; or start the run again with --overwrite "
                                         "instead of --resume") from None
    elif state != "new" and not overwrite:
        what = {"finished": "a finished run", "interrupted": "an interrupted run (continue it with --resume)",
                "unreadable": "an unreadable checkpoint.pt"}[state]
        raise RunFolderError(f"{out} already holds {what}: choose another --out, or pass --overwrite to "
                             "replace its checkpoint.pt and results.json")
    return state


def config_changes(saved: dict, now: dict) -> List[str]:
    """The fields in which two configs differ, each 'field: saved -> now'; a
    field one of them lacks (written by another packnet_edu version) counts."""
    def shown(d: dict, k: str) -> str:
        return repr(d[k]) if k in d else "(not recorded)"
    return [f"{k}: {shown(saved, k)} -> {shown(now, k)}" for k in sorted(set(saved) | set(now))
            if k not in saved or k not in now or saved[k] != now[k]]


def _warn_thread_count(ckpt: dict, cfg: Config) -> None:
    saved, now = ckpt.get("threads"), torch.get_num_threads()
    if saved is not None and saved != now and str(cfg.device).startswith("cpu"):
        warnings.warn(f"this run was checkpointed with {saved} CPU threads and resumes with {now}: "
                      "CPU results depend on the thread count, so the result may differ slightly from an "
                      f"uninterrupted run; resume with OMP_NUM_THREADS={saved} to match it",
                      ThreadCountWarning, stacklevel=3)


def run_packnet_to(cfg: Config, out: Path, resume: bool = False, verbose: bool = True,
                   runtime: Runtime = LOCAL, write: bool = True, overwrite: bool = False) -> dict:
    """run_packnet with a checkpoint after every phase (OUT/checkpoint.pt, atomic)
    and results in OUT/results.json. With `resume`, continues from the checkpoint;
    `overwrite` replaces a run already in OUT. The folder is checked (and locked)
    before any training. `write=False` (the other ranks of a distributed run)
    reads but never writes."""
    out = Path(out)
    if resume and not (out / "checkpoint.pt").exists():
        check_run_folder(out, resume, overwrite)    # raises: no folder created for nothing
    lock = FolderLock(out, "packnet_edu run").acquire() if write else None
    try:
        return _run_locked(cfg, out, resume, verbose, runtime, write, overwrite)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(cfg, out: Path, resume, verbose, runtime, write, overwrite) -> dict:
    path = out / "checkpoint.pt"
    if write:
        remove_leftover_temp_files(out, RUN_FILES)      # from a process killed mid-write
    # Only the writer judges the folder: other ranks of a distributed run would
    # race rank 0's first checkpoint or rewritten results.json (they still read
    # the checkpoint to resume).
    state = check_run_folder(out, resume, overwrite) if write else run_folder_state(out) if resume else "new"
    resume_from = None
    if resume:
        ckpt = ck.load(path)
        changed = config_changes(ckpt["config"], cfg.to_dict())
        if changed:
            raise RunFolderError(f"--resume with a different config ({'; '.join(changed)}): use the same "
                                 "flags as the interrupted run, or start again with --overwrite")
        if state == "finished":           # results.json missing or cut off: rewritten, nothing trained
            return _results_from_checkpoint(ckpt, out, write, verbose)
        _warn_thread_count(ckpt, cfg)
        resume_from = dict(ckpt["progress"], model=ckpt["model"],
                           engine=dict(ckpt["engine"], owner=ck.owner_maps(ckpt)))
        if verbose:
            print(f"resuming from {path}: task {resume_from['task']} after phase '{resume_from['phase']}'")
    elif write and state != "new":          # overwrite: the old run's files go first, so the folder
        for name in RUN_FILES:              # never pairs a new checkpoint with old results
            (out / name).unlink(missing_ok=True)

    def save_phase(progress: dict, model, engine, task_names) -> None:
        ck.save(ck.make_checkpoint(model, engine, cfg.to_dict(), task_names, progress), path)

    result = run_packnet(cfg, on_phase_end=save_phase if write else None, resume_from=resume_from,
                         verbose=verbose and write, runtime=runtime)
    if not write:
        return result
    summary = {k: result[k] for k in ("config", "task_names", "ratios", "matrix", "val",
                                      "outputs_identical", "owned", "seconds")}
    summary["threads"] = torch.get_num_threads()
    # The final checkpoint holds the summary too, and is written first: killed
    # before results.json (or with results.json lost later), --resume rewrites
    # it from the checkpoint without training.
    ck.save(ck.make_checkpoint(result["model"], result["engine"], cfg.to_dict(), result["task_names"],
                               results=summary), path)
    _write_json(out / "results.json", summary)
    return result


def _results_from_checkpoint(ckpt: dict, out: Path, write: bool, verbose: bool) -> dict:
    """A finished run's results.json rewritten from its checkpoint; returns
    what run_packnet would (but the tasks), the model and engine restored."""
    summary = ckpt.get("results")
    if summary is None:
        raise RunFolderError(f"{out / 'checkpoint.pt'} holds a finished run but {out / 'results.json'} is "
                             "missing or damaged, and this checkpoint (from an older packnet_edu) does not "
                             "hold the results to rewrite it: run it again with --overwrite")
    if write:
        _write_json(out / "results.json", summary)
    if verbose and write:
        print(f"{out / 'checkpoint.pt'} holds a finished run: {out / 'results.json'} rewritten from it "
              "(nothing trained)")
    model, engine = ck.restore(ckpt)
    return dict(summary, model=model, engine=engine, rewritten=True)


def run_method_packnet_cli(cfg: Config, out: Path, resume: bool, overwrite: bool = False) -> int:
    t0 = time.time()
    try:
        result = run_packnet_to(cfg, out, resume, overwrite=overwrite)
    except RunFolderError as err:
        raise SystemExit(f"error: {err}") from None
    print()
    print("Test accuracy (%) of each task, PackNet:")
    print(accuracy_table(result["task_names"], result["matrix"], result["outputs_identical"]))
    print()
    print("Weights each task owns, per layer (count and share):")
    print(ownership_table(result["engine"].owner, result["task_names"]))
    wrote = f"{out}/results.json" if result.get("rewritten") else f"{out}/checkpoint.pt and {out}/results.json"
    print(f"\nwrote {wrote} in {time.time() - t0:.0f}s")
    return 0

def parse_sweep(text: str) -> list:
    """compare's --sweep: 'none' (or '') or comma-separated prune ratios in [0, 1)."""
    if text.strip().lower() in ("", "none"):
        return []
    try:
        ratios = [float(r) for r in text.split(",")]
    except ValueError:
        ratios = None
    if ratios is None or not all(0.0 <= r < 1.0 for r in ratios):
        raise RunFolderError(f"--sweep {text!r}: give prune ratios in [0, 1) separated by commas, "
                             "e.g. 0.25,0.5,0.75, or 'none'")
    return ratios


DEFAULT_SWEEP = (0.25, 0.5, 0.75, 0.9)


def compare(cfg: Config, out: Path, methods=None, sweep: Optional[Sequence[float]] = None,
            verbose: bool = True, overwrite: bool = False) -> dict:
    """Every method on the same tasks and budget; writes OUT/results.json,
    OUT/matrices.csv, OUT/report.md and figures. PackNet's run is checkpointed
    (OUT/packnet/checkpoint.pt) and its forgetting checked bit for bit.
    Every argument and the output folders are checked before any training."""
    from .baselines import METHODS, network_memory, run_method
    from .metrics import average_accuracy, capacity_shares
    from .train import load_tasks, prune_schedule
    methods = list(methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise RunFolderError(f"unknown method(s) {unknown}: choose from {', '.join(METHODS)}")
    if sweep is None:                     # one task: nothing to sweep (it is never pruned)
        sweep = DEFAULT_SWEEP if len(cfg.tasks) > 1 else ()
    sweep = [float(r) for r in sweep]
    if sweep and len(cfg.tasks) < 2:      # the last task is never pruned: a sweep would vary nothing
        raise RunFolderError(f"--sweep {','.join(f'{r:g}' for r in sweep)} with one task: the last task is "
                             "never pruned, so every ratio would give the same unpruned run; pass "
                             "--sweep none, or two or more --tasks")
    sweep_cfgs = [Config(**dict(cfg.to_dict(), prune=r)) for r in sweep]    # invalid ratios fail here,
    for c in sweep_cfgs:                                                    # not after the training
        prune_schedule(c.prune, len(cfg.tasks))
    out = Path(out)
    with FolderLock(out, "packnet_edu compare"):
        remove_leftover_temp_files(out, REPORT_FILES)
        check_comparison_folder(out, overwrite)
        if "packnet" in methods:
            check_run_folder(out / "packnet", overwrite=overwrite)
        (out / "results.json").unlink(missing_ok=True)    # overwrite: no old report beside new runs
        tasks = load_tasks(cfg)
        results = {"config": cfg.to_dict(), "task_names": [t.name for t in tasks], "methods": {}, "sweep": []}
        for m in methods:
            t0 = time.time()
            if m == "packnet":
                r = run_packnet_to(cfg, out / "packnet", verbose=False, overwrite=overwrite)
                entry = {k: r[k] for k in ("matrix", "ratios", "outputs_identical")}
                entry.update(shares=capacity_shares(r["owned"], len(tasks)), owned=r["owned"],
                             mask_bits=ck.bits_for(r["engine"].num_tasks),
                             memory=network_memory(r["model"], engine=r["engine"]))
            else:
                entry = {k: v for k, v in run_method(m, cfg, tasks).items() if k in ("matrix", "memory")}
            entry["seconds"] = time.time() - t0
            results["methods"][m] = entry
            if verbose:
                print(f"{m:>16}: average accuracy {average_accuracy(entry['matrix']):6.2f}%  ({entry['seconds']:.0f}s)")
        for ratio, c in zip(sweep, sweep_cfgs):
            r = run_method("packnet", c, tasks)
            results["sweep"].append((ratio, average_accuracy(r["matrix"])))
            if verbose:
                print(f"  packnet prune {ratio:g}: average accuracy {results['sweep'][-1][1]:6.2f}%")
        write_report(results, out)
    return results


def check_comparison_folder(out: Path, overwrite: bool) -> None:
    """Refuse a folder holding a comparison (finished, or stopped before its
    results.json) unless `overwrite`, and one holding a `run` whatever the flags."""
    kind = results_kind(out / "results.json")
    if kind == "run" or (out / "checkpoint.pt").exists():
        raise RunFolderError(f"{out} holds a run of `run` (checkpoint.pt, results.json), not a comparison: "
                             "`compare` would replace its results.json; choose another --out")
    if overwrite:
        return
    if kind is not None:
        raise RunFolderError(f"{out} already holds a comparison (results.json): choose another --out, "
                             "or pass --overwrite to replace its report files and packnet/ run")
    if run_folder_state(out / "packnet") != "new":     # killed mid-way: compare cannot continue it
        raise RunFolderError(f"{out} holds a comparison that stopped before it finished ({out / 'packnet'} "
                             "holds its PackNet run, results.json is missing); `compare` has no --resume: "
                             "pass --overwrite to run the comparison again, or choose another --out")


def write_report(results: dict, out: Path) -> None:
    """results.json, matrices.csv, figures and report.md in `out` (each atomically)."""
    from .report import comparison_markdown, matrices_csv
    out = Path(out)
    results["figures"] = comparison_figures(results, out)
    atomic_write(out / "matrices.csv", matrices_csv(results))
    atomic_write(out / "report.md", comparison_markdown(results))
    _write_json(out / "results.json", results)        # last: its presence means the report is complete


def comparison_figures(results: dict, out: Path) -> list:
    """Accuracy-matrix heatmaps of every method and accuracy against prune ratio."""
    from matplotlib.figure import Figure      # no pyplot: no backend, no global figure state
    from .metrics import average_accuracy
    from .plots import accuracy_matrix_heatmap, save_figure, task_color
    from .report import METHOD_TITLES
    names = results["task_names"]
    files = []
    for m, r in results["methods"].items():
        if len(r["matrix"]) > 1:
            fig = accuracy_matrix_heatmap(r["matrix"], names, title=m)
            save_figure(fig, out / f"matrix_{m}")
            files.append(f"matrix_{m}.png")
    if results.get("sweep"):
        ratios, accs = zip(*results["sweep"])
        fig = Figure(figsize=(6.5, 4.2), layout="constrained")
        ax = fig.subplots()
        ax.plot(ratios, accs, "-o", color=task_color(1), lw=2.5, ms=7, label="PackNet")
        for m, style in (("individual", "--"), ("finetune", ":")):
            if m in results["methods"]:
                ax.axhline(average_accuracy(results["methods"][m]["matrix"]), ls=style, color="#555555",
                           label=METHOD_TITLES[m])
        ax.set(xlabel="prune ratio (every task but the last)", ylabel="average test accuracy (%)",
               title="PackNet: average accuracy after all tasks against prune ratio")
        ax.legend(frameon=False)
        save_figure(fig, out / "accuracy_vs_ratio")
        files.append("accuracy_vs_ratio.png")
    return files


def compare_cli(args, cfg: Config) -> int:
    t0 = time.time()
    try:
        sweep = None if args.sweep is None else parse_sweep(args.sweep)
        compare(cfg, args.out, args.methods, sweep, overwrite=getattr(args, "overwrite", False))
    except RunFolderError as err:
        raise SystemExit(f"error: {err}") from None
    print((Path(args.out) / "report.md").read_text())
    print(f"wrote {args.out}/report.md, results.json, matrices.csv in {time.time() - t0:.0f}s")
    return 0


def read_comparison(path: Path) -> dict:
    """The results.json `compare` wrote (or the folder holding it), checked."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFolderError(f"cannot read {path}: {err}; pass the results.json that `compare` wrote") from None
    if isinstance(results, dict) and "matrix" in results and "methods" not in results:
        raise RunFolderError(f"{path} holds the results of `run` (PackNet alone), not of `compare`: "
                             "`report` rewrites a comparison; pass the results.json that `compare` wrote "
                             "(`python -m packnet_edu info` describes a run's checkpoint)")
    if not (isinstance(results, dict) and isinstance(results.get("methods"), dict)
            and isinstance(results.get("task_names"), list) and "config" in results):
        raise RunFolderError(f"{path} is not a comparison's results.json (it needs 'config', 'task_names' "
                             "and 'methods'); pass the results.json that `compare` wrote")
    return results


def report_cli(args) -> int:
    try:
        results = read_comparison(args.results)
        out = Path(args.results) if Path(args.results).is_dir() else Path(args.results).parent
        with FolderLock(out, "packnet_edu report"):
            try:
                write_report(results, out)
            except (KeyError, IndexError, TypeError, ValueError) as err:
                raise RunFolderError(f"{out / 'results.json'} is incomplete or damaged "
                                     f"({type(err).__name__}: {err}); run `compare` again") from None
    except RunFolderError as err:
        raise SystemExit(f"error: {err}") from None
    print((out / "report.md").read_text())
    return 0
