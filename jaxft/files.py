"""Files a run writes, on a local disk or on cloud storage (gs://, s3://: any path etils.epath takes), and
always atomically: a reader (or a resumed run) never sees half a file under its real name.

Local: a file is written next to its target and renamed over it (os.replace is atomic on POSIX); a folder's
files are written into a temporary sibling folder and then moved in one by one, so an interrupted export
leaves every file either old or new, never truncated. Cloud storage: an object is written whole or not at
all, so files are uploaded directly; what a run appends to (metrics.jsonl, TensorBoard events, train.log) is
written to a local staging folder and uploaded whole at every checkpoint and at the end (`staging_dir`,
`upload`). A path is never put through pathlib when it is remote, so `gs://b/x` never becomes `./gs:/b/x`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from etils import epath

STAGING_ROOT = "~/.cache/jaxft/staging"  # JAXFT_STAGING_DIR moves it


def is_remote(path) -> bool:
    return "://" in os.fspath(path)


def as_path(path):
    """A remote path as an epath.Path, a local one as a pathlib.Path."""
    return epath.Path(os.fspath(path)) if is_remote(path) else Path(os.fspath(path))


REMOTE_CHECK_SECONDS = 20.0


def check_remote_folder(folder, timeout: float = REMOTE_CHECK_SECONDS) -> str | None:
    """Why a remote folder cannot be written (one line), or None when it can: a marker object is written
    and removed, within `timeout` seconds (a storage client without credentials or network retries for long)."""
    outcome: list = []

    def probe() -> None:
        try:
            path = as_path(folder)
            path.mkdir(parents=True, exist_ok=True)
            marker = path / ".jaxft-write-check"
            marker.write_text("ok")
            marker.unlink()
            outcome.append(None)
        except Exception as err:  # noqa: BLE001 - storage clients raise many types; the caller reports it
            outcome.append(" ".join(f"{type(err).__name__}: {err}".split())[:300])

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f"no answer from the storage service within {timeout:g} s"
    return outcome[0]


def staging_dir(workdir) -> Path:
    """Where a run writes what it appends to: the workdir itself when local; for a remote workdir a local
    folder named after it (uploaded with `upload`)."""
    if not is_remote(workdir):
        return Path(workdir)
    root = Path(os.environ.get("JAXFT_STAGING_DIR", STAGING_ROOT)).expanduser()
    folder = root / re.sub(r"[^A-Za-z0-9._-]+", "_", os.fspath(workdir)).strip("_")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def upload(local: Path, remote, names: Iterable[str] | None = None) -> None:
    """Copy files (and folders, recursively) of `local` to `remote`, replacing what is there; None: all of
    `local`'s entries. Nothing to do when both are the same folder."""
    remote = as_path(remote)
    if not is_remote(remote) and Path(remote).resolve() == Path(local).resolve():
        return
    for name in (sorted(p.name for p in Path(local).iterdir()) if names is None else names):
        source = Path(local) / name
        if source.is_dir():
            upload(source, remote / name)
        elif source.is_file():
            remote.mkdir(parents=True, exist_ok=True)
            (remote / name).write_bytes(source.read_bytes())


def download(remote, local: Path) -> bool:
    """Copy one remote file to `local` (False when it does not exist)."""
    remote = as_path(remote)
    if not remote.exists():
        return False
    Path(local).parent.mkdir(parents=True, exist_ok=True)
    Path(local).write_bytes(remote.read_bytes())
    return True


def size_of(path) -> int:
    path = as_path(path)
    return path.stat().length if is_remote(path) else path.stat().st_size


def move_tree(source, target) -> None:
    """Move a folder (a damaged checkpoint set aside), locally or on cloud storage."""
    if is_remote(source):
        as_path(source).rename(as_path(target))
    else:
        shutil.move(os.fspath(source), os.fspath(target))


def write_text(path, text: str):
    if is_remote(path):
        path = as_path(path)
        path.write_text(text)
        return path
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json(path, payload: Any):
    """Indented, sorted keys; numpy scalars are written as floats."""
    return write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n")


def write_folder(folder, write: Callable[[Path], None], on_file: Callable[[Path], None] | None = None):
    """`write(tmp)` fills a temporary folder; its files then replace those of `folder` (created if needed;
    other files in it are kept). `on_file(path)` is called after each file is in place."""
    if is_remote(folder):
        folder = as_path(folder)
        with tempfile.TemporaryDirectory(prefix="jaxft-export-") as tmp:
            write(Path(tmp))
            for item in sorted(Path(tmp).iterdir()):
                upload(Path(tmp), folder, [item.name])
                if on_file is not None:
                    on_file(folder / item.name)
        return folder
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.tmp-") as tmp:
        write(Path(tmp))
        for item in sorted(Path(tmp).iterdir()):
            os.replace(item, folder / item.name)
            if on_file is not None:
                on_file(folder / item.name)
    return folder
