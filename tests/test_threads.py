"""minunet's thread pool: every item runs once, errors come back, BLAS is restored."""

import threading

import numpy as np
import pytest

from minunet.kernels import conv as kernels
from minunet.kernels import reference, threads


@pytest.fixture
def two_threads():
    before = threads.get_num_threads()
    threads.set_num_threads(2)
    yield
    threads.set_num_threads(before)


def test_every_item_runs_exactly_once(two_threads):
    seen = np.zeros(1000, dtype=np.int64)
    slots = set()

    def item(i, slot):
        seen[i] += 1
        slots.add(slot)

    threads.parallel_for(item, seen.size)
    assert np.all(seen == 1)
    assert slots <= {0, 1}


def test_an_item_error_is_raised_in_the_caller(two_threads):
    def item(i, slot):
        if i == 7:
            raise ValueError("item 7 is bad")

    with pytest.raises(ValueError, match="item 7 is bad"):
        threads.parallel_for(item, 50)
    threads.parallel_for(lambda i, slot: None, 10)  # the pool still works afterwards


def test_nested_regions_run_inline(two_threads):
    out = np.zeros((4, 5))

    def inner_row(i, slot):
        threads.parallel_for(lambda j, s: out.__setitem__((i, j), i * 10 + j), 5)

    threads.parallel_for(inner_row, 4)
    assert np.array_equal(out, np.arange(4)[:, None] * 10 + np.arange(5))


def test_blas_thread_count_is_restored(two_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    controller = threadpoolctl.ThreadpoolController().select(user_api="blas")
    if not controller.lib_controllers:
        pytest.skip("no BLAS library found by threadpoolctl")
    before = [c.get_num_threads() for c in controller.lib_controllers]
    inside = []
    lock = threading.Lock()

    def item(i, slot):
        with lock:
            inside.extend(c.get_num_threads() for c in controller.lib_controllers)

    threads.parallel_for(item, 8)
    assert set(inside) == {1}  # the items are the parallelism: BLAS single-threaded inside
    assert [c.get_num_threads() for c in controller.lib_controllers] == before


class BlasRecorder:
    """Stands in for threads._blas: records every switch to one thread and back."""

    def __init__(self):
        self.calls = []

    def single(self):
        self.calls.append("single")
        return []

    def restore(self, previous):
        self.calls.append("restore")


def test_regions_without_blas_leave_its_thread_count_alone(two_threads, monkeypatch):
    recorder = BlasRecorder()
    monkeypatch.setattr(threads, "_blas", recorder)
    threads.parallel_for(lambda i, slot: None, 8, blas=False)
    threads.parallel_for(lambda i, slot: None, 8, serial=True, blas=False)
    assert recorder.calls == []
    threads.parallel_for(lambda i, slot: None, 8)
    threads.parallel_for(lambda i, slot: None, 8, serial=True)
    assert recorder.calls == ["single", "restore"] * 2


def test_batch_norm_and_direct_convolutions_never_switch_blas(two_threads, monkeypatch):
    """Their regions run Numba kernels only: no BLAS thread switching (15 us a region)."""
    from minunet.kernels.layers import BatchNormReLU2d
    recorder = BlasRecorder()
    monkeypatch.setattr(threads, "_blas", recorder)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16, 128, 128)).astype(np.float32)  # over SERIAL_BYTES
    bn = BatchNormReLU2d(16)
    bn.backward(bn.forward(x))
    assert recorder.calls == []
    if kernels._direct(np.dtype(np.float32), 3, 1, 1, 128):
        w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
        kernels.conv2d_forward(x, w, None, 1, 1)
        kernels.conv2d_backward_weight(x, x, 3, 1, 1)
        assert recorder.calls == []


