"""Training: overfitting, learning discs, determinism, resume, logs, early stopping, NaN."""

import json
import math

import numpy as np
import pytest
from tiny_net import PixelNet

import minunet as mu
from minunet.losses import CrossEntropyLoss


def make_discs(n, size, rng, noise=0.3):
    """Images with 1-3 bright discs on a dark background, plus noise; targets: 1 inside a disc."""
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, 1, size, size), np.float32)
    targets = np.zeros((n, size, size), np.int64)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            r = rng.uniform(size / 10, size / 5)
            cy, cx = rng.uniform(r, size - r, size=2)
            targets[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        images[i, 0] = targets[i] + noise * rng.standard_normal((size, size))
    return images, targets


def pixel_f1(pred, target):
    tp = np.sum((pred == 1) & (target == 1))
    return 2 * tp / (np.sum(pred == 1) + np.sum(target == 1))


def test_overfits_one_fixed_batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 16, 16)).astype(np.float32)
    t = rng.integers(0, 3, size=(2, 16, 16))  # random labels: only memorising can fit them
    model = mu.UNet(1, 3, depth=2, base_channels=8, rng=1)
    loss_fn = CrossEntropyLoss()
    opt = mu.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(300):  # "a few hundred steps" at most; it gets there in about 50
        losses.append(loss_fn.forward(model.forward(x), t))
        if losses[-1] < 0.02:
            break
        opt.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
    assert losses[0] > 1.0 and losses[-1] < 0.02, (len(losses), losses[::25])


def test_learns_to_segment_held_out_discs():
    rng = np.random.default_rng(1)
    images, targets = make_discs(40, 32, rng)
    val_images, val_targets = make_discs(8, 32, rng)
    model = mu.UNet(1, 2, depth=2, base_channels=4, rng=2)
    history = mu.train(model, (images, targets, None), (val_images, val_targets, None),
                       epochs=6, batch_size=4, lr=1e-2, progress=False)
    model.eval()
    pred = model.forward(val_images).argmax(axis=1)
    f1 = pixel_f1(pred, val_targets)
    assert f1 > 0.9, (f1, history.records)
    assert history["val_loss"][-1] < history["val_loss"][0]


def test_same_seed_same_result_and_resume_equals_straight_run(tmp_path):
    rng = np.random.default_rng(3)
    images, targets = make_discs(6, 16, rng)
    weights = rng.uniform(0.5, 2.0, size=targets.shape).astype(np.float32)
    data = (images, targets, weights)

    def run(epochs, seed=0, out_dir=None, resume=False):
        model = mu.UNet(1, 2, depth=2, base_channels=2, rng=4)
        history = mu.train(model, data, data, epochs=epochs, batch_size=4, seed=seed,
                           out_dir=out_dir, resume=resume, crop=8, progress=False,
                           augment=lambda x, t, w, r: (x[:, ::-1], t[::-1], w[::-1])
                           if r.random() < 0.5 else (x, t, w))
        return model, history

    a, ha = run(4)
    b, hb = run(4)
    c, _ = run(4, seed=1)
    run(2, out_dir=tmp_path)            # stopped after 2 epochs ...
    d, hd = run(4, out_dir=tmp_path, resume=True)  # ... and resumed to 4
    for (name, va), vb, _, vd in zip(a.state_dict().items(), b.state_dict().values(),
                                      c.state_dict().values(), d.state_dict().values(),
                                      strict=True):
        np.testing.assert_array_equal(va, vb, err_msg=name)
        np.testing.assert_array_equal(va, vd, err_msg=name)  # Adam moments, running stats
    assert not np.array_equal(a.head.weight.data, c.head.weight.data)
    assert ha["val_loss"] == hb["val_loss"] == hd["val_loss"]
    assert hd["epoch"] == [1, 2, 3, 4]


def test_log_checkpoints_and_progress_lines(tmp_path, capsys):
    rng = np.random.default_rng(5)
    images, targets = make_discs(5, 8, rng)
    data = (images, targets, None)
    model = PixelNet(1, 2, rng=0)
    history = mu.train(model, data, data, epochs=3, batch_size=2, lr=0.1, out_dir=tmp_path,
                       metadata={"normalization": {"method": "range"}})
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records == history.records and [r["epoch"] for r in records] == [1, 2, 3]
    assert set(records[0]) == {"epoch", "train_loss", "val_loss", "val_pixel_accuracy", "lr",
                               "seconds"}
    last = mu.load(tmp_path / "last.npz", PixelNet)
    best = mu.load(tmp_path / "best.npz", PixelNet)
    assert last.position["epoch"] == 3 and last.optimizer_class == "Adam"
    assert last.metadata == {"normalization": {"method": "range"}}
    assert best.position["epoch"] == history.best_epoch
    assert best.position["best"] == min(history["val_loss"]) == history.best_score
    err = capsys.readouterr().err  # stderr is not a terminal here: plain lines, no bar
    assert err.count("epoch ") == 3 and "val_loss" in err and "\r" not in err


def test_early_stopping(tmp_path):
    rng = np.random.default_rng(6)
    images, targets = make_discs(4, 8, rng)
    data = (images, targets, None)
    # lr = 0: the validation loss never improves after the first epoch
    history = mu.train(PixelNet(1, 2, rng=0), data, data, epochs=20, batch_size=2, lr=0.0,
                       patience=2, out_dir=tmp_path, progress=False)
    assert history["epoch"] == [1, 2, 3] and history.best_epoch == 1
    assert "early stop" in history.stop_reason
    # resuming a run that stopped early does no more epochs
    again = mu.train(PixelNet(1, 2, rng=0), data, data, epochs=20, batch_size=2, lr=0.0,
                     patience=2, out_dir=tmp_path, resume=True, progress=False)
    assert again["epoch"] == [1, 2, 3] and "early stop" in again.stop_reason


