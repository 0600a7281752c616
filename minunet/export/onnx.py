"""A minunet U-Net as an ONNX graph, built node by node from its weights (no PyTorch).

    mu.export_onnx("run", "model.onnx")        # a run folder, a .npz file or a model name
    minunet export run --format onnx --out model.onnx

Every layer of the network is one ONNX operator with the same semantics and weight layout:

    minunet                              ONNX (opset OPSET)
    Conv2d(3x3, padding 1, no bias)      Conv          W (Cout, Cin, 3, 3), pads 1
    BatchNorm2d (eval: running stats)    BatchNormalization  scale, B, mean, var, epsilon
    ReLU                                 Relu
    MaxPool2d(2)                         MaxPool       kernel 2x2, stride 2
    ConvTranspose2d(2, stride 2)         ConvTranspose W (Cin, Cout, 2, 2), B, stride 2
    Concat (skip before up-step)         Concat        axis 1
    head Conv2d(1x1, bias)               Conv          W (Kc, c0, 1, 1), B
    softmax over classes                 Softmax       axis 1

Input  "image": float32 (N, 1, H, W), the image already normalised as minunet normalises it
(`mu.normalize`, settings in the checkpoint); N, H and W are free ("batch", "height", "width")
but H and W must be multiples of 2**depth (8 for depth 3), as for `UNet.forward`.
Output "probabilities": float32 (N, Kc, H, W), per pixel background, interior, boundary.
The graph computes one whole image at once: unlike `mu.predict` it does not tile, so the
result equals `mu.predict` on an image that fits one tile (and is close to it otherwise).

The model's metadata_props carry minunet's normalisation and post-processing settings as JSON
(keys "minunet.normalization", "minunet.postprocess", "minunet.config").

OPSET 17 and IR version 8 (onnxruntime >= 1.11, OpenCV DNN >= 4.7, deepImageJ 3 via ONNX
Runtime): every operator used exists unchanged since opset 13 or earlier.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17       # the ai.onnx operator set the graph declares
IR_VERSION = 8   # the file format version; 8 is read by every ONNX Runtime since 1.11
INPUT, OUTPUT = "image", "probabilities"


def load_for_export(model: Any) -> tuple[Any, dict[str, Any]]:
    """(UNet in eval mode, checkpoint metadata) from a path / run folder / model name, a
    Checkpoint, or a bare UNet (empty metadata)."""
    from ..checkpoint import Checkpoint
    from ..inference import as_checkpoint
    from ..unet import UNet

    ckpt = as_checkpoint(model)
    net, metadata = (ckpt.model, ckpt.metadata) if isinstance(ckpt, Checkpoint) else (ckpt, {})
    if not isinstance(net, UNet):
        raise TypeError(f"export: expected a minunet UNet, got a {type(net).__name__}")
    net.eval()
    return net, dict(metadata)


def onnx_model(model: Any, *, opset: int = OPSET, name: str = "minunet U-Net") -> Any:
    """The `onnx.ModelProto` of a U-Net (see the module docstring), checked by onnx.checker."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    net, metadata = load_for_export(model)
    state = {k: np.asarray(v, np.float32) for k, v in net.state_dict().items()}
    modules = dict(net.named_modules())
    nodes: list[Any] = []
    weights: list[Any] = []

    def init(key: str) -> str:  # a state dict entry becomes a graph initializer of that name
        weights.append(numpy_helper.from_array(state[key], name=key))
        return key

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def conv_bn_relu(x: str, prefix: str, i: int) -> str:  # prefix = "down.0", conv i = 1, 2
        conv, bn = f"{prefix}.conv{i}", f"{prefix}.bn{i}"
        x = node("Conv", [x, init(f"{conv}.weight")], conv, kernel_shape=[3, 3],
                 pads=[1, 1, 1, 1])
        x = node("BatchNormalization", [x, init(f"{bn}.weight"), init(f"{bn}.bias"),
                                        init(f"{bn}.running_mean"), init(f"{bn}.running_var")],
                 bn, epsilon=float(modules[bn].eps))
        return node("Relu", [x], f"{prefix}.relu{i}")

    def double_conv(x: str, prefix: str) -> str:
        return conv_bn_relu(conv_bn_relu(x, prefix, 1), prefix, 2)

    x, skips = INPUT, []
    for i in range(net.depth):                                   # encoder
        x = double_conv(x, f"down.{i}")                          # (N, c_i, H/2**i, W/2**i)
        skips.append(x)
        x = node("MaxPool", [x], f"pool.{i}", kernel_shape=[2, 2], strides=[2, 2])
    x = double_conv(x, "bottom")                                 # (N, c_depth, ...)
    for i in reversed(range(net.depth)):                         # decoder
        x = node("ConvTranspose", [x, init(f"upconv.{i}.weight"), init(f"upconv.{i}.bias")],
                 f"upconv.{i}", kernel_shape=[2, 2], strides=[2, 2])
        x = node("Concat", [skips[i], x], f"concat.{i}", axis=1)  # skip first, as UNet does
        x = double_conv(x, f"up.{i}")                            # (N, c_i, H/2**i, W/2**i)
    x = node("Conv", [x, init("head.weight"), init("head.bias")], "logits", kernel_shape=[1, 1])
    node("Softmax", [x], OUTPUT, axis=1)                         # (N, Kc, H, W)

    graph = helper.make_graph(
        nodes, "minunet_unet",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT,
                                       ["batch", net.in_channels, "height", "width"])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT,
                                       ["batch", net.num_classes, "height", "width"])],
        initializer=weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=IR_VERSION, producer_name="minunet",
                              producer_version=_version(), doc_string=_doc(net, name))
    props = {"minunet.config": net.config(),
             "minunet.normalization": metadata.get("normalization"),
             "minunet.postprocess": metadata.get("postprocess", {})}
    helper.set_model_props(proto, {k: json.dumps(v) for k, v in props.items()})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model: Any, path: str | os.PathLike, *, opset: int = OPSET) -> Path:
    """Write the U-Net `model` (a run folder, .npz, pretrained name, Checkpoint or UNet) as an
    ONNX file at `path`, atomically; return the path. Needs the `export` extra (onnx)."""
    from ..io.files import write_atomic

    path = Path(path)
    proto = onnx_model(model, opset=opset)
    return write_atomic(path, lambda tmp: tmp.write_bytes(proto.SerializeToString()))


def _doc(net: Any, name: str) -> str:
    m = 2**net.depth
    return (f"{name} ({net!r}) exported by minunet. Input '{INPUT}' (N, {net.in_channels}, H, "
            f"W) float32, normalised as minunet does; H and W multiples of {m}. Output "
            f"'{OUTPUT}' (N, {net.num_classes}, H, W): background, cell interior, cell boundary.")


def _version() -> str:
    from .. import __version__

    return __version__
