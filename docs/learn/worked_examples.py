"""The small worked examples of docs/learn/*.md, computed: every number the notes quote.

    python docs/learn/worked_examples.py            # all of them
    python docs/learn/worked_examples.py conv2d     # one: conv2d, conv_transpose, maxpool,
                                                    #      batchnorm, softmax

Each example runs minunet's own readable layer (float64) and the formula of the notes side by
side, and prints both, so that a note and the code cannot drift apart unnoticed
(tests/test_learn_docs.py runs this script).
"""

from __future__ import annotations

import sys

import numpy as np

import minunet as mu
from minunet import layers

np.set_printoptions(precision=4, suppress=True, floatmode="maxprec")


def show(name: str, a: np.ndarray) -> None:
    text = np.array2string(np.asarray(a), separator=", ")
    print(f"{name} =\n{text}" if "\n" in text else f"{name} = {text}")


def conv2d() -> None:
    print("== Conv2d: per tap, and dx as a full correlation with the flipped kernel")
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)            # [[1,2,3],[4,5,6],[7,8,9]]
    conv = layers.Conv2d(1, 1, 2, bias=False).astype(np.float64)
    conv.weight.data[...] = [[[[1.0, 2.0], [3.0, 4.0]]]]     # w = [[1,2],[3,4]]
    y = conv.forward(x)
    show("x", x[0, 0])
    show("w", conv.weight.data[0, 0])
    show("y = conv(x, w)", y[0, 0])
    for kh in range(2):
        for kw in range(2):
            w = conv.weight.data[0, 0, kh, kw]
            show(f"tap ({kh},{kw}): w={w:g} times x[{kh}:{kh + 2}, {kw}:{kw + 2}]",
                 w * x[0, 0, kh:kh + 2, kw:kw + 2])
    dy = np.array([[[[1.0, -1.0], [2.0, 0.0]]]])
    dx = conv.backward(dy)
    show("dy", dy[0, 0])
    show("dx from Conv2d.backward", dx[0, 0])
    w_flipped = conv.weight.data[0, 0, ::-1, ::-1]
    dy_full = np.pad(dy[0, 0], 1)                            # K - 1 = 1 zeros on each side
    full = np.array([[np.sum(dy_full[i:i + 2, j:j + 2] * w_flipped) for j in range(3)]
                     for i in range(3)])
    show("w flipped", w_flipped)
    show("dx = full correlation of dy with w flipped", full)
    print(f"equal: {np.allclose(full, dx[0, 0])}\n")


def conv_transpose() -> None:
    print("== ConvTranspose2d: the adjoint of a strided convolution")
    w0, w1 = 1.0, 2.0
    C = np.array([[w0, w1, 0, 0],          # 1-D conv, K = 2, S = 2, on 4 pixels: y = C x
                  [0, 0, w0, w1]])
    x = np.array([1.0, 2.0, 3.0, 4.0])
    u = np.array([10.0, 20.0])
    show("C (conv, K=2, S=2, 4 pixels -> 2)", C)
    show("y = C x", C @ x)
    show("C^T (the transposed conv, 2 pixels -> 4)", C.T)
    show("C^T u: every input pixel stamps [w0, w1] times its value", C.T @ u)
    print(f"<C x, u> = {np.dot(C @ x, u):g},  <x, C^T u> = {np.dot(x, C.T @ u):g}")

    rng = np.random.default_rng(0)
    conv = layers.Conv2d(2, 3, 3, stride=2, padding=1, bias=False, rng=rng).astype(np.float64)
    up = layers.ConvTranspose2d(3, 2, 3, stride=2, padding=1, bias=False).astype(np.float64)
    up.weight.data[...] = conv.weight.data  # (3, 2, K, K): conv (Cout, Cin) = up (Cin, Cout)
    x2 = rng.standard_normal((1, 2, 7, 7))
    u2 = rng.standard_normal((1, 3, 4, 4))
    print(f"2-D, K=3, S=2, P=1, 2 <-> 3 channels: "
          f"<conv(x), u> = {np.sum(conv.forward(x2) * u2):.10f}"
          f",  <x, conv_transpose(u)> = {np.sum(x2 * up.forward(u2)):.10f}")

    for K in (3, 2):
        up = layers.ConvTranspose2d(1, 1, K, stride=2, bias=False).astype(np.float64)
        up.weight.data[...] = 1.0
        show(f"K={K}, S=2, input and weights all ones: how many stamps cover each output pixel",
             up.forward(np.ones((1, 1, 3, 3)))[0, 0])
    print()


