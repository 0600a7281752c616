"""minunet: a U-Net for cell instance segmentation, from scratch in NumPy and Numba.

Dimension letters, used in every shape comment of the package:

    N   batch size                  C    channels (Cin / Cout: in / out)
    H   height                      W    width
    Ho  output height               Wo   output width
    K   kernel size (square)        S    stride          P   padding
    Kc  number of classes (logits per pixel)

Arrays are NCHW: (N, C, H, W). Training runs in float32; every layer also runs in float64,
which is what the gradient checker uses.
"""

import importlib
from typing import Any

# _startup first: a Ctrl-C while the `minunet` command is still importing (see there)
from . import _startup, io, metrics  # noqa: F401
from .checkpoint import Checkpoint, CheckpointError, load, save
from .gradcheck import GradcheckError, GradcheckReport, gradcheck
from .inference import segment
from .layers.activation import ReLU
from .layers.batchnorm import BatchNorm2d
from .layers.concat import Concat
from .layers.conv import Conv2d
from .layers.conv_transpose import ConvTranspose2d
from .layers.pool import MaxPool2d
from .losses import CrossEntropyLoss, DiceLoss
from .module import Module, Parameter, Sequential
from .optim import SGD, Adam, CosineSchedule, StepSchedule
from .postprocess import to_instances
from .predict import normalize, predict
from .trace import trace
from .train import History, TrainingDiverged, evaluate, train
from .unet import UNet

# Imported on first use (`mu.data`, `mu.fit`, ...): the generator, the runs, the plots and the
# export pull in scipy.ndimage and more, ~0.4 s that `minunet predict` would pay at every start.
_LAZY = {"data": ("data", None), "runs": ("runs", None), "viz": ("viz", None),
         "Run": ("runs", "Run"), "fit": ("runs", "fit"),
         "export_onnx": ("export", "export_onnx"),
         "export_bioimageio": ("export", "export_bioimageio"),
         "to_rois": ("rois", "to_rois"), "write_rois": ("rois", "write_rois")}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'minunet' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(f".{module_name}", __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "BatchNorm2d",
    "Checkpoint",
    "CheckpointError",
    "Concat",
    "Conv2d",
    "ConvTranspose2d",
    "CosineSchedule",
    "CrossEntropyLoss",
    "DiceLoss",
    "GradcheckError",
    "GradcheckReport",
    "History",
    "MaxPool2d",
    "Module",
    "Parameter",
    "ReLU",
    "Run",
    "Sequential",
    "StepSchedule",
    "TrainingDiverged",
    "UNet",
    "__version__",
    "data",
    "evaluate",
    "export_bioimageio",
    "export_onnx",
    "fit",
    "gradcheck",
    "io",
    "load",
    "metrics",
    "normalize",
    "predict",
    "runs",
    "save",
    "segment",
    "to_instances",
    "to_rois",
    "trace",
    "train",
    "viz",
    "write_rois",
]
