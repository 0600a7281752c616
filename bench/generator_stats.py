"""The generator's statistics per preset, to hold beside those of real labelled images.

    python bench/generator_stats.py                      # every synthetic preset, 4 images each
    python bench/generator_stats.py shift-chromatin --n 8
    python bench/generator_stats.py --images imgs/ --labels masks/   # your own labelled images

Columns (`minunet.data.generate.statistics`): interior coefficient of variation (texture,
nucleoli and noise inside the cells), texture scale (px at which interior pixels decorrelate
to 1/2), rim / centre brightness above background, median diameter.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import minunet as mu
from minunet.data.generate import statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", help="presets (default: all but reference*)")
    parser.add_argument("--n", type=int, default=4, help="images per preset (4)")
    parser.add_argument("--images", help="a folder of your own images (with --labels)")
    parser.add_argument("--labels", help="their label images, same file names")
    args = parser.parse_args()
    sets = []
    if args.images:
        names = sorted(Path(args.images).iterdir())
        sets.append(("your images", [mu.data.read_image(f) for f in names],
                     [mu.data.read_image(Path(args.labels) / f.name) for f in names]))
    presets = args.presets or ([] if args.images else
                               [p for p in mu.data.PRESETS if not p.startswith("reference")])
    for preset in presets:
        images, labels, _ = mu.data.generate(args.n, preset, seed=0)
        sets.append((preset, images, labels))
    print("| preset | interior CV | texture scale (px) | rim / centre | diameter (px) |")
    print("|---|---|---|---|---|")
    for name, images, labels in sets:
        st = statistics(images, labels)
        print(f"| {name} | {st['interior_cv']:.3f} | {st['texture_scale']:.2f} | "
              f"{st['rim_ratio']:.2f} | {st['diameter']:.1f} |")


if __name__ == "__main__":
    main()
