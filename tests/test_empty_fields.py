"""No objects invented: noise-only fields give no objects, sparse real cells are all kept."""

import numpy as np
import pytest

import minunet as mu
from minunet.predict import DEFAULT_NORMALIZATION, noise_sigma, normalize


def noise_field(offset, sigma, seed, shape=(192, 160)):
    rng = np.random.default_rng(seed)
    return np.clip(np.round(offset + rng.normal(0, sigma, shape)), 0, None).astype(np.uint16)


@pytest.fixture(scope="module")
def nuclei():
    return mu.load("nuclei")


def test_noise_sigma_reads_the_noise_not_the_cells():
    images, _, _ = mu.data.generate(1, "standard", seed=3, read_noise=0.0, photons=1e9)
    clean = images[0].astype(np.float64)
    noisy = clean + np.random.default_rng(0).normal(0, 0.02, clean.shape)
    assert noise_sigma(noisy) == pytest.approx(0.02, rel=0.15)
    assert noise_sigma(noise_field(500, 7, 1).astype(float)) == pytest.approx(7, rel=0.1)


def test_an_empty_field_is_not_stretched_to_the_cell_level():
    field = noise_field(1000, 10, 0)
    x = normalize(field)
    off = normalize(field, {**DEFAULT_NORMALIZATION, "min_snr": 0})
    assert np.median(off) > 0.4           # the old stretch: noise near the cell level (0.6)
    assert np.median(x) < 0.6 * np.median(off)   # capped: noise stays dim


@pytest.mark.parametrize("offset,sigma", [(100, 2), (1000, 10), (1000, 60), (10, 3)])
def test_noise_only_fields_give_no_objects(nuclei, offset, sigma):
    counts = [int(mu.segment(nuclei, noise_field(offset, sigma, seed)).max()) for seed in (0, 1)]
    assert sum(counts) <= 1, counts


def test_near_empty_fields_find_their_few_cells_and_nothing_else(nuclei):
    images, labels, _ = mu.data.generate(6, "standard", seed=21, density=1.0, debris=0.0,
                                         blobs=0.0)
    found = [mu.segment(nuclei, (im * 3000 + 300).astype(np.uint16)) for im in images]
    counts = [(int(t.max()), int(f.max())) for t, f in zip(labels, found, strict=True)]
    assert sum(abs(t - f) for t, f in counts) <= 1, counts       # before: 12 on an empty one
    assert mu.metrics.evaluate(list(labels), found).at(0.5).f1 >= 0.9


def test_sparse_real_cells_are_kept(nuclei):
    images, labels, _ = mu.data.generate(3, "standard", seed=5, density=3.0)
    found = [mu.segment(nuclei, (im * 4000 + 300).astype(np.uint16)) for im in images]
    result = mu.metrics.evaluate(list(labels), found).at(0.5)
    n_true = int(labels.max(axis=(1, 2)).sum())
    assert result.f1 >= 0.6 and sum(int(f.max()) for f in found) >= n_true - 2
