"""Write the README's figures from a real PackNet run on the offline sequence;
with --compare, record the comparison behind the README's table again.

    .venv/bin/python scripts/make_figures.py [--out docs/figures]
    .venv/bin/python scripts/make_figures.py --compare      # docs/compare: about 4 minutes on two cores

Figures: uses the notebooks' cached run (packnet_edu.cache.packnet_run): the
config follows PACKNET_FAST like the notebooks (set PACKNET_FAST=1 for the
quick run, about a minute on two cores). Writes filter_evolution.png,
ownership_heatmap.png and capacity_bars.png in the notebooks' style
(packnet_edu.plots: 820 px wide at 100 dpi, saved at 200 dpi for HiDPI
screens), each atomically.

--compare: runs `python -m packnet_edu compare` with the default config in
runs/compare-record/, adds to its results.json the provenance of the code,
torch, torchvision and data files that produced it (packnet_edu.provenance;
tests/test_readme.py fails when any of them changes), copies its report
files and figures into docs/compare/, and puts its table and code hash in
README.md. The numbers in the prose under the table are updated by hand
(tests/test_readme.py says which differ).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from packnet_edu import cache, plots, provenance, widgets
from packnet_edu import checkpoint as ck
from packnet_edu.fileio import atomic_write

ROOT = Path(__file__).resolve().parent.parent


def record_compare(dest: Path, scratch: Path, readme: Path = ROOT / "README.md") -> Path:
    """`compare` with the default config, its results.json carrying its
    provenance, copied into `dest`; README's comparison table and the code
    hash under it replaced by the new run's."""
    import json
    import re

    from packnet_edu.experiments import REPORT_FILES, compare, write_report
    from packnet_edu.report import comparison_table
    from packnet_edu.train import Config
    cfg = Config()
    files = [p for paths in cache.data_files(cfg).values() for p in paths]
    old_table = comparison_table(json.loads((dest / "results.json").read_text()))
    before = provenance.record("experiments", files)
    t0 = time.time()
    results = compare(cfg, scratch, overwrite=True)
    if provenance.record("experiments", files) != before:
        raise SystemExit("error: the code or the data changed while `compare` ran; run it again")
    if results.setdefault("provenance", before) != before:
        raise SystemExit("error: compare recorded a provenance other than the code it ran; run it again")
    write_report(results, scratch)
    for name in list(REPORT_FILES) + results["figures"]:
        atomic_write(dest / name, (scratch / name).read_bytes())
    text = readme.read_text()
    if old_table not in text:
        raise SystemExit(f"error: recorded in {dest}, but {readme} does not show the previous table; "
                         "update its comparison by hand from report.md")
    text = text.replace(old_table, comparison_table(results))
    text = re.sub(r"<!-- recorded by code \w+ -->", f"<!-- recorded by code {before['code']} -->", text)
    atomic_write(readme, text)
    print(f"recorded the comparison in {dest} ({time.time() - t0:.0f}s; code {before['code']}) and put its "
          f"table in {readme.name}; now check the numbers in the prose under it (tests/test_readme.py)")
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    ap.add_argument("--layer", default="conv2.weight", help="layer of the ownership heatmap")
    ap.add_argument("--compare", action="store_true",
                    help="record the comparison in docs/compare instead (runs/compare-record is its scratch folder)")
    args = ap.parse_args(argv)
    if args.compare:
        record_compare(ROOT / "docs" / "compare", ROOT / "runs" / "compare-record")
        return 0
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
