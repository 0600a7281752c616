"""Draw the pictures of docs/learn/ (committed beside this script; run it to redraw them).

    python docs/learn/make_figures.py                # writes the PNGs next to this file
    python docs/learn/make_figures.py --out /tmp/x   # somewhere else

- learning_signals.png: `mu.viz.learning_signals` on the tiny U-Net of `exercises.sanity`
  (depth 2, base 8, one 2-image batch, 40 Adam steps, lr 1e-2, seed 0): a feature map per
  level after training, and each layer's gradient norm at every step.
- conv_transpose_overlap.png: how many stamps of a stride-2 transposed convolution cover each
  output pixel, for K = 3 (the checkerboard) and K = 2 (the U-Net's up-step: even).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: exercises/
import minunet as mu
from exercises.sanity import build, tiny_batch
from minunet import layers

STEPS = 40


def learning_signals(out: Path) -> Path:
    x, t = tiny_batch()
    model = build()
    loss_fn = mu.CrossEntropyLoss()
    opt = mu.Adam(model.parameters(), lr=1e-2)
    norms: dict[str, list[float]] = {}
    for _ in range(STEPS):
        with mu.trace(model) as trace:
            loss_fn.forward(model(x), t)
            opt.zero_grad()
            model.backward(loss_fn.backward())
        opt.step()
        for name, value in trace.grad_norms().items():
            if name.endswith("conv1") or name in ("head",) or name.startswith("upconv"):
                norms.setdefault(name, []).append(value)
    with mu.trace(model, keep=True) as trace:
        model(x)
    kept = {r.name: r.arrays[0] for r in trace.forward_records()}
    maps = {"input": x, "down.0": kept["down.0.relu2"], "down.1": kept["down.1.relu2"],
            "bottom": kept["bottom.relu2"], "up.0": kept["up.0.relu2"]}
    return mu.viz.learning_signals(maps, norms, out / "learning_signals.png",
                                   title=f"tiny U-Net, {STEPS} Adam steps on one batch")


def conv_transpose_overlap(out: Path) -> Path:
    fig = Figure(figsize=(7, 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for ax, K in zip(fig.subplots(1, 2), (3, 2), strict=True):
        up = layers.ConvTranspose2d(1, 1, K, stride=2, bias=False).astype(np.float64)
        up.weight.data[...] = 1.0
        counts = up.forward(np.ones((1, 1, 3, 3)))[0, 0]
        ax.imshow(counts, cmap="viridis", vmin=0, vmax=4)
        for (i, j), c in np.ndenumerate(counts):
            ax.text(j, i, f"{c:g}", ha="center", va="center", color="w", fontsize=9)
        ax.set_title(f"K={K}, stride 2: stamps per output pixel")
        ax.set_xticks([])
        ax.set_yticks([])
    path = out / "conv_transpose_overlap.png"
    fig.savefig(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    for draw in (learning_signals, conv_transpose_overlap):
        print(draw(out))


if __name__ == "__main__":
    main()
