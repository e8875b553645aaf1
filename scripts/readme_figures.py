"""Rebuild the README's GAN figures from a `bnlab gan` run directory (no hand edits).

    python scripts/readme_figures.py RUN_DIR [--out docs/img] [--prefix gan]

Writes <prefix>_samples_epoch<E>.png (the last epoch's samples of the first seed, G in train mode
as the blog showed them, one panel per variant) and <prefix>_fd.png (the run's Frechet-distance
curves, G in eval mode); the README's MNIST figures use the prefix gan, its Fashion-MNIST ones
fashion. The claims table comes from `bnlab report RUN_DIR --markdown`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import matplotlib.image as mpimg

from bnlab.lab.report.plots import pyplot

TITLES = {
    "plain": "plain (nb 1)",
    "init": "init (He/Xavier)",
    "init-bn": "init-bn (nb 3)",
    "init-bn-nomode": "init-bn-nomode (nb 2)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--prefix", default="gan", help="file name prefix (gan, fashion)")
    args = parser.parse_args()
    run, out = args.run_dir, args.out
    config = json.loads((run / "config.json").read_text())["config"]
    variants = [v["name"] if isinstance(v, dict) else v for v in config["variants"]]
    epoch = config["epochs"]
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = pyplot().subplots(1, len(variants), figsize=(3.2 * len(variants), 3.4))
    for ax, variant in zip(axes, variants, strict=True):
        # the first seed's files carry no suffix; the others end in -s1, -s2, ...
        image = mpimg.imread(run / "samples" / variant / f"epoch-{epoch:03d}-train.png")
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.set_title(TITLES.get(variant, variant), fontsize=9, loc="left")
        ax.axis("off")
    fig.tight_layout()
    samples = out / f"{args.prefix}_samples_epoch{epoch}.png"
    fig.savefig(samples, dpi=100)
    fd = out / f"{args.prefix}_fd.png"
    shutil.copyfile(run / "metric_fd.png", fd)
    print(f"wrote {samples} and {fd} from {run}")


if __name__ == "__main__":
    main()
