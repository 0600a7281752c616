"""End-to-end segmentation with the bundled model: seconds per megapixel, stage by stage.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_segment.py
    python bench/bench_segment.py --sizes 512,2048 --tiles 256:4,1024:1 --torch --onnx
    python bench/bench_segment.py --tiles 256:4:56,1024:1   # 256-px tiles with a 56-px margin
    python bench/bench_segment.py --quick                                     # smoke run
    python bench/bench_segment.py --sizes 2048,4096 --tiles 1024:1 --folder 0 --command
    python bench/bench_segment.py --sizes 2048 --tiles 1024:1 --folder 0 --torch --onnx --load

What `minunet predict --model nuclei` does to one image, timed stage by stage in a fresh
subprocess per measurement (its peak resident memory is that subprocess's): read the uint16
TIFF, normalise it with the model's stored setting, run the network over overlapping tiles
(`mu.predict`), turn the probabilities into instances (`mu.to_instances` with the stored
settings), write the label TIFF. Images are generated `broad` images, written once to a
temporary folder before timing. `--folder N` adds a folder of N images of 512 x 512 (the
stages summed over the folder). `--torch` runs the same network in PyTorch (weights copied,
channels_last, eval mode, glibc malloc tuned as in `bench_unet.py --best`) through the same
tiling function, so only the network stage differs; `--onnx` the same through onnxruntime
(the graph of `mu.export_onnx` without its final softmax, 2 intra-op threads, all graph
optimisations, which fold the batch norms). The sides alternate with minunet's, in the same run.
A tile spec TILE:BATCH:MARGIN fixes the margin (default: predict's automatic one).

`--command` also times the whole command, `minunet predict --model nuclei FILES --out DIR`, in
a fresh process (Python's start, the imports, loading the compiled kernels and the model
included), for each case with the first tile spec, and once on a 64 x 64 image: what a user
waits for, start-up and all. minunet's bytecode is compiled first, as an installation has it
(`compile_bytecode`: PYTHONDONTWRITEBYTECODE would otherwise make each start compile its
sources).

`--load` runs every measurement under a competing load: a separate process whose two threads
loop on single-threaded float32 matrix products (bench_unet.py's, like another job on the
machine), started before the first measurement and stopped after the last.

Print: per image size, tile and backend, the seconds of each stage, the total, seconds per
megapixel, the network's share, and peak memory. The CPU and BLAS kernel are printed first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("read", "normalise", "network", "post", "write")
# PyTorch at its best, as bench_unet.py --best: glibc malloc serves large blocks from its heap
TORCH_BEST_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**32),
                  "MALLOC_TOP_PAD_": str(256 * 2**20)}


def _torch_network(model: object) -> object:
    """A stand-in for the minunet U-Net whose forward runs the same weights in PyTorch."""
    import numpy as np
    import torch
    from torch import nn

    torch.set_num_threads(2)
    cfg = model.config()
    depth, base = cfg["depth"], cfg["base_channels"]
    c = [base * 2**i for i in range(depth + 1)]

    class Double(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(x)))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.ModuleList(Double(cfg["in_channels"] if i == 0 else c[i - 1], c[i])
                                      for i in range(depth))
            self.bottom = Double(c[depth - 1], c[depth])
            self.upconv = nn.ModuleList(nn.ConvTranspose2d(c[i + 1], c[i], 2, stride=2)
                                        for i in range(depth))
            self.up = nn.ModuleList(Double(2 * c[i], c[i]) for i in range(depth))
            self.head = nn.Conv2d(c[0], cfg["num_classes"], 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skips = []
            for down in self.down:
                x = down(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.bottom(x)
            for i in reversed(range(depth)):
                x = self.up[i](torch.cat([skips[i], self.upconv[i](x)], dim=1))
            return self.head(x)

    net = Net()
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.state_dict().items()}
    net.load_state_dict(state, strict=False)
    net = net.eval().to(memory_format=torch.channels_last)

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
            return net(t).contiguous().numpy()

    return Shim(cfg["depth"], forward)


def _onnx_network(model: object) -> object:
    """The same network through onnxruntime: mu.export_onnx's graph, ending at the logits."""
    import onnxruntime as ort

    from minunet.export.onnx import OUTPUT, onnx_model

    proto = onnx_model(model)
    graph = proto.graph
    softmax = [n for n in graph.node if n.op_type == "Softmax"][-1]
    logits = softmax.input[0]
    graph.node.remove(softmax)                # predict applies its own softmax to logits
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == logits:
                node.output[i] = OUTPUT
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def forward(x):
        return session.run([OUTPUT], {input_name: x})[0]

    return Shim(model.config()["depth"], forward)


