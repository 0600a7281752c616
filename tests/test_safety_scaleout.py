"""The rules of the command hold on the chunked and cluster paths (`minunet.scaleout`):
inputs are never replaced, earlier outputs only with overwrite, a bad file in a batch is named
and the rest run, temporary stores of a killed run are removed, Ctrl-C says how to go on.

Numbers in the test names are the findings of the issue "Every path keeps the promises"."""

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("dask")
pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

import minunet as mu  # noqa: E402
from minunet.cli import main  # noqa: E402
from minunet.io.lazy import ZarrSet, write_zarr_set  # noqa: E402
from minunet.scaleout import common, large, predict_files, segment_large  # noqa: E402

PERCENTILE = {"method": "percentile", "low": 1.0, "high": 99.8}


def small_unet():
    return mu.UNet(1, 3, depth=2, base_channels=4, rng=np.random.default_rng(0)).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    mu.save(small_unet(), path, normalization=PERCENTILE, postprocess={"min_size": 8})
    return path


@pytest.fixture(scope="module")
def client():
    """An in-process cluster of one worker: the cluster code path, started in a moment."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        yield c


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        tifffile.imwrite(folder / f"{name}.tif", rng.integers(0, 4000, (48, 40), np.uint16))
    return folder


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def outputs(folder):
    """The names of the label stores --chunked wrote (NAME.zarr, or NAME.ome.zarr)."""
    return sorted(p.name.split(".")[0] for p in folder.iterdir() if not p.name.startswith("."))


def dead_pid():
    pid = 4_000_000
    while common.pid_alive(pid):
        pid -= 1
    return pid


# --------------------------------------------------------------- 1. inputs are never replaced
def test_1_predict_files_refuses_the_images_folder(checkpoint, images, tmp_path):
    before = snapshot(images)
    files = sorted(images.glob("*.tif"))
    with pytest.raises(ValueError, match="folder of the input"):
        predict_files(checkpoint, files, images, workers=1)
    assert snapshot(images) == before
    # an input where another input's overlay would be written: refused, even with overwrite
    out = tmp_path / "out"
    (out / "overlays").mkdir(parents=True)
    (out / "overlays" / "a.png").write_bytes(b"a user's picture")
    with pytest.raises(ValueError, match="would replace the input"):
        predict_files(checkpoint, [images / "a.tif", out / "overlays" / "a.png"], out,
                      workers=1, overlays=True, overwrite=True)
    assert (out / "overlays" / "a.png").read_bytes() == b"a user's picture"
    assert snapshot(images) == before


def test_1_predict_files_replaces_earlier_outputs_only_with_overwrite(checkpoint, images,
                                                                      tmp_path, client):
    out = tmp_path / "labels"
    out.mkdir()
    (out / "a.tif").write_bytes(b"an earlier result")
    files = sorted(images.glob("*.tif"))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        predict_files(checkpoint, files, out, client=client, progress=False)
    assert (out / "a.tif").read_bytes() == b"an earlier result"
    assert sorted(p.name for p in out.iterdir()) == ["a.tif"]  # nothing written
    report = predict_files(checkpoint, files, out, client=client, progress=False,
                           overwrite=True)
    assert report.ok and tifffile.imread(out / "a.tif").shape == (48, 40)


def test_1_segment_large_refuses_one_path_for_labels_and_probabilities(checkpoint, tmp_path):
    source = tmp_path / "image.npy"
    np.save(source, np.random.default_rng(0).random((40, 40)))
    before = sorted(tmp_path.iterdir())
    with pytest.raises(ValueError, match="both"):
        segment_large(checkpoint, source, tmp_path / "x.zarr", probs_out=tmp_path / "x.zarr",
                      progress=False)
    for target in (source, tmp_path):  # the source itself, or the folder holding it
        with pytest.raises((ValueError, FileExistsError)):
            segment_large(checkpoint, source, target, progress=False, overwrite=True)
    assert sorted(tmp_path.iterdir()) == before
    assert np.load(source).shape == (40, 40)


def test_1_segment_large_overwrites_only_when_told(checkpoint, tmp_path):
    source = tmp_path / "image.npy"
    np.save(source, np.random.default_rng(0).random((40, 40)))
    labels = tmp_path / "labels.zarr"
    segment_large(checkpoint, source, labels, progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        segment_large(checkpoint, source, labels, progress=False)
    zarr.open_array(str(labels), mode="r+")[:] = 7  # mark the earlier result
    segment_large(checkpoint, source, labels, progress=False, overwrite=True)
    assert not (zarr.open_array(str(labels))[:] == 7).all()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    folder = tmp_path / "mine.zarr"  # a folder of the user's that is not a Zarr store
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a Zarr store"):
        segment_large(checkpoint, source, folder, progress=False, overwrite=True)
    assert (folder / "notes.txt").read_text() == "mine"


# ------------------------------------------------ 11, 21. chunked errors: named, batch goes on
def _corrupt_tiff(path):
    image = np.random.default_rng(3).integers(0, 4000, (64, 64), np.uint16)
    tifffile.imwrite(path, image, tile=(32, 32), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[1]
    data = bytearray(path.read_bytes())
    data[offset:offset + 40] = b"\xff" * 40
    path.write_bytes(bytes(data))
    return path


def test_11_chunked_names_a_bad_input_and_labels_the_others(checkpoint, tmp_path, capsys):
    good = tmp_path / "good.npy"
    np.save(good, np.random.default_rng(0).random((40, 40)))
    broken = _corrupt_tiff(tmp_path / "broken.tif")
    ome = tmp_path / "missing.ome.zarr"
    group = zarr.open_group(str(ome), mode="w")
    group.create_array("0", data=np.zeros((8, 8), np.uint8))
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"datasets": [{"path": "nope"}]}]}
    folder = tmp_path / "plain"
    folder.mkdir()
    tifffile.imwrite(folder / "x.tif", np.zeros((8, 8), np.uint8))
    out = tmp_path / "out"
    code = main(["predict", str(checkpoint), str(broken), str(ome), str(folder), str(good),
                 "--out", str(out), "--chunked", "--block", "32"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert f"{broken}" in err and "cannot be read" in err
    assert f"{ome}" in err and "'nope'" in err and "does not hold" in err
    assert f"{folder} is a folder, not a Zarr store" in err and "without --chunked" in err
    assert outputs(out) == ["good"]  # the only output


# ------------------------------------------ 16. temporary stores of a killed run are removed
def test_16_stale_temporary_stores_are_removed_and_live_ones_kept(checkpoint, tmp_path):
    source = tmp_path / "image.npy"
    np.save(source, np.random.default_rng(0).random((40, 40)))
    stale = tmp_path / f".labels.zarr.{dead_pid()}-0123abcd.tmp.zarr"
    live = tmp_path / f".labels.zarr.{os.getpid()}-0123abcd.tmp.zarr"
    for leftover in (stale, live):
        zarr.create_array(str(leftover), shape=(4, 4), dtype="uint8")
    segment_large(checkpoint, source, tmp_path / "labels.zarr", progress=False)
    assert not stale.exists() and live.exists()
    stale_set = tmp_path / f".set.zarr.{dead_pid()}-0123abcd.tmp.zarr"
    zarr.create_array(str(stale_set), shape=(4, 4), dtype="uint8")
    labels = np.zeros((2, 16, 16), np.int32)
    labels[:, 4:10, 4:10] = 1
    write_zarr_set(tmp_path / "set.zarr", np.random.default_rng(0).random((2, 16, 16)), labels)
    assert not stale_set.exists()


def test_16_predict_files_removes_a_killed_writes_temporary_file(checkpoint, images,
                                                                 tmp_path, client):
    out = tmp_path / "labels"
    out.mkdir()
    stale = out / ".a.tif.k1ll3d.tmp.tif"
    stale.write_bytes(b"half a file")
    assert predict_files(checkpoint, sorted(images.glob("*.tif")), out, client=client,
                         progress=False).ok
    assert not stale.exists()


# ------------------------------------------------ 18. --chunked honours --overwrite, Ctrl-C
def test_18_chunked_honours_overwrite_and_says_how_to_go_on(checkpoint, tmp_path, capsys,
                                                             monkeypatch):
    sources = []
    for name in ("one", "two"):
        sources.append(tmp_path / f"{name}.npy")
        np.save(sources[-1], np.random.default_rng(0).random((40, 40)))
    out = tmp_path / "out"
    argv = ["predict", str(checkpoint), *map(str, sources), "--out", str(out), "--chunked"]
    assert main(argv) == 0
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    real = large.segment_large
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(large, "segment_large", interrupted)
    assert main([*argv, "--overwrite"]) == 130
    err = capsys.readouterr().err
    assert "interrupted after 1 of 2" in err and "--overwrite" in err


# ------------------------------------------------------- 15. training stores are checked
def test_15_a_damaged_training_store_is_named_with_its_problem(tmp_path):
    labels = np.zeros((3, 16, 16), np.int32)
    labels[:, 4:10, 4:10] = 1
    store = tmp_path / "s.zarr"
    write_zarr_set(store, np.random.default_rng(0).random((3, 16, 16)), labels)
    assert len(ZarrSet(store)) == 3
    import shutil

    shutil.rmtree(store / "weights")
    with pytest.raises(ValueError, match=r"no array weights.*write it again"):
        ZarrSet(store)
    group = zarr.open_group(str(store), mode="r+")
    group.create_array("weights", shape=(2, 16, 16), dtype="float32")   # one sample short
    with pytest.raises(ValueError, match="shapes do not fit together"):
        ZarrSet(store)
    with pytest.raises(ValueError, match="not a Zarr group"):
        ZarrSet(tmp_path)


def test_18_workers_say_how_to_go_on_after_ctrl_c(checkpoint, images, tmp_path, capsys,
                                                  monkeypatch):
    from minunet.scaleout import collection

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(collection, "predict_files", interrupted)
    code = main(["predict", str(checkpoint), str(images), "--out", str(tmp_path / "out"),
                 "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted" in err and "--overwrite" in err, err



def test_16_kill_9_of_chunked_leaves_a_store_the_next_run_removes(checkpoint, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    source = tmp_path / "big.npy"
    np.save(source, np.random.default_rng(0).random((768, 768)).astype(np.float32))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "minunet.cli", "predict", str(checkpoint), str(source),
            "--out", str(out), "--chunked", "--block", "64"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and not list(
            out.glob(".big.*.tmp*")):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert list(out.glob(".big.*.tmp*")), "the run ended before it could be killed"
    assert subprocess.run(argv, env=env, capture_output=True, timeout=300).returncode == 0
    assert outputs(out) == ["big"] and not list(out.glob(".*"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only")
def test_11_a_fifo_among_the_inputs_is_named_not_waited_on(checkpoint, images, tmp_path,
                                                           client):
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    code = main(["predict", str(checkpoint), str(fifo), str(images / "a.tif"), "--out",
                 str(out), "--chunked", "--block", "32"])
    assert code == 2 and outputs(out) == ["a"]
    report = predict_files(checkpoint, [fifo, images / "b.tif"], tmp_path / "labels",
                           client=client, progress=False)
    assert "not a regular file" in report.failed[str(fifo)]
    assert list(report.done) == [str(images / "b.tif")]


def test_17_chunked_refuses_a_bad_checkpoint_before_writing(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    source = tmp_path / "image.npy"
    np.save(source, np.zeros((32, 32)))
    code = main(["predict", str(bad), str(source), "--out", str(tmp_path / "out"),
                 "--chunked"])
    assert code == 2 and "bad.npz" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_7_segment_large_checks_the_settings_it_is_given_before_writing(tmp_path):
    source = tmp_path / "image.npy"
    np.save(source, np.zeros((32, 32)))
    for metadata, name in (({"postprocess": {"fg_thresh": float("nan")}}, "fg_thresh"),
                           ({"normalization": {"method": "foreground", "level": 0}}, "level")):
        with pytest.raises(ValueError, match=name):
            segment_large((small_unet(), metadata), source, tmp_path / "l.zarr",
                          progress=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["image.npy"]


def test_19_a_full_disk_while_writing_a_training_store_names_it(tmp_path, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    labels = np.zeros((2, 16, 16), np.int32)
    monkeypatch.setattr("minunet.io.lazy._sample_from", full)
    with pytest.raises(OSError, match=r"set\.zarr.*free some disk space"):
        write_zarr_set(tmp_path / "set.zarr", np.zeros((2, 16, 16)), labels)
    assert list(tmp_path.iterdir()) == []


# --- an output folder in use is refused (finding 2 on the cluster and chunked paths) --------
def test_predict_files_refuses_an_output_folder_another_run_holds(checkpoint, images, client,
                                                                  tmp_path):
    from minunet.io.locks import FolderLock, FolderLocked

    out = tmp_path / "labels"
    out.mkdir()
    files = sorted(images.glob("*.tif"))
    with FolderLock(out, "minunet predict (another run)"):
        with pytest.raises(FolderLocked, match="another run"):
            predict_files(checkpoint, files, out, client=client, progress=False)
        assert sorted(p.name for p in out.iterdir()) == [".minunet.lock"]
    report = predict_files(checkpoint, files, out, client=client, progress=False)
    assert len(report.done) == 2 and not (out / ".minunet.lock").exists()


def test_chunked_refuses_an_output_folder_another_run_holds(checkpoint, images, tmp_path,
                                                            capsys):
    from minunet.io.locks import FolderLock

    out = tmp_path / "labels"
    out.mkdir()
    with FolderLock(out, "minunet predict (another run)"):
        code = main(["predict", str(checkpoint), str(images / "a.tif"), "--out", str(out),
                     "--chunked"])
    assert code == 2 and "another run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == []
