"""The bundled pretrained model: found by name, small, self-describing, and it works."""

import numpy as np

import minunet as mu
from minunet.models import PRETRAINED, pretrained_path


def test_nuclei_model_is_bundled_and_segments():
    assert "nuclei" in PRETRAINED
    path = pretrained_path("nuclei")
    assert path is not None and path.stat().st_size < 5e6
    ckpt = mu.load(path)
    meta = ckpt.metadata
    assert {"normalization", "postprocess", "diameter", "recipe"} <= set(meta)
    assert meta["recipe"]["preset"] == "broad"
    images, labels, _ = mu.data.generate(2, "shift-brightness", size=(192, 192), seed=77)
    preds = [mu.to_instances(mu.predict(ckpt.model, im, normalization=meta["normalization"]),
                             **meta["postprocess"]) for im in images]
    assert mu.metrics.evaluate(list(labels), preds).at(0.5).f1 > 0.9
    assert np.all([p.dtype == np.int32 for p in preds])
    assert pretrained_path("no-such-model") is None


def test_nuclei_model_does_not_split_textured_nuclei():
    """Chromatin clumps and nucleoli are not boundaries: one object per nucleus (the model
    bundled before found 891 objects for 551 such nuclei, F1 0.64)."""
    ckpt = mu.load("nuclei")
    images, labels, _ = mu.data.generate(2, "shift-chromatin", size=(192, 192), seed=78)
    preds = [mu.segment(ckpt, im) for im in images]
    result = mu.metrics.evaluate(list(labels), preds)
    found = sum(r[0].n_pred for r in result.objects_per_image)
    true = sum(r[0].n_true for r in result.objects_per_image)
    assert result.at(0.5).f1 > 0.9 and found <= 1.1 * true, (result.at(0.5).f1, found, true)
