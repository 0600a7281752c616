"""Beyond one machine and beyond memory: large images by blocks, collections on a cluster.

    from minunet.scaleout import segment_large, predict_files
    segment_large("run/best.npz", "slide.tif", "slide_labels.zarr")      # larger than memory
    predict_files("run/best.npz", files, "labels/", workers=4)           # a local Dask cluster

Needs the `scale` extra (`pip install -e ".[scale]"`: dask, distributed, zarr). Importing this
package imports none of them: each is imported where it is used, so `minunet` itself never
pulls Dask in.
"""

from .collection import CollectionReport, predict_files
from .large import segment_large
from .sources import open_large

__all__ = ["CollectionReport", "open_large", "predict_files", "segment_large"]
