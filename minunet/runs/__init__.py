"""Training runs: a folder that a model is trained in, started and continued the same way
from Python and from `minunet train` (which only parses arguments and calls these).

    run = mu.fit("cells", out="run", from_="nuclei")   # fine-tune on a lab's annotations
    run.best.model; run.history; run.resume(epochs=20)

    settings.py   the defaults (from scratch, fine-tuning), their checks
    data.py       the run's data: layouts, digests, the validation draw, size checks
    run.py        `fit`, `resume`, `Run`: the training, the tuning, the folder's rules
"""

from typing import Any

from .settings import DEFAULTS, FINETUNE_DEFAULTS, RESUME_MAY_CHANGE, RunError

_IN_RUN = ("RUN_FILES", "Run", "fit", "position", "resume")


def __getattr__(name: str) -> Any:
    """run.py's names, imported on first use: `minunet predict` reads only the settings (its
    parser's help shows train's defaults), and run.py with what it imports takes 13 ms."""
    if name in _IN_RUN:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULTS", "FINETUNE_DEFAULTS", "RESUME_MAY_CHANGE", "RUN_FILES", "Run", "RunError",
           "fit", "position", "resume"]
