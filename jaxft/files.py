"""Atomic writes: a reader (or a resumed run) never sees half a file under its real name.

A file is written next to its target and renamed over it (os.replace is atomic on POSIX); a folder's files
are written into a temporary sibling folder and then moved in one by one, so an interrupted export leaves
every file either old or new, never truncated.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Indented, sorted keys; numpy scalars are written as floats."""
    return write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n")


def write_folder(folder: str | os.PathLike, write: Callable[[Path], None],
                 on_file: Callable[[Path], None] | None = None) -> Path:
    """`write(tmp)` fills a temporary sibling folder; its files then replace those of `folder` (created if
    needed; other files in it are kept). `on_file(path)` is called after each file is moved in."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.tmp-") as tmp:
        write(Path(tmp))
        for item in sorted(Path(tmp).iterdir()):
            os.replace(item, folder / item.name)
            if on_file is not None:
                on_file(folder / item.name)
    return folder
