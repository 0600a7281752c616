"""Every picture is a valid PNG of the promised size, drawn in exactly the promised colors."""

import inspect
import json

import numpy as np
import pytest
from matplotlib.image import imread

from minunet import metrics, viz
from minunet.viz import FN_COLOR, FP_COLOR, LEGEND_HEIGHT, TITLE_HEIGHT, TP_COLOR


def read_rgb(path):
    """PNG -> (H, W, 3) uint8, whatever matplotlib's reader returns (floats in [0, 1])."""
    a = imread(path)
    assert a.ndim == 3 and a.shape[2] in (3, 4)
    return np.round(a[..., :3] * 255).astype(np.uint8)


def has_color(rgb, color):
    return bool(np.all(rgb == np.array(color, np.uint8), axis=-1).any())


@pytest.fixture
def scene():
    """Truth {10x10, 20x20 squares}; prediction {10x12 box over the first, 5x5 elsewhere}."""
    t = np.zeros((60, 64), np.int32)
    t[2:12, 2:12] = 1
    t[20:40, 20:40] = 2
    p = np.zeros_like(t)
    p[2:12, 2:14] = 7
    p[50:55, 50:55] = 3
    image = np.random.default_rng(0).random(t.shape) + (t > 0)
    return image, t, p


def test_error_map_size_and_exact_colors(scene, tmp_path):
    _, t, p = scene
    s = 8
    path = viz.error_map(t, p, tmp_path / "sub" / "err.png", scale=s, title="errors")
    assert path.exists()
    rgb = read_rgb(path)
    h, w = t.shape
    assert rgb.shape[:2] == (h * s + LEGEND_HEIGHT + TITLE_HEIGHT, w * s)
    picture = rgb[TITLE_HEIGHT: TITLE_HEIGHT + h * s]
    centre = s // 2
    assert tuple(picture[5 * s + centre, 5 * s + centre]) == TP_COLOR  # inside both
    assert tuple(picture[5 * s + centre, 13 * s + centre]) == FP_COLOR  # box beyond the square
    assert tuple(picture[30 * s + centre, 30 * s + centre]) == FN_COLOR  # the missed square
    assert tuple(picture[45 * s + centre, 5 * s + centre]) == (0, 0, 0)
    legend = rgb[-LEGEND_HEIGHT:]
    for color in (TP_COLOR, FP_COLOR, FN_COLOR):  # each legend patch in the drawn color
        assert has_color(legend, color)


