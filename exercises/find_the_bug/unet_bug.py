"""Find the bug: this U-Net learns, but slowly, and its first layers hardly move.

    python -m exercises.check exercises/find_the_bug/unet_bug.py

Which parts' gradients are right, which are wrong? Backward visits the parts in the reverse
order of forward: where does the path go from right to wrong? (docs/learn/README.md, step 5)
"""

from minunet.unet import UNet as ReadableUNet


class UNet(ReadableUNet):
    def backward(self, dlogits):
        d = self.head.backward(dlogits)
        dskip = [None] * self.depth
        for i in range(self.depth):
            d = self.up[i].backward(d)
            dskip[i], d = self.concat[i].backward(d)
            d = self.upconv[i].backward(d)
        d = self.bottom.backward(d)
        for i in reversed(range(self.depth)):
            d = self.pool[i].backward(d)
            d = self.down[i].backward(d)
        return d
