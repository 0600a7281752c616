"""Checkpoints: exact round trips, clear errors for bad files, atomic writes, a kill in training."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import minunet as mu
from minunet.checkpoint import FORMAT_VERSION, CheckpointError, load, save
from minunet.optim import Adam

sys.path.insert(0, str(Path(__file__).parent))
from tiny_net import PixelNet

TESTS_DIR = Path(__file__).parent


def trained_pixelnet(rng):
    model = PixelNet(2, 3, rng=rng)
    opt = Adam(model.parameters(), lr=0.1)
    x = rng.standard_normal((2, 2, 4, 5)).astype(np.float32)
    for _ in range(3):
        out = model.forward(x)
        opt.zero_grad()
        model.backward(rng.standard_normal(out.shape).astype(np.float32))
        opt.step()
    return model, opt, x


def test_round_trip_is_bit_identical(tmp_path):
    rng = np.random.default_rng(0)
    model, opt, x = trained_pixelnet(rng)
    path = save(model, tmp_path / "m.npz", opt, position={"epoch": 3},
                normalization={"method": "percentile", "low": 1.0})
    ckpt = load(path, PixelNet)
    np.testing.assert_array_equal(ckpt.model.forward(x), model.eval().forward(x))
    for (name, a), (name_b, b) in zip(model.state_dict().items(),
                                      ckpt.model.state_dict().items(), strict=True):
        assert name == name_b and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert ckpt.metadata == {"normalization": {"method": "percentile", "low": 1.0}}
    assert ckpt.position == {"epoch": 3}
    assert ckpt.format_version == FORMAT_VERSION and ckpt.minunet_version == mu.__version__
    assert ckpt.optimizer_class == "Adam" and ckpt.config == model.config()
    assert not ckpt.model.training
    opt2 = Adam(ckpt.model.parameters())
    opt2.load_state_dict(ckpt.optimizer_state)
    assert opt2.steps == 3 and opt2.lr == 0.1
    np.testing.assert_array_equal(opt2.state["exp_avg_sq"][0], opt.state["exp_avg_sq"][0])


def test_unet_round_trip_rebuilds_from_the_file_alone(tmp_path):
    rng = np.random.default_rng(10)
    model = mu.UNet(2, 3, depth=2, base_channels=4, rng=rng)
    x = rng.standard_normal((2, 2, 8, 12)).astype(np.float32)
    opt = Adam(model.parameters())
    model.forward(x)                      # train mode: moves the running statistics
    model.backward(rng.standard_normal((2, 3, 8, 12)).astype(np.float32))
    opt.step()
    save(model, tmp_path / "unet.npz", opt)
    ckpt = load(tmp_path / "unet.npz")    # the class is found by name, the shape from config
    assert isinstance(ckpt.model, mu.UNet) and ckpt.config == model.config()
    np.testing.assert_array_equal(ckpt.model.forward(x), model.eval().forward(x))
    np.testing.assert_array_equal(ckpt.model.down[1].bn2.running_var,
                                  model.down[1].bn2.running_var)
    with pytest.raises(CheckpointError, match="depth=2.*depth=3"):
        load(tmp_path / "unet.npz", mu.UNet(2, 3, depth=3, base_channels=4, rng=0))


def test_float64_model_comes_back_float64(tmp_path):
    model = PixelNet(1, 2, rng=1).astype(np.float64)
    ckpt = load(save(model, tmp_path / "m.npz"), PixelNet)
    assert ckpt.model.dtype == np.float64 and ckpt.optimizer_state is None
    np.testing.assert_array_equal(ckpt.model.weight.data, model.weight.data)


def test_load_into_an_instance(tmp_path):
    model, _, x = trained_pixelnet(np.random.default_rng(2))
    save(model, tmp_path / "m.npz")
    other = PixelNet(2, 3, rng=99)
    assert load(tmp_path / "m.npz", other).model is other
    np.testing.assert_array_equal(other.forward(x), model.eval().forward(x))


def test_files_are_written_without_pickle(tmp_path):
    model, opt, _ = trained_pixelnet(np.random.default_rng(3))
    save(model, tmp_path / "m.npz", opt, note="hello")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)
        header = json.loads(str(npz["minunet_header"]))
    assert header["model_class"] == "PixelNet" and header["metadata"] == {"note": "hello"}


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        save(PixelNet(rng=0), tmp_path / "m.npz", mean=np.zeros(3))
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


# ------------------------------------------------------------------ bad files
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nope.npz")


def test_missing_folder_on_save(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save(PixelNet(rng=0), tmp_path / "no" / "m.npz")


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9, 0.999])
def test_truncated_file(tmp_path, keep):
    model, opt, _ = trained_pixelnet(np.random.default_rng(4))
    data = save(model, tmp_path / "m.npz", opt).read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load(tmp_path / "cut.npz", PixelNet)


def test_corrupted_bytes(tmp_path):
    model, opt, _ = trained_pixelnet(np.random.default_rng(5))
    path = save(model, tmp_path / "m.npz", opt)
    data = bytearray(path.read_bytes())
    # flip bytes inside the stored weights: the zip's CRC check must catch it
    with np.load(path) as npz:
        weight = npz["model/weight"].tobytes()
    at = bytes(data).index(weight)
    data[at:at + 4] = bytes(b ^ 0xFF for b in data[at:at + 4])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load(path, PixelNet)


def test_not_a_minunet_file(tmp_path):
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not written by minunet"):
        load(tmp_path / "other.npz")
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match="not an .npz"):
        load(tmp_path / "array.npy")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CheckpointError, match="corrupted, or not an .npz"):
        load(tmp_path / "text.npz")
    np.savez(tmp_path / "pickled.npz", minunet_header=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError):
        load(tmp_path / "pickled.npz")


def test_other_format_version(tmp_path):
    path = save(PixelNet(rng=0), tmp_path / "m.npz")
    with np.load(path) as npz:
        contents = dict(npz)
    header = json.loads(str(contents["minunet_header"]))
    header["format_version"] = FORMAT_VERSION + 1
    contents["minunet_header"] = np.array(json.dumps(header))
    np.savez(path, **contents)
    with pytest.raises(CheckpointError, match=f"format version {FORMAT_VERSION + 1}"):
        load(path, PixelNet)


def test_other_architecture(tmp_path):
    path = save(PixelNet(1, 3, rng=0), tmp_path / "m.npz")
    with pytest.raises(CheckpointError, match="in_channels=2"):
        load(path, PixelNet(2, 3, rng=0))
    # a file whose weights do not match its own config
    with np.load(path) as npz:
        contents = dict(npz)
    contents["model/weight"] = np.zeros((3, 5), np.float32)
    np.savez(path, **contents)
    with pytest.raises(CheckpointError, match="do not fit"):
        load(path, PixelNet)


def test_unknown_class_needs_to_be_passed(tmp_path):
    path = save(PixelNet(rng=0), tmp_path / "m.npz")
    with pytest.raises(CheckpointError, match="model=PixelNet"):
        load(path)


# ------------------------------------------------------------------ atomic writes
def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    model, opt, _ = trained_pixelnet(np.random.default_rng(6))
    path = save(model, tmp_path / "m.npz", opt)
    good = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt  # a crash mid-write

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        save(PixelNet(2, 3, rng=7), path, opt)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # the temp file is gone


KILL_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    import minunet as mu
    from tiny_net import PixelNet
    rng = np.random.default_rng(0)
    images = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
    targets = (images[:, 0] > 0).astype(np.int64)
    mu.train(PixelNet(1, 2, rng=1), (images, targets, None), (images, targets, None),
             epochs=10**6, batch_size=4, lr=1e-2, out_dir={out!r}, resume=True, progress=False)
""")