class Shim:
    """What `mu.predict` asks of a model: depth, dtype, modes, and a call."""
    training, grad_enabled = False, False

    def __init__(self, depth: int, forward: object) -> None:
        import numpy as np

        self.depth, self.dtype, self.forward = depth, np.float32, forward

    def eval(self) -> Shim:
        return self

    def train(self, mode: bool = True) -> Shim:
        return self

    def set_grad_enabled(self, on: bool) -> None:
        pass

    def __call__(self, x: object) -> object:
        return self.forward(x)


def worker(files: list[str], tile: int, batch_size: int, margin: int | None, backend: str,
           out_dir: str) -> None:
    import numpy as np

    import minunet as mu
    from minunet.inference import stored_settings
    from minunet.io import read_image, read_pixel_size, write_labels

    ckpt = mu.load("nuclei")
    norm, post = stored_settings(ckpt)
    network = {"minunet": lambda m: m, "torch": _torch_network,
               "onnx": _onnx_network}[backend](ckpt.model)
    warm = np.random.default_rng(0).integers(0, 4000, (128, 128), dtype=np.uint16)
    mu.to_instances(mu.predict(network, warm, tile=128, normalization=norm), **post)  # compile
    seconds = dict.fromkeys(STAGES, 0.0)
    objects = 0
    for name in files:
        t0 = time.perf_counter()
        image = read_image(name)
        t1 = time.perf_counter()
        x = mu.normalize(image, norm)
        t2 = time.perf_counter()
        probs = mu.predict(network, x, tile=tile, batch_size=batch_size, margin=margin,
                           normalized=True)
        t3 = time.perf_counter()
        labels = mu.to_instances(probs, **post)
        t4 = time.perf_counter()
        write_labels(Path(out_dir) / Path(name).name, labels, read_pixel_size(name))
        t5 = time.perf_counter()
        for stage, (a, b) in zip(STAGES, [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)],
                                 strict=True):
            seconds[stage] += b - a
        objects += int(labels.max(initial=0))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "objects": objects}))


def measure(files: list[Path], tile: int, batch_size: int, margin: int | None, backend: str,
            out_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--tile", str(tile), "--batch-size",
           str(batch_size), "--backend", backend, "--out-dir", str(out_dir),
           *(["--margin", str(margin)] if margin is not None else []), *map(str, files)]
    env = {**os.environ, **(TORCH_BEST_ENV if backend == "torch" else {})}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def compile_bytecode(package: Path) -> None:
    """Write the package's missing or stale bytecode (__pycache__/*.pyc), as `pip install`
    and Python's first import of each module do. Where PYTHONDONTWRITEBYTECODE is set (this
    project's machines set it), Python never writes it, and every start of the command would
    compile minunet's sources again: 0.05-0.1 s that a user's installation does not pay."""
    import compileall

    compileall.compile_dir(str(package), quiet=1)


