"""Train a small U-Net on synthetic cells (being built: the data, network and training issues).

For now this checks that the package imports; the full example lands with the training loop.
"""

import minunet as mu

if __name__ == "__main__":
    print(f"minunet {mu.__version__}: the training example is not there yet.")
