"""Instance-label hygiene shared by the generators: one connected piece per id, ids 1..n.

Occlusion (a later cell covering part of an earlier one) or overlapping clouds can cut an
instance into pieces. `make_connected` keeps each id's largest 4-connected piece, hands every
other piece to the kept neighbour it shares the most edge with (so the foreground never changes),
gives a piece with no kept neighbour an id of its own (or, on request, its original id), drops
instances under `min_size` pixels and renumbers the result 1..n in raster order.
"""

from __future__ import annotations

import numpy as np
from skimage.measure import label as connected_regions


def make_connected(labels: np.ndarray, min_size: int = 1, orphans_keep_id: bool = False
                   ) -> np.ndarray:
    """Return an int32 label image (H, W) whose ids 1..n are each one 4-connected piece.

    orphans_keep_id: a piece with no kept neighbour keeps its original id instead of getting
    one of its own (the reference recipe's clouds: an outlying draw still belongs to its cloud),
    so such ids may then be several pieces.
    """
    # (H, W): pieces = 4-connected regions of equal id (background 0 stays 0)
    pieces = connected_regions(labels, background=0, connectivity=1).astype(np.int64)
    n_pieces = int(pieces.max())
    if n_pieces == 0:
        return np.zeros(labels.shape, np.int32)
    flat = pieces.ravel()
    sizes = np.bincount(flat, minlength=n_pieces + 1)
    owner = np.zeros(n_pieces + 1, np.int64)             # original id of each piece
    owner[flat] = labels.ravel()

    # the largest piece of each original id is kept; ties go to the earlier piece
    ids = np.arange(1, n_pieces + 1)
    order = np.lexsort((ids, -sizes[1:], owner[1:]))
    first = np.r_[True, owner[1:][order][1:] != owner[1:][order][:-1]]
    kept = np.zeros(n_pieces + 1, bool)
    kept[ids[order][first]] = True

    target = np.arange(n_pieces + 1)                     # piece -> the piece it joins
    fragments = ~kept
    fragments[0] = False
    if fragments.any():
        target[fragments] = _kept_neighbour(pieces, kept, fragments)
        if orphans_keep_id:
            # an orphan (target == itself) joins the kept piece of its own original id
            kept_piece_of = np.zeros(int(owner.max()) + 1, np.int64)
            kept_piece_of[owner[kept]] = np.flatnonzero(kept)
            orphan = fragments & (target == np.arange(n_pieces + 1))
            target[orphan] = kept_piece_of[owner[orphan]]

    merged = target[pieces]
    merged_sizes = np.bincount(merged.ravel(), minlength=n_pieces + 1)
    too_small = merged_sizes < min_size
    too_small[0] = True
    survivors = np.flatnonzero(~too_small)
    renumber = np.zeros(n_pieces + 1, np.int32)
    renumber[survivors] = np.arange(1, survivors.size + 1, dtype=np.int32)
    return renumber[merged]


def _kept_neighbour(pieces: np.ndarray, kept: np.ndarray, fragments: np.ndarray) -> np.ndarray:
    """For each fragment piece, the kept piece it shares most 4-edges with (itself if none)."""
    n = pieces.max() + 1
    src = np.concatenate([pieces[:, :-1].ravel(), pieces[:, 1:].ravel(),
                          pieces[:-1, :].ravel(), pieces[1:, :].ravel()])
    dst = np.concatenate([pieces[:, 1:].ravel(), pieces[:, :-1].ravel(),
                          pieces[1:, :].ravel(), pieces[:-1, :].ravel()])
    useful = fragments[src] & kept[dst] & (dst > 0)
    pair, contacts = np.unique(src[useful] * n + dst[useful], return_counts=True)
    choice = np.flatnonzero(fragments)                   # default: a piece of its own
    if pair.size:
        pair_src, pair_dst = pair // n, pair % n
        # most contacts first, then the smaller neighbour id, for a deterministic choice
        order = np.lexsort((pair_dst, -contacts, pair_src))
        best = order[np.r_[True, pair_src[order][1:] != pair_src[order][:-1]]]
        lookup = np.arange(n)
        lookup[pair_src[best]] = pair_dst[best]
        choice = lookup[choice]
    return choice
