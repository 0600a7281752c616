"""ImageJ ROIs from label images: read back with roifile and filled again, each ROI must cover
exactly its object's pixels (IoU >= 0.98 is the issue's bar; tracing along pixel edges gives 1)."""

import numpy as np
import pytest
import roifile
from scipy import ndimage
from skimage.draw import polygon2mask
from skimage.measure import find_contours

import minunet as mu
from minunet.cli import main
from minunet.rois import outline, to_rois, write_rois
from tests.cli_helpers import blob_image, write_tif

IOU_BAR = 0.98  # the bar per object


def fill(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose CENTRE (c + 0.5, r + 0.5) lies inside the polygon (x, y), even-odd rule,
    as Fiji fills a polygon ROI. skimage tests integer points, hence the half-pixel shift."""
    return polygon2mask(shape, np.asarray(points, float)[:, ::-1] - 0.5)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def random_labels(seed: int, shape=(60, 80)) -> np.ndarray:
    """Irregular objects: holes, objects cut by the image border, pixels touching only at a
    corner, labels in several pieces (the blobs are then numbered out of order)."""
    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.normal(size=shape), 2.0) > 0.05
    labels, n = ndimage.label(blobs)
    shuffled = np.concatenate([[0], rng.permutation(n) + 1])
    labels = shuffled[labels]
    labels[labels == 3] = 2                         # label 2 now has two separate pieces
    labels[rng.random(shape) < 0.02] = 0            # pinholes
    return labels.astype(np.uint16)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rois_cover_their_objects(tmp_path, seed):
    labels = random_labels(seed)
    path = write_rois(labels, tmp_path / "cells_rois.zip")
    rois = roifile.roiread(path)
    ids = [int(i) for i in np.unique(labels) if i]
    assert [int(r.name) for r in rois] == ids                 # named by id, in order
    for roi in rois:
        mask = labels == int(roi.name)
        back = fill(roi.coordinates(), labels.shape)
        assert iou(back, mask) >= IOU_BAR
        assert np.array_equal(back, mask)                    # in fact exact
        assert roi.roitype == roifile.ROI_TYPE.TRACED


def test_shapes_that_break_naive_contours():
    """A ring (hole), a diagonal pair, one pixel, an object filling a whole border side."""
    cases = {
        "ring": np.pad(np.pad(np.zeros((3, 3), bool), 2, constant_values=True), 1),
        "diagonal": np.eye(4, dtype=bool),
        "pixel": np.pad(np.ones((1, 1), bool), 2),
        "border": np.ones((5, 7), bool),
        "comb": np.array([[1, 0, 1, 0, 1], [1, 1, 1, 1, 1], [1, 0, 1, 0, 1]], bool),
    }
    for name, mask in cases.items():
        points = outline(mask)
        assert np.array_equal(fill(points, mask.shape), mask), name


def test_centre_contours_would_fail_the_check():
    """The check has teeth: the usual recipe (cellpose#581) lists the boundary pixels' indices
    (OpenCV's findContours; here find_contours near level 1, rounded), which ImageJ reads as
    pixel CORNERS: filled back, a small nucleus loses a column and a row."""
    yy, xx = np.mgrid[:21, :21]
    disc = (yy - 10) ** 2 + (xx - 10) ** 2 < 16           # ~7 px across
    rows_cols = np.round(find_contours(disc.astype(float), 0.99)[0])
    naive = fill(rows_cols[:, ::-1], disc.shape)          # (x, y) = (column, row)
    assert iou(naive, disc) < IOU_BAR
    assert np.array_equal(fill(outline(disc), disc.shape), disc)


def test_large_images_use_subpixel_coordinates(tmp_path):
    """ImageJ stores polygon offsets and bounds as int16: beyond 32767 px, float coordinates."""
    labels = np.zeros((6, 40_000), np.uint16)
    labels[1:4, 39_990:39_996] = 5
    labels[2:5, 10:13] = 1
    rois = roifile.roiread(write_rois(labels, tmp_path / "wide_rois.zip"))
    assert [r.name for r in rois] == ["1", "5"]
    far = rois[1]
    assert far.subpixel_coordinates is not None
    points = far.coordinates()
    assert points[:, 0].min() == 39_990 and points[:, 0].max() == 39_996
    window = labels[:, 39_980:] == 5
    assert np.array_equal(fill(points - [39_980, 0], window.shape), window)
    small = to_rois(labels[:, :100])
    assert small[0].subpixel_coordinates is None          # small images: plain int16


def test_empty_and_bad_inputs(tmp_path):
    assert to_rois(np.zeros((8, 8), np.uint16)) == []
    assert roifile.roiread(write_rois(np.zeros((8, 8), np.int32), tmp_path / "none.zip")) == []
    with pytest.raises(ValueError, match="integer label image"):
        to_rois(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match=">= 0"):
        to_rois(-np.ones((4, 4), np.int32))
    with pytest.raises(ValueError, match="empty"):
        outline(np.zeros((3, 3), bool))
    assert mu.to_rois is to_rois and mu.write_rois is write_rois


def test_predict_rois_flag(tmp_path):
    """`minunet predict nuclei ... --rois`: NAME_rois.zip beside NAME.tif, one ROI per label."""
    rng = np.random.default_rng(4)
    image, _ = blob_image(rng, (96, 96), n=5)
    write_tif(tmp_path / "in" / "cells.tif", image)
    out = tmp_path / "out"
    assert main(["predict", "nuclei", str(tmp_path / "in"), "--out", str(out), "--rois"]) == 0
    labels = np.asarray(__import__("tifffile").imread(out / "cells.tif"))
    rois = roifile.roiread(out / "cells_rois.zip")
    assert len(rois) == labels.max() > 0
    for roi in rois:
        mask = labels == int(roi.name)
        assert iou(fill(roi.coordinates(), labels.shape), mask) >= IOU_BAR
    assert main(["predict", "nuclei", str(tmp_path / "in"), "--out", str(tmp_path / "c"),
                 "--rois", "--chunked"]) != 0


def test_a_label_stack_gives_each_planes_rois_with_its_position():
    import roifile  # noqa: F401

    from minunet.rois import to_rois
    stack = np.zeros((3, 12, 12), np.int32)
    stack[0, 2:5, 2:6] = 1
    stack[2, 6:10, 1:4] = 1
    stack[2, 1:3, 8:11] = 2
    rois = to_rois(stack)
    assert [(r.name, r.position) for r in rois] == [("1-1", 1), ("3-1", 3), ("3-2", 3)]
    assert [r.name for r in to_rois(stack[2])] == ["1", "2"]
