"""Runs that write results to an output folder: PackNet with checkpoints and resume."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from . import checkpoint as ck
from .report import accuracy_table, ownership_table
from .train import LOCAL, Config, Runtime, run_packnet


def run_packnet_to(cfg: Config, out: Path, resume: bool = False, verbose: bool = True,
                   runtime: Runtime = LOCAL, write: bool = True) -> dict:
    """run_packnet with a checkpoint after every phase (OUT/checkpoint.pt, atomic)
    and results in OUT/results.json. With `resume`, continues from the checkpoint.
    `write=False` (the other ranks of a distributed run) reads but never writes."""
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

    result = run_packnet(cfg, on_phase_end=save_phase if write else None, resume_from=resume_from,
                         verbose=verbose and write, runtime=runtime)
    if not write:
        return result
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


def compare(cfg: Config, out: Path, methods=None, sweep=(0.25, 0.5, 0.75, 0.9), verbose: bool = True) -> dict:
    """Every method on the same tasks and budget; writes OUT/results.json,
    OUT/matrices.csv, OUT/report.md and figures. PackNet's run is checkpointed
    (OUT/packnet/checkpoint.pt) and its forgetting checked bit for bit."""
    from .baselines import METHODS, run_method
    from .metrics import average_accuracy, capacity_shares
    from .report import comparison_markdown, matrices_csv
    from .train import load_tasks
    methods = list(methods or METHODS)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = load_tasks(cfg)
    results = {"config": cfg.to_dict(), "task_names": [t.name for t in tasks], "methods": {}, "sweep": []}
    for m in methods:
        t0 = time.time()
        if m == "packnet":
            r = run_packnet_to(cfg, out / "packnet", verbose=False)
            entry = {k: r[k] for k in ("matrix", "ratios", "outputs_identical")}
            entry.update(shares=capacity_shares(r["owned"], len(tasks)), owned=r["owned"],
                         mask_bits=ck.bits_for(r["engine"].num_tasks))
        else:
            entry = {"matrix": run_method(m, cfg, tasks)["matrix"]}
        entry["seconds"] = time.time() - t0
        results["methods"][m] = entry
        if verbose:
            print(f"{m:>16}: average accuracy {average_accuracy(entry['matrix']):6.2f}%  ({entry['seconds']:.0f}s)")
    for ratio in sweep:
        r = run_method("packnet", Config(**dict(cfg.to_dict(), prune=ratio)), tasks)
        results["sweep"].append((ratio, average_accuracy(r["matrix"])))
        if verbose:
            print(f"  packnet prune {ratio:g}: average accuracy {results['sweep'][-1][1]:6.2f}%")
    write_report(results, out)
    return results


def write_report(results: dict, out: Path) -> None:
    """results.json, matrices.csv, figures and report.md in `out`."""
    from .report import comparison_markdown, matrices_csv
    out = Path(out)
    results["figures"] = comparison_figures(results, out)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "matrices.csv").write_text(matrices_csv(results))
    (out / "report.md").write_text(comparison_markdown(results))


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


def compare_cli(args) -> int:
    from .cli import config_from_args
    t0 = time.time()
    results = compare(config_from_args(args), args.out, args.methods,
                      [] if args.sweep in ("", "none") else [float(r) for r in args.sweep.split(",")])
    print((Path(args.out) / "report.md").read_text())
    print(f"wrote {args.out}/report.md, results.json, matrices.csv in {time.time() - t0:.0f}s")
    return 0


def report_cli(args) -> int:
    path = Path(args.results)
    if path.is_dir():
        path = path / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: cannot read {path}: {err}; pass the results.json that `compare` wrote")
    write_report(results, path.parent)
    print((path.parent / "report.md").read_text())
    return 0
