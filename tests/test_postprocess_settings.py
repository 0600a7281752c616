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