def test_serial_regions_run_in_order_in_the_caller_with_single_threaded_blas(two_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    controller = threadpoolctl.ThreadpoolController().select(user_api="blas")
    seen = []

    def item(i, slot):
        seen.append((i, slot, threading.get_ident(),
                     {c.get_num_threads() for c in controller.lib_controllers}))

    threads.parallel_for(item, 6, serial=True)
    assert [s[:2] for s in seen] == [(i, 0) for i in range(6)]
    assert {s[2] for s in seen} == {threading.get_ident()}
    if controller.lib_controllers:
        assert all(s[3] == {1} for s in seen)


def test_small_layers_run_serially_and_large_ones_in_parallel(two_threads, monkeypatch):
    """The size thresholds: a small convolution or batch norm stays in the calling thread."""
    calls = []
    real = threads.parallel_for

    def spy(fn, count, serial=False, **options):
        calls.append(serial)
        real(fn, count, serial=serial, **options)

    monkeypatch.setattr(kernels, "parallel_for", spy)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    kernels.conv2d_forward(rng.standard_normal((1, 8, 16, 16)).astype(np.float32), w, None, 1, 1)
    kernels.conv2d_forward(rng.standard_normal((8, 8, 128, 128)).astype(np.float32), w, None,
                           1, 1)
    assert calls == [True, False]  # 0.3 MFLOP serial, 151 MFLOP in parallel
    from minunet.kernels import batchnorm
    assert batchnorm._channel_groups(16, 1 << 20)[1] == 1
    assert batchnorm._channel_groups(16, 64 << 20)[1] > 1


def test_bad_thread_counts():
    with pytest.raises(ValueError, match="positive integer"):
        threads.set_num_threads(0)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_in_bands_of_one_row_matches_reference(monkeypatch, n_threads, dtype):
    """Tiny column budget: every output row is its own item, spread over the threads."""
    monkeypatch.setattr(kernels, "COL_BYTES", 1)
    before = threads.get_num_threads()
    threads.set_num_threads(n_threads)
    try:
        rng = np.random.default_rng(n_threads)
        for N, Cin, Cout, H, W, K, S, P in [(3, 2, 3, 9, 7, 3, 1, 1), (2, 3, 2, 8, 11, 3, 2, 1),
                                            (1, 2, 4, 6, 6, 2, 2, 0), (2, 3, 11, 5, 8, 3, 1, 2),
                                            (1, 9, 2, 7, 6, 1, 1, 0), (2, 2, 3, 4, 9, 5, 1, 1)]:
            x = rng.standard_normal((N, Cin, H, W)).astype(dtype)
            w = rng.standard_normal((Cout, Cin, K, K)).astype(dtype)
            y = kernels.conv2d_forward(x, w, None, S, P)
            y_ref = reference.conv2d_forward_reference(x, w, None, S, P)
            np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-5 if dtype == np.float32
                                       else 1e-12)
            dy = rng.standard_normal(y.shape).astype(dtype)
            dw = kernels.conv2d_backward_weight(x, dy, K, S, P)
            dw_ref = reference.conv2d_backward_weight_reference(x, dy, K, S, P)
            np.testing.assert_allclose(dw, dw_ref, rtol=0, atol=1e-4 if dtype == np.float32
                                       else 1e-11)
            dx = kernels.conv2d_backward_input(dy, w, S, P, H, W)
            dx_ref = reference.conv2d_backward_input_reference(dy, w, S, P, H, W)
            np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=1e-5 if dtype == np.float32
                                       else 1e-12)
    finally:
        threads.set_num_threads(before)


