"""The dock widget: segment the chosen image with a minunet model, then save corrections.

    image, model (`nuclei`, a run folder or a checkpoint), diameter (as it is / auto / pixels),
    seed threshold and minimum size (prefilled from the model), [x] probabilities, Run
    -> a Labels layer "IMAGE labels" with the image's scale (Run again replaces its data,
       unless it was edited: then the edited layer is kept as "IMAGE labels (edited)")
    labels layer, training folder, Save for training
    -> FOLDER/images/IMAGE.tif + FOLDER/masks/IMAGE.tif (`training.save_for_training`)

Run calls `minunet.segment` in a worker thread (napari's `thread_worker`, an indeterminate
progress bar in napari's activity panel), so the viewer stays responsive. Post-processing
values left as the model's are not passed: then the result is `mu.segment(model, image,
diameter=...)` exactly, with the model's settings rescaled to the diameter as it does. A
changed value is passed as it is (`mu.segment(..., min_size=...)`, in the image's pixels).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.qt.threading import FunctionWorker, thread_worker
from napari.utils.notifications import show_error, show_info

from ..checkpoint import Checkpoint, load
from ..inference import segment
from ..models import PRETRAINED
from ..postprocess import MIN_SIZE, SEED_THRESH
from .reader import foreground
from .training import Saved, save_for_training
from .writer import pixel_size

if TYPE_CHECKING:
    import napari

RUN_FOLDER, CHECKPOINT = "run folder ...", "checkpoint file ..."
AS_IS, AUTO, PIXELS = "as it is", "auto", "pixels"


class SegmentWidget(Container):
    """minunet's dock widget (see the module doc); `viewer` is the napari viewer it serves."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.checkpoint: Checkpoint | None = None
        self._shown: dict[str, float] = {}    # post-processing values as prefilled
        self._results: dict[str, str] = {}    # labels layer name -> digest of what Run put there
        self.image = ComboBox(label="image", choices=self._layers_of(Image))
        self.model = ComboBox(label="model", choices=[*PRETRAINED, RUN_FOLDER, CHECKPOINT])
        self.path = FileEdit(label="model path", mode="d", visible=False)
        self.diameter_mode = ComboBox(label="diameter", choices=[AS_IS, AUTO, PIXELS],
                                      tooltip="as it is: objects are the size the model knows; "
                                      "auto: estimated from the image; pixels: give it")
        self.diameter = FloatSpinBox(label="diameter (px)", min=1.0, max=1000.0, step=0.5,
                                     value=20.0, visible=False)
        self.seed_thresh = FloatSpinBox(label="seed threshold", min=0.0, max=1.0, step=0.01)
        self.min_size = SpinBox(label="minimum size (px)", min=0, max=10**9)
        self.probabilities = CheckBox(text="add the probabilities", value=False)
        self.run_button = PushButton(text="Run")
        self.labels = ComboBox(label="labels", choices=self._layers_of(Labels))
        self.folder = FileEdit(label="training folder", mode="d")
        self.save_button = PushButton(text="Save for training")
        self.status = Label(value="")
        self.extend([self.image, self.model, self.path, self.diameter_mode, self.diameter,
                     self.seed_thresh, self.min_size, self.probabilities, self.run_button,
                     Label(value="correct the labels, then:"), self.labels, self.folder,
                     self.save_button, self.status])
        self.model.changed.connect(self._model_changed)
        self.path.changed.connect(self._load_model)
        self.diameter_mode.changed.connect(
            lambda mode: setattr(self.diameter, "visible", mode == PIXELS))
        self.image.changed.connect(self._match_labels)
        self.run_button.changed.connect(self.run)
        self.save_button.changed.connect(self.save)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self.reset_choices)
        self.reset_choices()
        self._load_model()

    # --- the model -------------------------------------------------------------------------
    def _layers_of(self, kind: type) -> Any:
        return lambda _widget: [(layer.name, layer) for layer in self.viewer.layers
                                if isinstance(layer, kind)]

    def _model_changed(self, choice: str) -> None:
        self.path.visible = choice in (RUN_FOLDER, CHECKPOINT)
        self.path.mode = "d" if choice == RUN_FOLDER else "r"
        self._load_model()

    def model_spec(self) -> str | None:
        """The pretrained name or the path the user gave; None while no path is given."""
        if self.model.value in PRETRAINED:
            return self.model.value
        path = self.path.value
        return None if path is None or str(path) in ("", ".") else str(path)

    def _load_model(self) -> None:
        """Load the chosen model and prefill the settings it stores."""
        self.checkpoint = None
        spec = self.model_spec()
        if spec is None:
            self.say(f"choose the {self.model.value.rstrip(' .')}")
            return
        try:
            self.checkpoint = load(spec)
        except Exception as err:   # any unreadable file: say so in the status line, stay up
            # (no pop-up: a path typed letter by letter would raise one per key)
            self.say(f"cannot load the model: {type(err).__name__}: {err}")
            return
        post = self.checkpoint.metadata.get("postprocess", {})
        self.seed_thresh.value = float(post.get("seed_thresh", SEED_THRESH))
        self.min_size.value = int(post.get("min_size", MIN_SIZE))
        self._shown = {"seed_thresh": self.seed_thresh.value, "min_size": self.min_size.value}
        trained = self.checkpoint.metadata.get("diameter")
        if trained:
            self.diameter.value = round(float(trained), 1)
        known = f", trained on objects of {trained:.1f} px" if trained else ""
        self.say(f"model {Path(spec).name}{known}")

    def settings(self) -> dict[str, Any]:
        """What the user changed from the model's post-processing settings (see module doc)."""
        now = {"seed_thresh": self.seed_thresh.value, "min_size": self.min_size.value}
        return {k: v for k, v in now.items() if v != self._shown.get(k)}

    def diameter_value(self) -> float | str | None:
        mode = self.diameter_mode.value
        return None if mode == AS_IS else "auto" if mode == AUTO else float(self.diameter.value)

    # --- segmenting ------------------------------------------------------------------------
    def run(self) -> FunctionWorker | None:
        """Segment the chosen image in a worker thread; returns the started worker (or None
        with the reason in the status line)."""
        layer = self.image.value
        if layer is None:
            self.say("open an image first (File > Open Sample > minunet)", error=True)
            return None
        if self.checkpoint is None:
            self.say("choose a model that loads", error=True)
            return None
        if layer.multiscale or np.ndim(layer.data) != (3 if layer.rgb else 2):
            self.say(f"{layer.name}: minunet segments one 2-D image; this layer has shape "
                     f"{np.shape(layer.data)}", error=True)
            return None
        image = np.asarray(layer.data)
        worker = segment_in_thread(self.checkpoint, image, self.diameter_value(),
                                   self.settings())
        worker.returned.connect(lambda result: self._show(layer, *result))
        worker.errored.connect(lambda err: self.say(f"{layer.name}: {err}", error=True))
        worker.finished.connect(lambda: setattr(self.run_button, "enabled", True))
        self.run_button.enabled = False
        self.say(f"segmenting {layer.name} ({image.shape[0]}x{image.shape[1]}) ...")
        worker.start()
        return worker

    def _show(self, layer: Image, labels: np.ndarray, probs: np.ndarray) -> None:
        name = f"{layer.name} labels"
        place = {"scale": layer.scale[-2:], "translate": layer.translate[-2:]}
        kept = ""
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels):
            old = self.viewer.layers[name]
            if _digest(old.data) == self._results.get(name):
                old.data = labels                 # Run again: replace our own result
            else:                                 # the user's corrections: keep them
                old.name = kept = f"{name} (edited)"
        if name not in self.viewer.layers:
            self.viewer.add_labels(labels, name=name, **place)
        self._results[name] = _digest(labels)
        if self.probabilities.value:
            pname = f"{layer.name} probabilities"
            if pname in self.viewer.layers:
                self.viewer.layers[pname].data = foreground(probs)
            else:
                self.viewer.add_image(foreground(probs), name=pname, colormap="magma",
                                      contrast_limits=(0.0, 1.0), opacity=0.5, **place)
        self._match_labels(layer)
        note = f"; your edits are kept in '{kept}'" if kept else ""
        self.say(f"{int(labels.max(initial=0))} objects in '{name}'{note}")

    # --- save for training -----------------------------------------------------------------
    def _match_labels(self, image: Image | None) -> None:
        """Choose the labels layer named after the image, when there is one."""
        self.labels.reset_choices()
        if image is not None and f"{image.name} labels" in self.viewer.layers:
            self.labels.value = self.viewer.layers[f"{image.name} labels"]

    def save(self) -> Saved | None:
        """Write the image and the chosen labels layer into the training folder."""
        image, labels, folder = self.image.value, self.labels.value, self.folder.value
        if image is None or labels is None:
            self.say("choose an image and its labels layer", error=True)
            return None
        if folder is None or str(folder) in ("", "."):
            self.say("choose a training folder", error=True)
            return None
        try:
            saved = save_for_training(folder, image.name, np.asarray(image.data),
                                      np.asarray(labels.data),
                                      pixel_size(image.scale, image.metadata))
        except (ValueError, OSError) as err:
            self.say(str(err), error=True)
            return None
        self.say(saved.message(), notify=True)
        return saved

    def say(self, text: str, error: bool = False, notify: bool = False) -> None:
        """The status line; errors and saves also show as napari notifications."""
        self.status.value = text
        if error:
            show_error(text)
        elif notify:
            show_info(text)


def _digest(labels: np.ndarray) -> str:
    """A fingerprint of a label image, to tell whether the user has painted on it."""
    labels = np.ascontiguousarray(labels)
    return hashlib.blake2b(labels.tobytes(), digest_size=16).hexdigest() + str(labels.shape)


def segment_in_thread(checkpoint: Checkpoint, image: np.ndarray, diameter: float | str | None,
                      settings: dict[str, Any]) -> FunctionWorker:
    """A worker (not started) returning (labels, probabilities) of `mu.segment`."""
    def work() -> tuple[np.ndarray, np.ndarray]:
        return segment(checkpoint, image, diameter=diameter, return_probs=True, **settings)

    return thread_worker(work, start_thread=False,
                         progress={"desc": "minunet: segmenting"})()
