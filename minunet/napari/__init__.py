"""minunet inside napari: a segmentation widget, a reader and writer, sample data, and
"save for training". Installed with the `napari` extra (`pip install -e ".[napari]"`) and found
by napari through the manifest `napari.yaml` beside this file (entry point `napari.manifest`).

    widget.py     the dock widget: model, diameter, post-processing, Run; save for training
    training.py   save an image and its labels into a training folder (no napari needed)
    reader.py     label TIFFs as Labels layers; `minunet predict` output folders
    writer.py     a Labels layer as a uint16 label TIFF
    sample.py     a generated `broad` image with its true labels

Nothing here is imported by `import minunet` or the `minunet` command: napari and Qt are
loaded only when napari loads the plugin.
"""
