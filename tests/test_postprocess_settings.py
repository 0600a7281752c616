"""The post-processing settings learned from training labels."""

import numpy as np

from minunet.workflow import MIN_SIZE_FLOOR, postprocess_settings


def test_min_size_follows_the_typical_cell_not_the_smallest_fragment():
    lab = np.zeros((1, 200, 200), np.int32)
    k = 0
    for r0 in range(0, 200, 25):
        for c0 in range(0, 200, 25):
            k += 1
            side = 5 if k % 10 == 0 else 20        # 10 % small fragments (25 px), cells 400 px
            lab[0, r0:r0 + side, c0:c0 + side] = k
    assert postprocess_settings(lab)["min_size"] == 60       # 15 % of the median 400 px
    assert postprocess_settings(np.zeros((1, 8, 8), np.int32)) == {"min_size": MIN_SIZE_FLOOR}


def test_tune_postprocess_picks_the_split_when_the_network_draws_no_boundaries():
    """A 'network' that paints every object as uniform interior (no boundary class): only the
    shape split can separate touching objects, and the tuning must find it on validation."""
    import minunet as mu
    from minunet import workflow

    class Painter(mu.Module):
        depth = 0                                           # no pooling: any size goes

        def forward(self, x):                               # x (n, 1, H, W): the label mask
            fg = (x > 0).astype(np.float32)
            return np.concatenate([(1 - fg) * 8 - 4, fg * 8 - 4, np.full_like(fg, -4)], 1)

    yy, xx = np.mgrid[:48, :64]
    labels = np.zeros((2, 48, 64), np.int32)
    for k, (cy, cx) in enumerate([(24, 20), (24, 37)]):     # two discs, touching
        labels[:, np.hypot(yy - cy, xx - cx) <= 10] = k + 1
    x = (labels > 0).astype(np.float32)[:, None]
    post = workflow.tune_postprocess(Painter(), x, labels, {"min_size": 10},
                                     split_depths=workflow.SPLIT_DEPTHS)
    assert post["split"] and post["min_size"] == 10
    no_split = workflow.tune_postprocess(Painter(), x, labels, {"min_size": 10})
    assert "split" not in no_split and no_split["seed_thresh"] == 0.5   # default: no split
