"""Write the README's figures from a real PackNet run on the offline sequence.

    .venv/bin/python scripts/make_figures.py [--out docs/figures]

Uses the notebooks' cached run (packnet_edu.cache.packnet_run): the config
follows PACKNET_FAST like the notebooks (set PACKNET_FAST=1 for the quick
run, about a minute on two cores). Writes filter_evolution.png,
ownership_heatmap.png and capacity_bars.png in the notebooks' style
(packnet_edu.plots: 820 px wide at 100 dpi, saved at 200 dpi for HiDPI
screens), each atomically.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from packnet_edu import cache, plots, widgets
from packnet_edu import checkpoint as ck

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    ap.add_argument("--layer", default="conv2.weight", help="layer of the ownership heatmap")
    args = ap.parse_args(argv)
    cfg = cache.notebook_config()
    print(cache.describe(cfg))
    run = cache.packnet_run(cfg)
    names = run["task_names"]
    owners = ck.owner_maps(run["checkpoint"])
    snaps = run["snapshots"]
    f = widgets.default_filter(snaps)
    written = []
    written += plots.save_figure(plots.filter_evolution(snaps, f, names), args.out / "filter_evolution", formats=("png",))
    written += plots.save_figure(plots.ownership_heatmap(owners[args.layer], names, layer=args.layer),
                                 args.out / "ownership_heatmap", formats=("png",))
    written += plots.save_figure(plots.capacity_bars(owners, names), args.out / "capacity_bars", formats=("png",))
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