def command(files: list[Path], tile: int, root: Path) -> float:
    """Wall seconds of `minunet predict --model nuclei FILES --out DIR --tile TILE` in a fresh
    process, into a fresh folder."""
    out = Path(tempfile.mkdtemp(dir=root))
    cmd = [sys.executable, "-m", "minunet.cli", "predict", "--model", "nuclei", *map(str, files),
           "--out", str(out), "--tile", str(tile)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - started


def make_images(folder: Path, size: int, n: int, seed: int) -> list[Path]:
    """n generated `broad` images of size x size as uint16 TIFFs (generated in 512 pieces for
    large sizes, so generation stays quick; the pieces' seams do not matter for timing)."""
    import numpy as np
    import tifffile

    import minunet as mu

    piece = min(size, 512)
    files = []
    for k in range(n):
        image = np.zeros((size, size), np.float32)
        per_side = size // piece
        images, _, _ = mu.data.generate(per_side**2, "broad", size=(piece, piece),
                                        seed=seed + k)
        for i, im in enumerate(images):
            r, c = divmod(i, per_side)
            image[r * piece:(r + 1) * piece, c * piece:(c + 1) * piece] = im
        path = folder / f"img{size}_{k:03d}.tif"
        tifffile.imwrite(path, (image * 4000).astype(np.uint16))
        files.append(path)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,2048,4096")
    parser.add_argument("--tiles", default="256:4:56,256:4,1024:1",
                        help="tilings to compare, each TILE:BATCH[:MARGIN] (core px, tiles per "
                        "forward pass, margin px; default: the automatic margin)")
    parser.add_argument("--folder", type=int, default=64, help="images of 512^2 (0: none)")
    parser.add_argument("--torch", action="store_true", help="also the network in PyTorch")
    parser.add_argument("--onnx", action="store_true", help="also the network in onnxruntime")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--command", action="store_true",
                        help="also the whole `minunet predict` command per case (a fresh "
                             "process: start-up included), and on a 64 x 64 image")
    parser.add_argument("--quick", action="store_true", help="one 256^2 image, tile 128")
    parser.add_argument("--load", action="store_true",
                        help="everything under a competing 2-thread load")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--margin", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="minunet", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", default=".", help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.files, args.tile, args.batch_size, args.margin, args.backend, args.out_dir)
        return
    if args.quick:
        args.sizes, args.tiles, args.folder = "256", "128:4", 0
    import numpy  # noqa: F401  (loads BLAS, so threadpoolctl can name its kernel)
    from threadpoolctl import threadpool_info

    blas = [f"{i.get('internal_api')} {i.get('architecture')}" for i in threadpool_info()
            if i.get("user_api") == "blas"]
    print(f"CPU: {_cpu_name()}; BLAS: {', '.join(blas)}")
    backends = ["minunet"] + (["torch"] if args.torch else []) + (["onnx"] if args.onnx else [])
    load = None
    if args.load:
        from bench_unet import LOAD_SCRIPT

        load = subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT],
                                env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
        print("under a competing load: 2 threads of float32 matrix products")
    try:
        run_cases(args, backends)
    finally:
        if load is not None:
            load.kill()


def run_cases(args: argparse.Namespace, backends: list[str]) -> None:
    """Generate the images, then time every case, tiling and backend (main's table)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases = [(f"{s}x{s}", make_images(root, s, 1, seed=1)) for s in map(int,
                                                                            args.sizes.split(","))]
        if args.folder:
            cases.append((f"{args.folder} x 512x512", make_images(root, 512, args.folder, 7)))
        (root / "out").mkdir()
        if args.command:
            import minunet

            compile_bytecode(Path(minunet.__file__).parent)
        print(f"{'image':>16} {'tile':>8} {'backend':>8} "
              + " ".join(f"{s:>9}" for s in STAGES)
              + f" {'total':>8} {'s/Mpx':>6} {'net %':>5} {'peak MiB':>8} {'objects':>7}")
        for name, files in cases:
            mpx = sum(_pixels(f) for f in files) / 1e6
            for spec in args.tiles.split(","):
                tile, batch, margin = [*spec.split(":"), "", ""][:3]
                tile, batch = int(tile), int(batch or 4)
                margin = int(margin) if margin else None
                for _ in range(args.rounds):
                    for backend in backends:        # alternate the sides within a round
                        r = measure(files, tile, batch, margin, backend, root / "out")
                        sec = r["seconds"]
                        total = sum(sec.values())
                        print(f"{name:>16} {spec:>8} {backend:>8} "
                              + " ".join(f"{sec[s]:>9.3f}" for s in STAGES)
                              + f" {total:>8.2f} {total / mpx:>6.2f} "
                              f"{100 * sec['network'] / total:>5.0f} {r['peak_mib']:>8.0f} "
                              f"{r['objects']:>7}", flush=True)
                    if args.command and spec == args.tiles.split(",")[0]:
                        seconds = command(files, tile, root)
                        print(f"{name:>16} {spec:>8} {'command':>8} "
                              + " ".join(f"{'':>9}" for _ in STAGES)
                              + f" {seconds:>8.2f} {seconds / mpx:>6.2f}", flush=True)
        if args.command:
            tiny = make_images(root, 64, 1, seed=3)
            print(f"{'64x64':>16} {'':>8} {'command':>8} "
                  + " ".join(f"{'':>9}" for _ in STAGES)
                  + f" {command(tiny, 1024, root):>8.2f}   (start-up: Python, imports, "
                  "loading the compiled kernels, the model)", flush=True)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _pixels(path: Path) -> int:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        shape = tif.pages[0].shape
    return int(shape[0] * shape[1])


if __name__ == "__main__":
    main()
