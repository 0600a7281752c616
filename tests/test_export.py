"""ONNX graphs and bioimage.io packages (the `export` extra): onnxruntime must give minunet's
probabilities, and bioimageio.spec / bioimageio.core must accept the package and reproduce its
test tensors. Skipped where the extra is not installed; CI installs it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minunet as mu
from minunet.cli import main
from minunet.predict import receptive_radius, softmax

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TOL = 1e-4  # the bar for float32 probabilities


def test_default_path_imports_none_of_the_extra():
    """`import minunet` and the command (its parser too) load nothing of the export extra."""
    code = ("import sys, minunet, minunet.cli; minunet.cli._parser(); "
            "print([m for m in ('onnx', 'onnxruntime', 'bioimageio', 'ome_zarr') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.stdout.strip() == "[]"


def random_unet(depth=2, base=4, seed=0):
    """A U-Net whose batch norms are far from the identity (random running statistics, scale
    and shift), so that a mix-up of mean and variance, or a missing epsilon, shows."""
    rng = np.random.default_rng(seed)
    net = mu.UNet(depth=depth, base_channels=base, rng=seed)
    state = net.state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = rng.uniform(0.2, 3.0, value.shape).astype(np.float32)
        elif key.endswith(("running_mean", "bias")) or key.endswith("bn1.weight"):
            state[key] = rng.normal(0, 0.5, value.shape).astype(np.float32)
    net.load_state_dict(state)
    return net.eval()


def session(model):
    from minunet.export import onnx_model

    return ort.InferenceSession(onnx_model(model).SerializeToString(),
                                providers=["CPUExecutionProvider"])


def minunet_probs(net, x):
    net.eval()
    net.set_grad_enabled(False)
    return softmax(net(x))


@pytest.mark.parametrize("readable", [True, False])
def test_onnx_matches_minunet_on_several_sizes(readable):
    net = random_unet()
    net_readable = mu.UNet(depth=2, base_channels=4, readable=readable)
    net_readable.load_state_dict(net.state_dict())
    run = session(net)
    rng = np.random.default_rng(1)
    for shape in [(1, 1, 16, 16), (2, 1, 24, 40), (3, 1, 64, 28)]:
        x = rng.normal(0.3, 0.4, shape).astype(np.float32)
        got = run.run(None, {"image": x})[0]
        assert got.shape == (shape[0], 3, *shape[2:])
        np.testing.assert_allclose(got, minunet_probs(net_readable.eval(), x), atol=TOL)


def test_onnx_of_the_bundled_model_reproduces_predict(tmp_path):
    """The pretrained `nuclei` model, exported by the command: onnxruntime on the normalised
    image, mirror-padded by predict's margin and cropped back, equals `mu.predict`."""
    path = tmp_path / "nuclei.onnx"
    assert main(["export", "nuclei", "--format", "onnx", "--out", str(path)]) == 0
    import onnx

    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    ckpt = mu.load("nuclei")
    assert props["minunet.normalization"] == ckpt.metadata["normalization"]
    run = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images, _, _ = mu.data.generate(1, "standard", size=(96, 128), seed=5)
    x = mu.normalize(images[0], ckpt.metadata["normalization"])            # (H, W)
    margin = -(-receptive_radius(3) // 8) * 8                              # 56 px
    padded = np.pad(x, margin, mode="reflect")[None, None]
    got = run.run(None, {"image": padded})[0][0, :, margin:-margin, margin:-margin]
    np.testing.assert_allclose(got, mu.predict(ckpt.model, x, normalized=True), atol=TOL)
    assert main(["export", "nuclei", "--format", "onnx", "--out", str(path)]) == 2  # kept


@pytest.fixture(scope="module")
def offline():
    """Any attempt of bioimageio to reach the network fails at once (a dead proxy)."""
    saved = {k: os.environ.get(k) for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    os.environ.update({k: "http://127.0.0.1:9" for k in saved})
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def check_package(source):
    from bioimageio.core import test_model
    from bioimageio.spec import load_description

    description = load_description(source)
    assert description.validation_summary.status == "valid-format", \
        description.validation_summary.format()
    summary = test_model(source)
    assert summary.status == "passed", summary.format()
    return description


def test_bioimageio_package_validates_and_passes_its_test(tmp_path, offline):
    pytest.importorskip("bioimageio.core")
    out = tmp_path / "pkg"
    mu.export_bioimageio("nuclei", out, authors=("Ada", "Grace"))
    assert {p.name for p in out.iterdir()} == {
        "rdf.yaml", "model.onnx", "test_input.npy", "test_output.npy", "sample_input.tif",
        "sample_output.tif", "cover.png", "README.md"}
    d = check_package(out / "rdf.yaml")
    assert str(d.license) == "MIT" and [a.name for a in d.authors] == ["Ada", "Grace"]
    assert any(str(c.doi) == "10.1007/978-3-319-24574-4_28" for c in d.cite)
    steps = [s.id for s in d.inputs[0].preprocessing]
    assert "scale_range" in steps
    assert [str(a.id) for a in d.inputs[0].axes] == ["batch", "channel", "y", "x"]
    assert list(d.outputs[0].axes[1].channel_names) == ["background", "interior", "boundary"]
    readme = (out / "README.md").read_text()
    assert "to_instances" in readme and "watershed" in readme and "Otsu" in readme
    assert "## Validation" in readme and "object F1" in readme
    # the test output is minunet's own forward pass on the scale_range-normalised input
    raw = np.load(out / "test_input.npy")[0, 0]
    lo, hi = np.percentile(raw, [1, 99.8])
    x = ((raw - lo) / (hi - lo + 1e-6)).astype(np.float32)[None, None]
    np.testing.assert_allclose(np.load(out / "test_output.npy"),
                               minunet_probs(mu.load("nuclei").model, x), atol=1e-6)


def test_bioimageio_command_writes_a_zip(tmp_path, offline):
    pytest.importorskip("bioimageio.core")
    out = tmp_path / "nuclei.zip"
    assert main(["export", "nuclei", "--format", "bioimageio", "--out", str(out),
                 "--project-url", "https://example.org/minunet"]) == 0
    from bioimageio.spec import load_description  # tests/test_docs_export.py runs the test

    d = load_description(out)
    assert d.validation_summary.status == "valid-format", d.validation_summary.format()
    assert any(c.url is not None for c in d.cite)
    assert main(["export", "nuclei", "--format", "bioimageio", "--out", str(out)]) == 2


def test_percentile_model_uses_its_own_normalisation(tmp_path):
    """A checkpoint normalised by percentiles gets exactly that scale_range."""
    net = random_unet(depth=2, base=4)
    ckpt_path = mu.save(net, tmp_path / "p.npz",
                        normalization={"method": "percentile", "low": 2.0, "high": 99.0})
    out = tmp_path / "pkg"
    rng = np.random.default_rng(2)
    mu.export_bioimageio(ckpt_path, out, test_image=rng.gamma(2.0, 100.0, (64, 56)))
    rdf = (out / "rdf.yaml").read_text()
    assert "min_percentile: 2.0" in rdf and "max_percentile: 99.0" in rdf
    assert "Otsu" not in (out / "README.md").read_text()
    with pytest.raises(FileExistsError):
        mu.export_bioimageio(ckpt_path, out)
    with pytest.raises(ValueError, match="divisible by 4"):
        mu.export_bioimageio(ckpt_path, tmp_path / "bad", test_image=np.zeros((30, 64)))
    with pytest.raises(ValueError, match="at least 52 px"):
        mu.export_bioimageio(ckpt_path, tmp_path / "bad", test_image=np.zeros((48, 64)))
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_bench_export_nuclei_runs(tmp_path):
    """The committed command behind docs/export.md's table (one image per preset here)."""
    pytest.importorskip("bioimageio.core")
    script = os.path.join(os.path.dirname(__file__), "..", "bench", "export_nuclei.py")
    result = subprocess.run([sys.executable, script, "--out", str(tmp_path), "--n", "1"],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test of nuclei-bioimageio.zip: passed" in result.stdout
    assert (tmp_path / "nuclei.onnx").is_file()


def test_export_command_without_the_extra_says_what_to_install(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx" else real(name, *a))
    assert main(["export", "nuclei", "--format", "onnx", "--out",
                 str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'minunet[export]'" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
