"""Default locations of MM-SY datasets and caches.

Everything lives under one home directory, ``$MMSY_HOME`` or ``~/.cache/mmsy``:

- ``data/<source>``: datasets written by ``mmsy build`` (``data/easyvqa``, ``data/tdiuc``).
- ``organism``: the cached model organism checkpoint.
"""

import os
from pathlib import Path

HOME_ENV = "MMSY_HOME"


def mmsy_home() -> Path:
    """Return the MM-SY home directory (``$MMSY_HOME``, else ``~/.cache/mmsy``)."""
    value = os.environ.get(HOME_ENV)
    if value:
        return Path(value).expanduser()
    return Path.home() / ".cache" / "mmsy"


def default_dataset_dir(source: str) -> Path:
    """Return the directory where ``mmsy build --source SOURCE`` writes by default."""
    return mmsy_home() / "data" / source


def task_folder() -> Path:
    """Return the lmms-eval task folder that ``--include_path`` should name."""
    return Path(__file__).resolve().parent / "tasks"
