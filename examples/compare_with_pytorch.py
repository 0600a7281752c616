"""One training step of the whole U-Net, in minunet and in PyTorch, tensor by tensor.

    python examples/compare_with_pytorch.py                    # float64, readable layers
    python examples/compare_with_pytorch.py --dtype float32 --fast

As llm.c's test_gpt2.c does for GPT-2: the same weights in both, one batch, then the largest
difference of every tensor that matters: the logits, the loss, the input gradient, every
parameter's gradient, the running statistics, and every parameter after one Adam step.
PyTorch is an optional oracle (`pip install torch`); without it this script says so and exits.
Exit code 1 if some difference is over the tolerance (float64: 1e-8 relative; float32: 1e-3).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import minunet as mu
from minunet.unet import UNet

TOLERANCE = {"float64": 1e-8, "float32": 1e-3}  # relative to the tensor's largest value
LR = 1e-3


def torch_unet(nn: object, model: UNet) -> object:
    """A PyTorch U-Net with minunet's structure and names (down.0.conv1.weight, ...)."""

    class DoubleConv(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)

        def forward(self, x: object) -> object:
            x = nn.functional.relu(self.bn1(self.conv1(x)))
            return nn.functional.relu(self.bn2(self.conv2(x)))

    class TorchUNet(nn.Module):
        def __init__(self, cin: int, classes: int, depth: int, base: int) -> None:
            super().__init__()
            c = [base * 2**i for i in range(depth + 1)]
            self.down = nn.ModuleList(DoubleConv(cin if i == 0 else c[i - 1], c[i])
                                      for i in range(depth))
            self.bottom = DoubleConv(c[depth - 1], c[depth])
            self.upconv = nn.ModuleList(nn.ConvTranspose2d(c[i + 1], c[i], 2, stride=2)
                                        for i in range(depth))
            self.up = nn.ModuleList(DoubleConv(2 * c[i], c[i]) for i in range(depth))
            self.head = nn.Conv2d(c[0], classes, 1)

        def forward(self, x: object) -> object:
            import torch

            skips = []
            for down in self.down:
                x = down(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.bottom(x)
            for i in reversed(range(len(self.up))):
                x = self.up[i](torch.cat([skips[i], self.upconv[i](x)], dim=1))
            return self.head(x)

    return TorchUNet(model.in_channels, model.num_classes, model.depth, model.base_channels)


def compare(name: str, ours: np.ndarray, theirs: np.ndarray, tol: float) -> bool:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    err = float(np.max(np.abs(ours - theirs), initial=0.0))
    scale = max(float(np.max(np.abs(theirs), initial=0.0)), 1e-30)
    ok = err <= tol * scale
    print(f"  {'ok  ' if ok else 'FAIL'} {name:<30} {theirs.shape!s:<16} max |diff| {err:.2e}  "
          f"(relative {err / scale:.1e})")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=tuple(TOLERANCE), default="float64")
    parser.add_argument("--fast", action="store_true", help="minunet's fast layers")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--base", type=int, default=4)
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("compare_with_pytorch: PyTorch is not installed (pip install torch); it is only "
              "an optional oracle, nothing was compared")
        return 0
    dtype, tol = np.dtype(args.dtype), TOLERANCE[args.dtype]
    model = UNet(2, 3, depth=args.depth, base_channels=args.base, rng=0,
                 readable=not args.fast).astype(dtype)
    net = torch_unet(torch.nn, model).to(getattr(torch, args.dtype))
    state = {k: torch.tensor(v) for k, v in model.state_dict().items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    rng = np.random.default_rng(1)
    size = 8 * 2**args.depth
    x = rng.standard_normal((2, 2, size, size + 2**args.depth)).astype(dtype)
    target = rng.integers(0, 3, (2, x.shape[2], x.shape[3]))

    # minunet: forward, loss, backward, Adam
    loss_fn = mu.CrossEntropyLoss()
    logits = model(x)
    loss = loss_fn.forward(logits, target)
    model.zero_grad()
    dx = model.backward(loss_fn.backward())
    grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    mu.Adam(model.parameters(), lr=LR).step()

    # PyTorch: the same
    tx = torch.tensor(x, requires_grad=True)
    tlogits = net(tx)
    tloss = torch.nn.functional.cross_entropy(tlogits, torch.tensor(target))
    tloss.backward()
    torch.optim.Adam(net.parameters(), lr=LR).step()
    theirs = dict(net.named_parameters())
    buffers = dict(net.named_buffers())

    print(f"{model!r}, {'fast' if args.fast else 'readable'} layers, {args.dtype}, input "
          f"{x.shape}: one step against PyTorch {torch.__version__} (tolerance {tol:g} "
          f"relative to each tensor's largest value)")
    ok = compare("logits", logits, tlogits.detach().numpy(), tol)
    ok &= compare("loss", np.array(loss), tloss.detach().numpy(), tol)
    ok &= compare("input gradient", dx, tx.grad.numpy(), tol)
    for name, grad in grads.items():
        ok &= compare(f"{name}.grad", grad, theirs[name].grad.numpy(), tol)
    for name, value in model.named_buffers():
        ok &= compare(name, value, buffers[name].numpy(), tol)
    for name, p in model.named_parameters():
        ok &= compare(f"{name} after Adam", p.data, theirs[name].detach().numpy(), tol)
    print("all tensors agree" if ok else "SOME TENSORS DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