def test_kill_during_training_leaves_a_loadable_checkpoint_and_resume_continues(tmp_path):
    out = tmp_path / "run"
    script = tmp_path / "run_train.py"
    script.write_text(KILL_SCRIPT.format(tests=str(TESTS_DIR), out=str(out)))
    delay = np.random.default_rng().uniform(0.0, 0.5)  # the random moment
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out / "last.npz").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the training subprocess wrote no checkpoint"
            time.sleep(0.01)
        time.sleep(delay)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()

    ckpt = load(out / "last.npz", PixelNet)  # must load, whatever the moment of the kill
    done = ckpt.position["epoch"]
    assert done >= 1, f"killed after {delay:.3f} s"

    rng = np.random.default_rng(0)
    images = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
    targets = (images[:, 0] > 0).astype(np.int64)
    data = (images, targets, None)
    resumed = PixelNet(1, 2, rng=1)
    history = mu.train(resumed, data, data, epochs=done + 2, batch_size=4, lr=1e-2,
                       out_dir=out, resume=True, progress=False)
    straight = PixelNet(1, 2, rng=1)
    reference = mu.train(straight, data, data, epochs=done + 2, batch_size=4, lr=1e-2,
                         progress=False)
    assert history["epoch"] == list(range(1, done + 3))
    np.testing.assert_array_equal(resumed.weight.data, straight.weight.data)
    assert history["val_loss"] == reference["val_loss"]
    logged = [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, done + 3))
    assert sorted(p.name for p in out.iterdir()) == ["best.npz", "last.npz", "log.jsonl"]


# ------------------------------------------------------------------ crafted files (refused
# from the header and the array headers, before the model is built or a weight unpacked)
def unet_file(tmp_path, name="unet.npz"):
    model = mu.UNet(1, 3, depth=2, base_channels=4, rng=0)
    path = save(model, tmp_path / name, Adam(model.parameters()))
    with np.load(path) as npz:
        contents = dict(npz)
    return path, contents, json.loads(str(contents["minunet_header"]))


def rewrite(path, contents, header=None, compressed=False):
    if header is not None:
        contents = {**contents, "minunet_header": np.array(json.dumps(header))}
    (np.savez_compressed if compressed else np.savez)(path, **contents)


