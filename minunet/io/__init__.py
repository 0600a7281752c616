"""File input and output, at the bottom of the house: nothing here imports the network.

    images.py    read images as stored (TIFF, PNG, NPY), pixel sizes, label TIFFs
    files.py     atomic writes with the user's umask, stale temporary files
    folders.py   training folders as labs keep them (StarDist, Cellpose layouts)
    lazy.py      training sets read from disk one sample at a time (folders, Zarr stores)
"""

from .files import remove_stale_temps, write_atomic
from .images import IMAGE_SUFFIXES, read_image, read_pixel_size, write_labels

__all__ = ["IMAGE_SUFFIXES", "read_image", "read_pixel_size", "remove_stale_temps",
           "write_atomic", "write_labels"]