def test_error_map_default_scale_and_no_title(scene, tmp_path):
    _, t, p = scene
    rgb = read_rgb(viz.error_map(t, p, tmp_path / "e.png"))
    s = -(-viz.MIN_PICTURE_WIDTH // t.shape[1])
    assert rgb.shape[:2] == (t.shape[0] * s + LEGEND_HEIGHT, t.shape[1] * s)


def test_overlay_outlines_by_match_status(scene, tmp_path):
    image, t, p = scene
    s = 8
    rgb = read_rgb(viz.overlay(image, t, p, tmp_path / "o.png", scale=s))
    h, w = t.shape
    assert rgb.shape[:2] == (h * s + LEGEND_HEIGHT, w * s)
    assert tuple(rgb[2 * s, 2 * s]) == TP_COLOR  # corner of the matched box
    assert tuple(rgb[50 * s, 50 * s]) == FP_COLOR  # corner of the unmatched 5x5 box
    assert tuple(rgb[20 * s, 20 * s]) == FN_COLOR  # corner of the missed 20x20 square
    inside = rgb[30 * s, 30 * s]
    assert inside[0] == inside[1] == inside[2]  # the image itself stays gray
    # at IoU 0.9 the box no longer matches: its outline turns magenta, the square's red
    rgb9 = read_rgb(viz.overlay(image, t, p, tmp_path / "o9.png", scale=s, thresh=0.9))
    assert tuple(rgb9[2 * s, 13 * s + s - 1]) == FP_COLOR
    assert tuple(rgb9[5 * s, 11 * s + s - 1]) == FN_COLOR  # right edge of the square
    for color in (TP_COLOR, FP_COLOR, FN_COLOR):
        assert has_color(rgb[-LEGEND_HEIGHT:], color)


def test_label_image_stable_colors(tmp_path):
    a = np.zeros((30, 40), np.int32)
    a[2:10, 2:10], a[15:25, 20:30] = 3, 8
    b = np.zeros_like(a)
    b[5:12, 25:35], b[20:28, 2:12] = 8, 5  # id 8 again, elsewhere, with another neighbour
    ra, rb = viz.label_rgb(a), viz.label_rgb(b)
    assert tuple(ra[16, 21]) == tuple(rb[6, 26])  # id 8: one color in both
    assert tuple(ra[3, 3]) != tuple(ra[16, 21])
    assert tuple(ra[0, 0]) == (0, 0, 0)
    rgb = read_rgb(viz.label_image(a, tmp_path / "l.png", scale=12))
    assert rgb.shape[:2] == (30 * 12 + TITLE_HEIGHT, 40 * 12)
    assert tuple(rgb[TITLE_HEIGHT + 16 * 12, 21 * 12]) == tuple(ra[16, 21])


def write_log(path, n=6):
    with open(path, "w") as f:
        for e in range(1, n + 1):
            row = {"epoch": e, "train_loss": 1 / e, "val_f1": 1 - 1 / (e + 1), "note": "x",
                   "improved": True}
            if e % 2 == 0:
                row["val_loss"] = 1.1 / e
            f.write(json.dumps(row) + "\n")
        f.write("\n")
    return path


def test_read_log_keeps_numbers_only(tmp_path):
    log = viz.read_log(write_log(tmp_path / "log.jsonl"))
    assert list(log) == ["epoch", "train_loss", "val_f1", "val_loss"]
    assert np.isnan(log["val_loss"][0]) and log["val_loss"][1] == pytest.approx(0.55)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"epoch": 1, "train_loss": 0.5}\n{oops\n')
    with pytest.raises(ValueError, match="line 2"):
        viz.read_log(bad)


def test_training_curves_and_score_distribution(tmp_path):
    log = write_log(tmp_path / "log.jsonl")
    rgb = read_rgb(viz.training_curves(log, tmp_path / "curves.png", title="run"))
    assert rgb.shape[:2] == (viz.PLOT_SIZE[1], viz.PLOT_SIZE[0])
    scores = {"f1": np.random.default_rng(1).random(12), "pq": np.linspace(0, 1, 12)}
    rgb = read_rgb(viz.score_distribution(scores, tmp_path / "dist.png"))
    assert rgb.shape[:2] == (viz.PLOT_SIZE[1], viz.PLOT_SIZE[0])


def test_write_report(scene, tmp_path):
    image, t, p = scene
    log = write_log(tmp_path / "log.jsonl")
    out = viz.write_report(tmp_path / "report", [t, t, p], [p, t, p], [image] * 3,
                           names=["a", "b", "c"], log_path=log)
    rgb = read_rgb(out["png"])
    assert rgb.shape[:2] == (viz.REPORT_SIZE[1], viz.REPORT_SIZE[0])
    saved = json.loads(out["json"].read_text())
    want = json.loads(json.dumps(metrics.evaluate([t, t, p], [p, t, p],
                                                  names=["a", "b", "c"]).to_dict()))
    assert saved == want
    md = out["md"].read_text()
    assert "| f1 | 0.8333 |" in md  # pooled at 0.5: tp 1 + 2 + 2, fp 1, fn 1 -> 10 / 12
    assert md.count("\n| a |") == 1
    # without images or log the page still comes out
    out2 = viz.write_report(tmp_path / "bare", [t], [p])
    assert read_rgb(out2["png"]).shape[:2] == (viz.REPORT_SIZE[1], viz.REPORT_SIZE[0])


def test_no_global_backend_change():
    src = inspect.getsource(viz)
    assert "pyplot" not in src and "matplotlib.use" not in src


def test_overlay_without_truth_outlines_every_object_yellow(scene, tmp_path):
    image, _, p = scene
    s = 8
    rgb = read_rgb(viz.overlay(image, None, p, tmp_path / "o.png", scale=s))
    assert rgb.shape[:2] == (p.shape[0] * s + LEGEND_HEIGHT, p.shape[1] * s)
    assert tuple(rgb[2 * s, 2 * s]) == viz.PRED_COLOR
    assert tuple(rgb[50 * s, 50 * s]) == viz.PRED_COLOR
    for color in (TP_COLOR, FP_COLOR, FN_COLOR):  # nothing was matched, so no match colors
        assert not has_color(rgb, color)
    assert has_color(rgb[-LEGEND_HEIGHT:], viz.PRED_COLOR)
