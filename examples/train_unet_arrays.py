"""Train a U-Net by hand: the five lines of a training step, on a small batch of synthetic discs.

    python examples/train_unet_arrays.py

Each step is what `mu.train` does inside (plus shuffling, validation, checkpoints, logs):

    logits = model.forward(x)                  # (N, Kc, H, W)
    loss = loss_fn.forward(logits, target)     # a float
    optimizer.zero_grad()                      # gradients accumulate: clear them first
    model.backward(loss_fn.backward())         # fills every p.grad
    optimizer.step()                           # changes every p.data
"""

import time

import numpy as np

import minunet as mu

SIZE = 32         # image side; must be divisible by 2**depth
N_TRAIN = 16      # images in the training batch
STEPS = 60
NOISE = 0.4       # standard deviation of the Gaussian noise on the images


def make_discs(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 1, SIZE, SIZE) with 1-3 bright discs; targets (n, SIZE, SIZE): 1 = disc."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = np.zeros((n, 1, SIZE, SIZE), np.float32)
    targets = np.zeros((n, SIZE, SIZE), np.int64)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            r = rng.uniform(3, 7)
            cy, cx = rng.uniform(r, SIZE - r, size=2)
            targets[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        images[i, 0] = targets[i] + NOISE * rng.standard_normal((SIZE, SIZE))
    return images, targets


def main() -> None:
    rng = np.random.default_rng(0)
    x, target = make_discs(N_TRAIN, rng)
    x_test, target_test = make_discs(8, rng)

    model = mu.UNet(in_channels=1, num_classes=2, depth=2, base_channels=8, rng=rng)
    print(model.summary((SIZE, SIZE)))
    loss_fn = mu.CrossEntropyLoss()
    optimizer = mu.Adam(model.parameters(), lr=1e-2)

    model.train()  # batch norm uses the batch's statistics
    started = time.perf_counter()
    for step in range(1, STEPS + 1):
        logits = model.forward(x)                  # (N, 2, SIZE, SIZE)
        loss = loss_fn.forward(logits, target)
        optimizer.zero_grad()
        model.backward(loss_fn.backward())
        optimizer.step()
        if step % 10 == 0:
            print(f"step {step:4d}  loss {loss:.4f}  ({time.perf_counter() - started:.1f} s)")

    model.eval()   # batch norm uses its running statistics
    prediction = model.forward(x_test).argmax(axis=1)  # (8, SIZE, SIZE): 0 or 1 per pixel
    accuracy = np.mean(prediction == target_test)
    print(f"pixel accuracy on 8 new images: {accuracy:.3f}")


if __name__ == "__main__":
    main()