@pytest.mark.parametrize("route", ["blas", "direct", "direct, small images"])
def test_weight_gradient_does_not_depend_on_which_thread_ran_what(monkeypatch, route):
    """Training must be reproducible: dw may not depend on the order items ran in or on
    which thread (slot) ran each one. A stand-in pool runs the items in a scrambled order on
    changing slots and must give the same bits as running them in order on one slot."""
    monkeypatch.setattr(kernels, "COL_BYTES", 64)  # many (image, band) pieces
    monkeypatch.setattr(kernels, "WEIGHT_BAND_BYTES", 64)
    monkeypatch.setattr(kernels, "USE_DIRECT", route != "blas")
    W = {"blas": 11, "direct": 96, "direct, small images": 32}[route]  # direct: 16k pixels
    assert kernels._direct_weight(np.float32, 3, 1, 1, 13, W) == (route != "blas")
    if route != "blas":
        assert (13 * W <= kernels.SMALL_IMAGE_PIXELS) == (route == "direct, small images")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 13, W)).astype(np.float32)
    dy = rng.standard_normal((5, 4, 13, W)).astype(np.float32)

    def in_order(fn, count, serial=False, **options):
        for i in range(count):
            fn(i, 0)

    def scrambled(fn, count, serial=False, **options):
        for i in reversed(range(count)):
            fn(i, (7 * i) % 3)

    monkeypatch.setattr(kernels, "parallel_for", in_order)
    expected = kernels.conv2d_backward_weight(x, dy, 3, 1, 1)
    monkeypatch.setattr(kernels, "parallel_for", scrambled)
    np.testing.assert_array_equal(kernels.conv2d_backward_weight(x, dy, 3, 1, 1), expected)


def test_map_batch_runs_a_slice_per_thread_with_its_own_scratch_slot(two_threads):
    """The regions fn opens inside a slice run in that slice's thread, on its own slot."""
    x = np.arange(10.0).reshape(10, 1)
    seen = {}
    lock = threading.Lock()
    both = threading.Barrier(2, timeout=30)  # each slice waits for the other: two threads

    def fn(part):
        both.wait()
        slots = set()
        threads.parallel_for(lambda i, slot: slots.add(slot), 4)  # nested: inline
        with lock:
            seen[int(part[0, 0])] = (len(part), slots)
        return part * 2

    out = threads.map_batch(fn, x, flops=2 * threads.SPLIT_FLOPS)  # two slices
    assert np.array_equal(out, x * 2)
    assert sorted(seen) == [0, 5] and all(n == 5 for n, _ in seen.values())
    assert seen[0][1] | seen[5][1] == {0, 1}  # one slot per thread, never shared
    assert all(len(slots) == 1 for _, slots in seen.values())


def test_map_batch_leaves_small_work_unsplit(two_threads):
    calls = []
    out = threads.map_batch(lambda part: calls.append(len(part)) or part + 1, np.zeros((8, 2)),
                            flops=threads.SPLIT_FLOPS)  # half of it per slice: too small
    assert calls == [8] and np.array_equal(out, np.ones((8, 2)))
    threads.map_batch(lambda part: calls.append(len(part)) or part, np.zeros((8, 2)),
                      flops=2 * threads.SPLIT_FLOPS)
    assert sorted(calls) == [4, 4, 8]  # one slice per thread


def test_a_finished_region_keeps_nothing_alive(two_threads):
    """A worker drops the region it ran: its function (which holds a convolution's input and
    output, 160 MiB on a 1024-px tile) must not stay alive until the next region."""
    import time
    import weakref

    seen = set()

    def region_function():    # a function that alone holds an array, as a convolution's does
        big = np.ones(1000)

        def fn(i, slot):
            seen.add(slot)
            time.sleep(0.01)   # long enough for the worker to join
            big.sum()
        return fn, weakref.ref(big)

    fn, alive = region_function()
    threads.parallel_for(fn, 8)
    assert seen == {0, 1}
    del fn
    deadline = time.monotonic() + 2.0
    while alive() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert alive() is None


@pytest.mark.parametrize("rows, band, serial", [(0, 4, False), (1, 4, False), (130, 32, False),
                                                (130, 32, True), (64, 64, False)])
def test_parallel_rows_covers_every_row_once(rows, band, serial):
    """parallel_rows hands out [first, stop) bands of at most `band` rows that cover
    range(rows) exactly once, threaded or in the calling thread."""
    seen = np.zeros(rows, np.int64)
    spans = []

    def fn(first, stop):
        assert 0 <= first < stop <= rows and stop - first <= band
        seen[first:stop] += 1
        spans.append((first, stop))

    threads.parallel_rows(fn, rows, band, serial=serial)
    assert (seen == 1).all() and len(spans) == -(-rows // band)