def maxpool() -> None:
    print("== MaxPool2d: routing")
    x = np.array([[[[1.0, 3.0, 2.0, 2.0],
                    [0.0, 2.0, 1.0, 2.0],
                    [5.0, 1.0, 0.0, 0.0],
                    [4.0, 6.0, 0.0, 0.0]]]])
    pool = layers.MaxPool2d(2)
    out = pool.forward(x)
    dout = np.array([[[[10.0, 20.0], [30.0, 40.0]]]])
    show("x", x[0, 0])
    show("out = 2x2 max", out[0, 0])
    show("dout", dout[0, 0])
    show("dx (each dout to its window's winner; ties: the first in row-major order)",
         pool.backward(dout)[0, 0])
    print()


def batchnorm() -> None:
    print("== BatchNorm2d: the three terms of dx (one channel, M = 4 values, gamma = 1)")
    x = np.array([1.0, 2.0, 3.0, 6.0]).reshape(1, 1, 2, 2)
    g = np.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 2, 2)
    for eps in (0.0, 1e-5):
        bn = layers.BatchNorm2d(1, eps=eps).astype(np.float64)
        bn.forward(x)
        x_hat, istd, _ = bn._saved
        dx = bn.backward(g.copy())
        dxh = g.ravel()                                  # dx_hat = gamma * g, gamma = 1
        xh = x_hat.ravel()
        term1, term2 = istd[0] * dxh, istd[0] * np.full(4, dxh.mean())
        term3 = istd[0] * xh * np.mean(dxh * xh)
        print(f"eps = {eps:g}: mu = {x.mean():g}, var = {x.var():g}, istd = {istd[0]:.6f}")
        show("  x_hat", xh)
        show("  (1) direct         istd * dx_hat", term1)
        show("  (2) via the mean   istd * mean(dx_hat)", term2)
        show("  (3) via the var    istd * x_hat * mean(dx_hat * x_hat)", term3)
        show("  dx = (1) - (2) - (3)", term1 - term2 - term3)
        show("  dx from BatchNorm2d.backward", dx.ravel())
        print(f"  sum(dx) = {dx.sum():.2e}   <dx, x_hat> = {np.sum(dx.ravel() * xh):.2e}")
    print()


def softmax() -> None:
    print("== softmax + cross-entropy: d loss / d logits = p - onehot")
    logits = np.array([2.0, 1.0, 0.0]).reshape(1, 3, 1, 1)
    target = np.array([[[1]]])                                  # the true class is 1
    loss_fn = mu.CrossEntropyLoss()
    loss = loss_fn.forward(logits, target)
    p = np.exp(logits.ravel()) / np.exp(logits.ravel()).sum()
    show("logits", logits.ravel())
    show("p = softmax(logits)", p)
    print(f"loss = -log p[1] = {-np.log(p[1]):.6f} (CrossEntropyLoss: {loss:.6f})")
    show("p - onehot", p - np.eye(3)[1])
    show("CrossEntropyLoss.backward()", loss_fn.backward().ravel())
    eps = 1e-6
    numeric = []
    for k in range(3):
        plus, minus = logits.copy(), logits.copy()
        plus[0, k] += eps
        minus[0, k] -= eps
        numeric.append((mu.CrossEntropyLoss().forward(plus, target)
                        - mu.CrossEntropyLoss().forward(minus, target)) / (2 * eps))
    show("finite differences", np.array(numeric))
    print()


EXAMPLES = {"conv2d": conv2d, "conv_transpose": conv_transpose, "maxpool": maxpool,
            "batchnorm": batchnorm, "softmax": softmax}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(EXAMPLES):
        EXAMPLES[name]()
