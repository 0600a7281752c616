"""Images larger than memory: time and peak memory of a chunked segmentation, and its agreement
with the in-memory result on an image that fits.

    python bench/bench_chunked.py --size 20000            # the 20,000 x 20,000 uint16 case
    python bench/bench_chunked.py --size 4096 --compare   # + in memory, probabilities and F1

What it does, each measured step in a fresh subprocess (peak resident memory = ru_maxrss):
  1. a model: `--model CKPT`, or a U-Net (depth 3, base 16) trained for about a minute on
     `standard` cells, so the probabilities look like a real model's
  2. a synthetic uint16 image of size x size written as a tiled, zlib-compressed TIFF, tile by
     tile (cell images of 512 x 512 in random orientations), never whole in memory; with
     `--source zarr` also copied to a Zarr array, which is then the one segmented
  3. `segment_large` on it: labels to a Zarr array (and probabilities with --probs)
  4. with --compare: the same image in memory (`mu.segment`'s path: predict + to_instances),
     then max |probability difference| and object F1 at IoU 0.5 / 0.9 between the two label
     images. The comparison reads both results whole, so use it on sizes that fit.
The target is 2 GiB peak for 20,000 x 20,000.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

LIMIT_MIB = 2048
NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8}


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ steps (subprocesses)
def make_model(out: Path) -> None:
    import numpy as np

    import minunet as mu
    from minunet import workflow

    images, labels, _ = mu.data.generate(48, "standard", size=(128, 128), seed=0)
    x, t, w = workflow.training_arrays(images, labels, NORMALIZATION)
    model = mu.UNet(1, 3, depth=3, base_channels=16, rng=np.random.default_rng(0))
    mu.train(model, (x[8:], t[8:], w[8:]), (x[:8], t[:8], w[:8]), epochs=6, batch_size=8,
             lr=3e-3, crop=96, augment=workflow.make_augment(), seed=0, progress=False)
    mu.save(model, out, normalization=NORMALIZATION,
            postprocess=workflow.postprocess_settings(labels[8:]))


def make_image(out: Path, size: int) -> None:
    import numpy as np
    import tifffile

    import minunet as mu

    T = 512
    pool, _, _ = mu.data.generate(16, "standard", size=(T, T), seed=1)
    rng = np.random.default_rng(2)

    per_side = -(-size // T)

    def tiles():
        for _ in range(per_side * per_side):
            tile = np.rot90(pool[rng.integers(len(pool))], rng.integers(4))
            noisy = tile * 3000 + 200 + rng.normal(0, 30, tile.shape)
            yield np.clip(noisy, 0, 65535).astype(np.uint16)

    tifffile.imwrite(out, tiles(), shape=(size, size), dtype=np.uint16, tile=(T, T),
                     compression="zlib", bigtiff=size * size * 2 > 2**31,
                     photometric="minisblack")


def to_zarr(tiff: Path, out: Path) -> None:
    """A copy of the TIFF as a Zarr array (chunks of 512 x 512), block by block."""
    import zarr

    from minunet.scaleout import open_large

    image = open_large(tiff)
    H, W = image.shape
    array = zarr.create_array(str(out), shape=(H, W), dtype=image.dtype, chunks=(512, 512))
    for r in range(0, H, 2048):
        for c in range(0, W, 2048):
            array[r:r + 2048, c:c + 2048] = image.read(r, min(r + 2048, H), c, min(c + 2048, W))


def chunked(model: Path, image: Path, out: Path, block: int, tile: int, batch_size: int,
            probs: bool) -> dict:
    from minunet.scaleout import segment_large

    started = time.perf_counter()
    result = segment_large(model, image, out / "labels.zarr", block=block, tile=tile,
                           batch_size=batch_size, progress=True,
                           probs_out=out / "probs.zarr" if probs else None)
    return {"seconds": time.perf_counter() - started, "objects": result["objects"],
            "blocks": result["blocks"]}


def in_memory(model: Path, image: Path, out: Path, tile: int, batch_size: int) -> dict:
    import numpy as np
    import tifffile

    import minunet as mu
    from minunet.scaleout.common import segment_image

    ckpt = mu.load(model)
    raw = tifffile.imread(image)
    started = time.perf_counter()
    labels, probs = segment_image(ckpt.model, raw, ckpt.metadata, tile=tile,
                                  batch_size=batch_size)
    seconds = time.perf_counter() - started
    np.save(out / "memory_labels.npy", labels)
    np.save(out / "memory_probs.npy", probs)
    return {"seconds": seconds, "objects": int(labels.max())}


def compare(out: Path) -> dict:
    import numpy as np
    import zarr

    import minunet as mu

    labels = np.load(out / "memory_labels.npy")
    chunked_labels = zarr.open_array(str(out / "labels.zarr"))[:].astype(np.int32)
    result = {f"f1_iou{t}": mu.metrics.match(labels, chunked_labels, t).f1 for t in (0.5, 0.9)}
    if (out / "probs.zarr").exists():
        probs = np.load(out / "memory_probs.npy", mmap_mode="r")
        result["max_prob_diff"] = float(np.abs(zarr.open_array(str(out / "probs.zarr"))[:]
                                               - probs).max())
    return result


def worker(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if args.step == "model":
        make_model(Path(args.model))
        result: dict = {}
    elif args.step == "image":
        make_image(out / "image.tif", args.size)
        if args.source == "zarr":
            to_zarr(out / "image.tif", out / "image.zarr")
        result = {}
    elif args.step == "baseline":
        import minunet as mu
        from minunet.scaleout import segment_large  # noqa: F401  (the imports it costs)

        mu.load(args.model)
        result = {}
    elif args.step == "chunked":
        source = out / ("image.zarr" if args.source == "zarr" else "image.tif")
        result = chunked(Path(args.model), source, out, args.block, args.tile,
                         args.batch_size, args.probs)
    elif args.step == "memory":
        result = in_memory(Path(args.model), out / "image.tif", out, args.tile, args.batch_size)
    else:
        result = compare(out)
    result["peak_mib"] = peak_mib()
    print(json.dumps(result))


def run(step: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--step", step, "--size", str(args.size), "--out",
           args.out, "--model", str(args.model), "--block", str(args.block), "--tile",
           str(args.tile), "--batch-size", str(args.batch_size), "--source", args.source] + (
               ["--probs"] if args.probs else [])
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--model", help="a checkpoint (default: train a small one, ~1 min)")
    parser.add_argument("--out", default="runs/bench_chunked", help="a new folder")
    parser.add_argument("--compare", action="store_true",
                        help="also segment in memory and compare (sizes that fit)")
    parser.add_argument("--probs", action="store_true", help="also write the probabilities")
    parser.add_argument("--source", choices=("tiff", "zarr"), default="tiff",
                        help="segment the tiled TIFF or a Zarr copy of it")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        worker(args)
        return
    out = Path(args.out) / f"size{args.size}"
    out.mkdir(parents=True, exist_ok=False)
    args.out = str(out)
    if args.model is None:
        args.model = str(out / "model.npz")
        started = time.perf_counter()
        run("model", args)
        print(f"trained a small U-Net (depth 3, base 16) in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    run("image", args)
    size_mib = (out / "image.tif").stat().st_size / 2**20
    print(f"wrote {args.size} x {args.size} uint16 tiled TIFF ({size_mib:.0f} MiB on disk) in "
          f"{time.perf_counter() - started:.0f} s")
    base = run("baseline", args)
    result = run("chunked", args)
    verdict = "within" if result["peak_mib"] <= LIMIT_MIB else "OVER"
    mpx = args.size * args.size / 1e6
    print(f"baseline peak (python + minunet + model): {base['peak_mib']:.0f} MiB")
    print(f"chunked: {result['blocks']} blocks of {args.block}, {result['objects']} objects, "
          f"{result['seconds']:.0f} s ({mpx / result['seconds']:.2f} Mpixel/s), peak "
          f"{result['peak_mib']:.0f} MiB ({verdict} the {LIMIT_MIB} MiB target)")
    if args.compare:
        memory = run("memory", args)
        print(f"in memory: {memory['objects']} objects, {memory['seconds']:.0f} s, peak "
              f"{memory['peak_mib']:.0f} MiB")
        print("chunked vs in memory: " + ", ".join(
            f"{k} {v:.4g}" for k, v in run("compare", args).items() if k != "peak_mib"))


if __name__ == "__main__":
    main()
