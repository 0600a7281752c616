"""Beyond memory and beyond one machine: chunked large images, collections on a local Dask
cluster, training sets read from disk. Runs when the `scale` extra is installed."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("dask")
pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from tiny_net import PixelNet  # noqa: E402

import minunet as mu  # noqa: E402
from minunet import workflow  # noqa: E402
from minunet.cli import main  # noqa: E402
from minunet.io.lazy import FolderSet, ZarrSet, write_zarr_set  # noqa: E402
from minunet.predict import DEFAULT_NORMALIZATION  # noqa: E402
from minunet.scaleout import common, large, predict_files, segment_large  # noqa: E402

PERCENTILE = {"method": "percentile", "low": 1.0, "high": 99.8}


def small_unet(depth=2, seed=0):
    model = mu.UNet(1, 3, depth=depth, base_channels=4, rng=np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)  # batch norm statistics as after training
    for _, module in model.named_modules():
        if isinstance(module, mu.BatchNorm2d):
            module.running_mean[:] = rng.normal(0, 0.1, module.running_mean.shape)
            module.running_var[:] = rng.uniform(0.5, 1.5, module.running_var.shape)
    return model.eval()


def class_code_net():
    """A per-pixel 'network' that reads a class code image (0 background, 0.5 boundary,
    1 interior) back into three-class probabilities: realistic touching cells, known labels."""
    model = PixelNet(rng=0)
    model.weight.data[:] = np.array([[-10.0], [10.0], [0.0]], np.float32)
    model.bias.data[:] = np.array([2.0, -8.0, 0.0], np.float32)
    model.depth = 2  # the pooling grid predict() aligns tiles to
    return model.eval()


def dense_cells(shape=(300, 236), seed=3):
    _, labels, _ = mu.data.generate(1, "shift-dense", size=shape, seed=seed)
    code = np.choose(mu.data.three_class(labels[0]), [0.0, 1.0, 0.5])
    noise = np.random.default_rng(seed).normal(0, 0.1, code.shape)
    return (code + noise).astype(np.float32)


def f1(a, b, thresh=0.9):
    return mu.metrics.match(np.asarray(a, np.int32), np.asarray(b, np.int32), thresh).f1


def write_source(kind, image, folder):
    """The same image as a tiled TIFF, an uncompressed TIFF, a Zarr array, an OME-Zarr group
    (t, c, y, x axes with length-one t and c) or an .npy file."""
    if kind == "tiled_tiff":
        path = folder / "image.tif"
        tifffile.imwrite(path, image, tile=(32, 32), compression="zlib")
    elif kind == "plain_tiff":
        path = folder / "image.tiff"
        tifffile.imwrite(path, image)
    elif kind == "zarr":
        path = folder / "image.zarr"
        zarr.create_array(str(path), data=image, chunks=(48, 40))
    elif kind == "ome_zarr":
        path = folder / "image.ome.zarr"
        group = zarr.open_group(str(path), mode="w")
        group.create_array("0", data=image[None, None], chunks=(1, 1, 50, 50))
        group.attrs["ome"] = {"version": "0.5", "multiscales": [{
            "axes": [{"name": n} for n in "tcyx"], "datasets": [{"path": "0"}]}]}
    else:
        path = folder / "image.npy"
        np.save(path, image)
    return path


# -------------------------------------------------------------------- large images
@pytest.mark.parametrize("kind", ["tiled_tiff", "plain_tiff", "zarr", "ome_zarr", "npy"])
def test_chunked_probabilities_equal_in_memory(kind, tmp_path):
    """Every source format, an image that is no multiple of the block, global percentiles:
    the chunked probabilities are the in-memory ones (to float round-off), and so are the
    labels."""
    model = small_unet()
    rng = np.random.default_rng(5)
    image = (rng.gamma(2.0, 400.0, (173, 141)) + 100).astype(np.uint16)
    if kind == "npy":
        image = image.astype(np.float32) / 7  # floats: the two-pass percentile path
    meta = {"normalization": PERCENTILE, "postprocess": {"min_size": 8}}
    source = write_source(kind, image, tmp_path)
    out = segment_large((model, meta), source, tmp_path / "labels.zarr",
                        probs_out=tmp_path / "probs.zarr", block=64, halo=16, progress=False)
    labels, probs = workflow.segment(model, image, PERCENTILE, min_size=8)
    chunked = zarr.open_array(str(tmp_path / "probs.zarr"))[:]
    np.testing.assert_allclose(chunked, probs, rtol=0, atol=1e-6)
    result = zarr.open_array(str(tmp_path / "labels.zarr"))[:]
    assert out["blocks"] == 9 and out["objects"] == result.max()
    assert abs(int(result.max()) - int(labels.max())) <= 0.01 * labels.max()
    assert f1(labels, result) >= 0.99


@pytest.mark.parametrize("kind", ["tiled_tiff", "npy"])
def test_chunked_default_normalisation_equals_in_memory(kind, tmp_path):
    """The default (foreground) normalisation, which the bundled model uses: its whole-image
    numbers (1st percentile, Otsu on the smoothed image, median above it) come out exactly as
    in memory, so the chunked probabilities equal the in-memory ones."""
    model = small_unet()
    rng = np.random.default_rng(6)
    image = rng.gamma(2.0, 400.0, (173, 141)) + 100
    yy, xx = np.mgrid[:173, :141]
    for cy, cx, r2, gain in [(40, 30, 200, 3000), (120, 100, 300, 9000), (90, 60, 150, 4000)]:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r2] += gain   # cells of different brightness
    image = image.astype(np.uint16) if kind == "tiled_tiff" else image.astype(np.float32)
    meta = {"normalization": DEFAULT_NORMALIZATION, "postprocess": {"min_size": 8}}
    source = write_source(kind, image, tmp_path)
    segment_large((model, meta), source, tmp_path / "labels.zarr",
                  probs_out=tmp_path / "probs.zarr", block=64, halo=16, progress=False)
    _, probs = workflow.segment(model, image, DEFAULT_NORMALIZATION, min_size=8)
    chunked = zarr.open_array(str(tmp_path / "probs.zarr"))[:]
    np.testing.assert_allclose(chunked, probs, rtol=0, atol=1e-6)


def test_labels_are_stitched_across_block_borders(tmp_path, monkeypatch):
    """Dense touching cells cut by many borders: one label per cell, ids 1..N, the same
    objects as in memory (F1 at IoU 0.9); Zarr and tiled TIFF outputs agree. Without the
    strip matching, cells cut by a border would be split and the F1 falls."""
    image = dense_cells()
    meta = {"normalization": {"method": "none"}, "postprocess": {"min_size": 8}}
    model = class_code_net()
    source = write_source("npy", image, tmp_path)
    in_memory, _ = workflow.segment(model, image, meta["normalization"], min_size=8)
    assert in_memory.max() > 40
    segment_large((model, meta), source, tmp_path / "l.zarr", block=64, halo=32,
                  progress=False)
    segment_large((model, meta), source, tmp_path / "l.tif", block=64, halo=32,
                  progress=False)
    as_zarr = zarr.open_array(str(tmp_path / "l.zarr"))[:]
    as_tiff = tifffile.imread(tmp_path / "l.tif")
    assert as_tiff.dtype == np.uint32 and np.array_equal(as_zarr, as_tiff)
    assert np.array_equal(np.unique(as_zarr), np.arange(as_zarr.max() + 1))
    assert f1(in_memory, as_zarr) >= 0.99

    monkeypatch.setattr(large, "match_strip", lambda a, b: [])
    segment_large((model, meta), source, tmp_path / "unstitched.zarr", block=64, halo=32,
                  progress=False)
    assert f1(in_memory, zarr.open_array(str(tmp_path / "unstitched.zarr"))[:]) < 0.9


def test_outputs_are_never_overwritten_and_failures_leave_nothing(tmp_path):
    model = small_unet()
    meta = {"normalization": PERCENTILE}
    source = write_source("npy", np.random.default_rng(0).random((70, 60)), tmp_path)
    (tmp_path / "taken.tif").write_bytes(b"a user's file")
    with pytest.raises(FileExistsError, match="never overwrites"):
        segment_large((model, meta), source, tmp_path / "taken.tif", progress=False)
    assert (tmp_path / "taken.tif").read_bytes() == b"a user's file"
    before = sorted(tmp_path.iterdir())

    class Broken(PixelNet):
        depth = 2

        def forward(self, x):
            raise FloatingPointError("the network broke")

    with pytest.raises(RuntimeError, match="block .* failed: FloatingPointError"):
        segment_large((Broken(), meta), source, tmp_path / "new.zarr",
                      probs_out=tmp_path / "p.zarr", block=32, progress=False)
    assert sorted(tmp_path.iterdir()) == before  # no output, no temporary left behind


# -------------------------------------------------------------------- a local cluster
@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", host="127.0.0.1") as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    mu.save(small_unet(), path, normalization=PERCENTILE, postprocess={"min_size": 8})
    return path


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        tifffile.imwrite(images / f"im{i}.tif",
                         rng.integers(0, 4000, (64 + 8 * i, 56), dtype=np.uint16))
    (images / "broken.tif").write_bytes(b"not a tiff")
    return images


def test_large_image_on_a_cluster_equals_one_process(client, checkpoint, tmp_path):
    image = np.random.default_rng(2).integers(0, 4000, (150, 130), dtype=np.uint16)
    source = write_source("tiled_tiff", image, tmp_path)
    segment_large(checkpoint, source, tmp_path / "local.zarr", block=64, progress=False)
    segment_large(str(checkpoint), source, tmp_path / "cluster.zarr", block=64,
                  client=client, progress=False)
    local = zarr.open_array(str(tmp_path / "local.zarr"))[:]
    assert np.array_equal(local, zarr.open_array(str(tmp_path / "cluster.zarr"))[:])


def test_collection_on_a_cluster_equals_the_plain_command(client, checkpoint, folder,
                                                          tmp_path, capsys):
    files = sorted(folder.glob("im*.tif"))
    assert main(["predict", str(checkpoint), *map(str, files), "--out",
                 str(tmp_path / "plain"), "--probs"]) == 0
    report = predict_files(checkpoint, sorted(folder.iterdir()), tmp_path / "api",
                           client=client, probs=True)
    assert not report.ok and list(report.failed) == [str(folder / "broken.tif")]
    assert "TiffFileError" in report.failed[str(folder / "broken.tif")]
    assert sorted(Path(f).name for f in report.done) == [f.name for f in files]
    loads = client.run(lambda: dict(common.LOADS))  # worker address -> {path: loads}
    assert sum(n for per in loads.values() for n in per.values()) >= 1
    assert all(n == 1 for per in loads.values() for n in per.values())  # once per worker
    progress = capsys.readouterr().err
    assert "[5/5]" in progress and "FAILED" in progress
    for f in files:
        for name in (f"{f.stem}.tif", f"probs/{f.stem}.npy"):
            plain, api = tmp_path / "plain" / name, tmp_path / "api" / name
            read = tifffile.imread if name.endswith(".tif") else np.load
            assert np.array_equal(read(plain), read(api)), name


def test_predict_command_with_workers(checkpoint, folder, tmp_path, capsys, monkeypatch):
    """`--workers 2` starts a local cluster; the broken file is named, exit code 2, the rest
    are written; progress names the files as they were given (here relative)."""
    monkeypatch.chdir(folder.parent)
    code = main(["predict", str(checkpoint), folder.name, "--out", str(tmp_path / "out"),
                 "--workers", "2"])
    captured = capsys.readouterr()
    assert code == 2
    assert "broken.tif" in captured.err and "4 of 5 files labelled" in captured.out
    assert f"] {folder.name}/im0.tif -> " in captured.err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == [
        f"im{i}.tif" for i in range(4)]


def test_plain_predict_imports_nothing_of_dask(checkpoint, folder, tmp_path):
    (folder / "broken.tif").unlink()
    script = (
        "import sys; from minunet.cli import main; import minunet.scaleout, minunet.io.lazy; "
        f"assert main(['predict', {str(checkpoint)!r}, {str(folder)!r}, '--out', "
        f"{str(tmp_path / 'out')!r}]) == 0; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'dask', 'distributed', "
        "'zarr'}))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


# -------------------------------------------------------------------- data on disk
@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    root = tmp_path_factory.mktemp("lazy")
    mu.data.generate_dataset(root / "cells", 10, "standard", size=(48, 40), seed=0)
    images, labels, _ = mu.data.load_dataset(root / "cells")
    write_zarr_set(root / "cells.zarr", images, labels, normalization=PERCENTILE)
    return root, images, labels


def _train(train_data, val_data):
    model = mu.UNet(1, 3, depth=1, base_channels=4, rng=np.random.default_rng(0))
    history = mu.train(model, train_data, val_data, epochs=2, batch_size=4, lr=1e-2, crop=32,
                       augment=workflow.make_augment(), seed=1, progress=False)
    return model.state_dict(), history


def test_lazy_sets_train_exactly_as_arrays(cells):
    """Same seed: the same shuffles, crops and augmentations, bit-identical weights; a lazy
    validation set gives the same validation loss too."""
    root, images, labels = cells
    x, t, w = workflow.training_arrays(images, labels, PERCENTILE)
    want, history = _train((x[3:], t[3:], w[3:]), (x[:3], t[:3], w[:3]))
    for whole in (FolderSet(root / "cells", normalization=PERCENTILE),
                  ZarrSet(root / "cells.zarr")):
        val, train = whole.split(3)
        got, lazy_history = _train(train, val)
        assert all(np.array_equal(want[k], got[k]) for k in want)
        assert lazy_history["val_loss"] == history["val_loss"]


def test_train_command_reads_data_lazily_with_the_same_result(cells, tmp_path):
    root, images, labels = cells
    store = tmp_path / "cells.zarr"  # written with the command's own normalisation
    write_zarr_set(store, images, labels, normalization=DEFAULT_NORMALIZATION)
    common = ["--epochs", "1", "--batch-size", "4", "--crop", "32", "--depth", "1", "--base",
              "4", "--val-fraction", "0.2"]
    runs = {"memory": ["--data", str(root / "cells")],
            "lazy": ["--data", str(root / "cells"), "--lazy"],
            "zarr": ["--data", str(store)]}
    for name, source in runs.items():
        assert main(["train", *source, "--out", str(tmp_path / name), *common]) == 0
    want = mu.load(tmp_path / "memory" / "last.npz")
    for name in ("lazy", "zarr"):
        got = mu.load(tmp_path / name / "last.npz")
        assert got.metadata == want.metadata
        assert all(np.array_equal(a, b) for a, b in zip(
            want.model.state_dict().values(), got.model.state_dict().values(), strict=True))


def test_predict_command_chunked(checkpoint, tmp_path, capsys):
    """`minunet predict --chunked`: a TIFF and an OME-Zarr in, NAME.ome.zarr out, the same
    objects as the in-memory command; an existing output is refused before anything runs."""
    image = np.random.default_rng(4).integers(0, 4000, (140, 120), dtype=np.uint16)
    tiff = write_source("tiled_tiff", image, tmp_path).rename(tmp_path / "slide.tif")
    ome = write_source("ome_zarr", image, tmp_path)
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(tiff), str(ome), "--out", str(out),
                 "--chunked", "--block", "64", "--probs"]) == 0
    ckpt = mu.load(checkpoint)
    labels, probs = workflow.segment(ckpt.model, image, PERCENTILE, min_size=8)
    for name in ("slide", "image"):
        chunked = zarr.open_array(str(out / f"{name}.ome.zarr" / "labels" / "cells" / "0"))[:]
        assert f1(labels, chunked) >= 0.99
        np.testing.assert_allclose(zarr.open_array(str(out / f"{name}_probs.zarr"))[:], probs,
                                   rtol=0, atol=1e-6)
    capsys.readouterr()
    assert main(["predict", str(checkpoint), str(tiff), "--out", str(out), "--chunked"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_predict_command_with_a_scheduler_address(client, checkpoint, folder, tmp_path):
    """`--scheduler ADDRESS` uses a running cluster (here the module's local one) and leaves it
    running."""
    (folder / "broken.tif").unlink()
    address = client.scheduler.address
    assert main(["predict", str(checkpoint), str(folder), "--out", str(tmp_path / "out"),
                 "--scheduler", address]) == 0
    assert len(list((tmp_path / "out").glob("im*.tif"))) == 4
    assert client.status == "running" and len(client.scheduler_info()["workers"]) == 2