@pytest.fixture
def no_building(monkeypatch):
    """Fail loudly if load() builds a U-Net: the checks must come first."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("the model was built before the file was checked")
    return lambda: monkeypatch.setattr(mu.UNet, "__init__", refuse)


@pytest.mark.parametrize("key, value", [("depth", 9), ("depth", 1000), ("depth", 0),
                                        ("depth", "3"), ("base_channels", 10**9),
                                        ("base_channels", 1024), ("in_channels", -1)])
def test_absurd_model_sizes_are_refused_before_building(tmp_path, no_building, key, value):
    path, contents, header = unet_file(tmp_path)
    header["model_config"][key] = value
    rewrite(path, contents, header)
    no_building()
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=f"unet.npz.*'model_config(.{key})?'"):
        load(path)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("drop", ["model_config", "model_class", "metadata", "model_dtype"])
def test_header_entries_missing_or_wrong_are_named(tmp_path, drop):
    path, contents, header = unet_file(tmp_path)
    rewrite(path, contents, {k: v for k, v in header.items() if k != drop})
    with pytest.raises(CheckpointError, match=f"unet.npz.*no '{drop}' entry"):
        load(path)
    header[drop] = [1, 2]
    rewrite(path, contents, header)
    with pytest.raises(CheckpointError, match=f"unet.npz.*'{drop}'"):
        load(path)


def test_compressed_bomb_is_refused_before_unpacking(tmp_path, monkeypatch):
    path, contents, _ = unet_file(tmp_path)
    key = "model/head.weight"
    contents[key] = np.zeros((64, 1024, 1024), np.float32)  # 256 MiB of zeros: ~250 kB packed
    rewrite(path, contents, compressed=True)
    assert path.stat().st_size < 2**20

    def no_unpacking(*args, **kwargs):
        raise AssertionError("an array was unpacked before the sizes were checked")
    monkeypatch.setattr(np.lib.format, "read_array", no_unpacking)
    with pytest.raises(CheckpointError, match=f"unet.npz.*'{key}'"):
        load(path)


def test_wrong_shape_is_refused_from_the_array_header(tmp_path, monkeypatch):
    path, contents, _ = unet_file(tmp_path)
    contents["model/head.weight"] = np.zeros((3, 4, 2, 2), np.float32)
    rewrite(path, contents)
    real = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda f, **kw: (
        real(f, **kw) if f.name == "minunet_header.npy" else pytest.fail("unpacked")))
    with pytest.raises(CheckpointError, match="'model/head.weight' has shape"):
        load(path)


@pytest.mark.parametrize("bad", ["nan", "inf", "complex", "int", "object"])
def test_weights_must_be_finite_real_floats(tmp_path, bad):
    path, contents, _ = unet_file(tmp_path)
    key = "model/down.0.conv1.weight"
    w = contents[key]
    contents[key] = {
        "nan": np.where(np.arange(w.size).reshape(w.shape) == 5, np.nan, w).astype(w.dtype),
        "inf": np.full_like(w, np.inf),
        "complex": w.astype(np.complex64),
        "int": w.astype(np.int32),
        "object": None,
    }[bad]
    if bad == "object":
        contents[key] = np.empty(w.shape, dtype=object)
    rewrite(path, contents)
    with pytest.raises(CheckpointError, match=f"unet.npz.*'{key}'"):
        load(path)


def test_unet_parameter_count_matches_the_model():
    from minunet.checkpoint import unet_parameter_count
    for config in ({"depth": 1, "base_channels": 4}, {"depth": 3, "base_channels": 16,
                                                       "in_channels": 2, "num_classes": 4}):
        model = mu.UNet(rng=0, **config)
        assert unet_parameter_count(**config) == sum(p.data.size for p in model.parameters())


def test_load_takes_a_run_folder_and_a_pretrained_name(tmp_path, monkeypatch):
    from minunet import models
    model = PixelNet(rng=0)
    run = tmp_path / "run"
    run.mkdir()
    save(model, run / "last.npz")
    assert load(run, PixelNet).path == run / "last.npz"
    save(model, run / "best.npz")
    assert load(run, PixelNet).path == run / "best.npz"
    with pytest.raises(FileNotFoundError, match="no best.npz or last.npz"):
        load(tmp_path / "run" / "..", PixelNet)
    monkeypatch.setattr(models, "PRETRAINED", {"pix": "test"})
    monkeypatch.setattr(models, "HERE", run)
    save(model, run / "pix.npz")
    assert load("pix", PixelNet).path == run / "pix.npz"
    with pytest.raises(FileNotFoundError, match="pretrained models: pix"):
        load("nothing", PixelNet)


def test_only_self_describing_models_are_rebuilt_by_name(tmp_path, monkeypatch):
    path, contents, header = unet_file(tmp_path)
    header["model_class"] = "Conv2d"
    header["model_config"] = {"in_channels": 10**6, "out_channels": 10**6, "kernel_size": 3}
    rewrite(path, contents, header)
    monkeypatch.setattr(mu.Conv2d, "__init__", lambda *a, **k: pytest.fail("built a Conv2d"))
    with pytest.raises(CheckpointError, match="Conv2d, which is not a minunet model"):
        load(path)