class NaNAfter(CrossEntropyLoss):
    """Cross-entropy that turns into NaN after `calls` forward calls (a divergence on demand)."""

    def __init__(self, calls):
        super().__init__()
        self.left = calls

    def forward(self, logits, target, weight=None):
        value = super().forward(logits, target, weight)
        self.left -= 1
        return math.nan if self.left < 0 else value


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    rng = np.random.default_rng(7)
    images, targets = make_discs(4, 8, rng)
    data = (images, targets, None)
    # 2 batches per epoch: the 5th training batch (epoch 3, batch 1) gives NaN
    model = PixelNet(1, 2, rng=0)
    message = r"nan at epoch 3, batch 1.*last\.npz \(epoch 2\)"
    with pytest.raises(mu.TrainingDiverged, match=message):
        mu.train(model, data, None, epochs=5, batch_size=2, out_dir=tmp_path, progress=False,
                 loss=NaNAfter(4))
    kept = mu.load(tmp_path / "last.npz", PixelNet)
    assert kept.position["epoch"] == 2
    straight = PixelNet(1, 2, rng=0)
    mu.train(straight, data, None, epochs=2, batch_size=2, progress=False)
    np.testing.assert_array_equal(kept.model.weight.data, straight.weight.data)
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2


def test_nan_without_out_dir_says_no_checkpoint():
    images, targets = make_discs(2, 8, np.random.default_rng(8))
    with pytest.raises(mu.TrainingDiverged, match="no checkpoint"):
        mu.train(PixelNet(1, 2, rng=0), (images, targets), epochs=1, batch_size=2,
                 progress=False, loss=NaNAfter(0))


def test_schedule_augment_and_crop_are_applied():
    rng = np.random.default_rng(9)
    images, targets = make_discs(5, 16, rng)
    seen = []

    def augment(x, t, w, r):
        seen.append((x.shape, t.shape, w))
        return x[:, :, ::-1], t[:, ::-1], w

    schedule = mu.CosineSchedule(0.1, total_steps=6, warmup_steps=2)
    history = mu.train(PixelNet(1, 2, rng=0), (images, targets, None), epochs=2, batch_size=2,
                       crop=(8, 4), augment=augment, schedule=schedule, progress=False)
    assert seen == [((1, 8, 4), (8, 4), None)] * 10
    assert history["lr"] == [schedule(2), schedule(5)]
    assert history.monitor == "train_loss"  # no validation data


def test_evaluate_does_not_depend_on_batch_size():
    rng = np.random.default_rng(10)
    images, targets = make_discs(5, 8, rng)
    weights = rng.uniform(0.1, 3, size=targets.shape).astype(np.float32)
    model = PixelNet(1, 2, rng=0).eval()
    a = mu.evaluate(model, (images, targets, weights), batch_size=2)
    b = mu.evaluate(model, (images, targets, weights), batch_size=5)
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    assert a["val_pixel_accuracy"] == b["val_pixel_accuracy"]


def test_bad_arguments(tmp_path):
    images, targets = make_discs(2, 8, np.random.default_rng(11))
    model = PixelNet(1, 2, rng=0)
    with pytest.raises(ValueError, match="targets must be an integer array"):
        mu.train(model, (images, targets.astype(np.float32)), epochs=1)
    with pytest.raises(ValueError, match="either an optimizer or lr"):
        mu.train(model, (images, targets), epochs=1, lr=0.1, optimizer=mu.SGD(
            model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="needs the out_dir"):
        mu.train(model, (images, targets), epochs=1, resume=True)
    with pytest.raises(KeyError, match="monitor='val_dice'"):
        mu.train(model, (images, targets), (images, targets), epochs=1, monitor="val_dice",
                 progress=False)
    mu.train(model, (images, targets), epochs=1, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="seed=0"):
        mu.train(model, (images, targets), epochs=2, out_dir=tmp_path, resume=True, seed=1,
                 progress=False)


def test_images_of_different_sizes_train_as_lists():
    rng = np.random.default_rng(12)
    images, targets = [], []
    for size in (8, 12, 10):
        x, t = make_discs(1, size, rng)
        images.append(x[0])
        targets.append(t[0])
    history = mu.train(PixelNet(1, 2, rng=0), (images, targets, None), (images, targets, None),
                       epochs=2, batch_size=2, crop=8, progress=False)
    assert len(history) == 2 and all(math.isfinite(v) for v in history["val_loss"])
    whole = mu.evaluate(PixelNet(1, 2, rng=0).eval(), (images, targets))
    by_one = [mu.evaluate(PixelNet(1, 2, rng=0).eval(), (x[None], t[None]))
              for x, t in zip(images, targets, strict=True)]
    n = [t.size for t in targets]
    assert whole["val_pixel_accuracy"] == pytest.approx(
        sum(r["val_pixel_accuracy"] * k for r, k in zip(by_one, n, strict=True)) / sum(n))
    with pytest.raises(ValueError, match="differ in size; give crop"):
        mu.train(PixelNet(1, 2, rng=0), (images, targets), epochs=1, progress=False)
    with pytest.raises(ValueError, match="larger than image 0"):
        mu.train(PixelNet(1, 2, rng=0), (images, targets), epochs=1, crop=10, progress=False)
