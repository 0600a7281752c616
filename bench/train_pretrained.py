"""Train the bundled pretrained model `nuclei` on the broad generator: one reproducible command.

    python bench/train_pretrained.py                       # writes minunet/models/nuclei.npz
    python bench/train_pretrained.py --out runs/nuclei     # or anywhere else

A U-Net (depth 3, base 16, float32: about 1.9 MB) trained on generated `broad` images (bright and
dim cells side by side, sizes from fragments to large cells, elongated cells, varying exposure,
blur and noise), normalised with `DEFAULT_NORMALIZATION`; the epoch kept is the one with the
best object F1@0.5 on validation images of `broad`. The checkpoint's metadata holds the
normalisation, the post-processing settings, the training object diameter and this recipe.
The same recipe trains the accuracy table's default model (bench/accuracy.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import minunet as mu
from minunet import workflow
from minunet.predict import DEFAULT_NORMALIZATION
from minunet.rescale import object_diameter

SIZE = (256, 256)
CROP = 128
BATCH = 8
LR = 3e-3
N_VAL = 8
RECIPE = {"preset": "broad", "n_train": 240, "epochs": 30, "seed": 0}
QUICK = {"preset": "broad", "n_train": 16, "epochs": 1, "seed": 0}


def train_default(out: Path, preset: str, n_train: int, epochs: int, seed: int,
                  monitor: str, normalization: dict | None = None, balance: bool = True,
                  **metadata: object) -> tuple[mu.History, np.ndarray, np.ndarray, dict]:
    """Generate `n_train + N_VAL` images of `preset` and train the default U-Net (depth 3,
    base 16) on the last n_train, validating on the first N_VAL and keeping the epoch best by
    `monitor` (out/best.npz). normalization: DEFAULT_NORMALIZATION unless given; balance: the
    weight map's class balancing (`mu.data.weight_map`). Returns (history, validation x, all
    labels, post-processing settings learned from the training labels)."""
    norm = DEFAULT_NORMALIZATION if normalization is None else normalization
    images, labels, _ = mu.data.generate(n_train + N_VAL, preset, size=SIZE, seed=seed)
    post = workflow.postprocess_settings(labels[N_VAL:])
    x, classes, weights = workflow.training_arrays(images, labels, norm, balance=balance)
    model = mu.UNet(1, 3, depth=3, base_channels=16, rng=np.random.default_rng(seed))
    steps = epochs * -(-n_train // BATCH)
    history = mu.train(
        model, (x[N_VAL:], classes[N_VAL:], weights[N_VAL:]),
        (x[:N_VAL], classes[:N_VAL], weights[:N_VAL]),
        epochs=epochs, batch_size=BATCH, lr=LR, crop=CROP,
        schedule=mu.CosineSchedule(LR, total_steps=steps, warmup_steps=min(50, steps - 1)),
        augment=workflow.make_augment(),
        score_fn=workflow.object_score_fn(labels[:N_VAL], postprocess=post), monitor=monitor,
        seed=seed, out_dir=out,
        metadata={"normalization": norm, "postprocess": post,
                  "diameter": object_diameter(labels[N_VAL:]), **metadata},
    )
    return history, x[:N_VAL], labels, post


def train_broad(out: Path, preset: str = "broad", n_train: int = 240, epochs: int = 30,
                seed: int = 0) -> mu.Checkpoint:
    """Train the default U-Net on `preset`, keep the best epoch by validation object F1, then
    pick the seed threshold on the validation images (`workflow.tune_postprocess`); returns
    out/best.npz's checkpoint."""
    recipe = {"preset": preset, "n_train": n_train, "epochs": epochs, "seed": seed,
              "size": list(SIZE), "crop": CROP, "batch": BATCH, "lr": LR,
              "knobs": mu.data.knobs(preset)}     # the generator's settings, for the record
    history, x_val, labels, post = train_default(out, preset, n_train, epochs, seed,
                                                 "val_f1", recipe=recipe)
    print(f"{preset}: best epoch {history.best_epoch} of {len(history)}, "
          f"val F1 {history.best_score:.3f}")
    ckpt = mu.load(out / "best.npz")
    post = workflow.tune_postprocess(ckpt.model, x_val, labels[:N_VAL], post)
    print(f"post-processing {post} (validation object F1)")
    mu.save(ckpt.model, out / "best.npz", position=ckpt.position,
            **{**ckpt.metadata, "postprocess": post})
    return mu.load(out / "best.npz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None,
                        help="checkpoint file to write (default: the package's nuclei.npz)")
    parser.add_argument("--run-dir", default="runs/train_pretrained",
                        help="folder for the training log and per-epoch checkpoints")
    parser.add_argument("--quick", action="store_true", help="tiny run, to check it works")
    args = parser.parse_args()
    recipe = QUICK if args.quick else RECIPE
    out = Path(args.out) if args.out else Path(mu.__file__).parent / "models" / "nuclei.npz"
    if args.quick and not args.out:
        out = Path(args.run_dir) / "nuclei-quick.npz"
    started = time.perf_counter()
    ckpt = train_broad(Path(args.run_dir), **recipe)
    mu.save(ckpt.model, out, **ckpt.metadata)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in "
          f"{(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
