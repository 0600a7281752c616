"""Models that run outside minunet: ONNX graphs and bioimage.io model-zoo packages.

    mu.export_onnx("run", "model.onnx")          # onnx.py: the network as an ONNX graph
    mu.export_bioimageio("run", "pkg/")          # bioimageio.py: a zoo package around it

Needs the `export` extra (`pip install "minunet[export]"`: onnx, onnxruntime, bioimageio.spec,
bioimageio.core); nothing of it is imported until one of these functions runs.
"""

from .bioimageio import export_bioimageio
from .onnx import export_onnx, onnx_model

__all__ = ["export_bioimageio", "export_onnx", "onnx_model"]
