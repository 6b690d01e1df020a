"""orbax checkpoints of the whole training state: async saves, keep the latest N and the best by dev metric.

Each checkpoint holds the train state (step, parameters, optimizer moments, dropout RNG) and a JSON
"meta" item (data position, early-stopping counters, pending train metrics). orbax writes into a
temporary folder and renames it when complete, so a checkpoint is either whole or absent when the process
dies. What orbax cannot see is damage *after* that rename (a disk that lost the tail of a file, a bit flip,
a file someone truncated), so once a save has finished we write `jaxft_digest.json` into the step folder:
the size and sha256 of every file in it (local checkpoints; on cloud storage every object carries a checksum
the service verifies, and a digest would mean downloading the checkpoint). `restore` checks it first, and any failure (digest mismatch, a
missing file, orbax unable to read the data) raises `CorruptCheckpoint`, which the Trainer answers by
moving the folder aside and falling back to the previous checkpoint.

A save that fails (disk full, permissions) raises `CheckpointSaveError` naming the step and the cause, at
the save itself or, for async writes, at the next save or wait; the previous checkpoints stay as they were.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxft.files import as_path, is_remote, move_tree, size_of, write_text
from jaxft.train.errors import TrainingError

log = logging.getLogger("jaxft.train")

DIGEST_FILE = "jaxft_digest.json"
QUARANTINE_DIR = "checkpoints_damaged"   # next to checkpoints/: damaged step folders moved here, not deleted


class CorruptCheckpoint(Exception):
    """A checkpoint on disk that cannot be restored as written; `reason` says why."""

    def __init__(self, step: int, reason: str):
        self.step, self.reason = step, reason
        super().__init__(f"checkpoint at step {step} is damaged: {reason}")


class CheckpointSaveError(TrainingError):
    """Writing a checkpoint failed (disk full, no permission, ...)."""


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int, best_metric: str, asynchronous: bool = True,
                 is_writer: bool = True, on_save: Callable[[int], None] | None = None):
        """on_save(step): called once a save has been handed to orbax (its asynchronous write may be running)."""
        self.directory = as_path(directory) if is_remote(directory) else Path(directory).absolute()
        self.on_save = on_save
        self.best_metric = best_metric
        self.keep = keep
        self.asynchronous = asynchronous
        self.is_writer = is_writer
        self._pending_step: int | None = None   # the last save handed to orbax, maybe still being written
        self.damaged_at_open: list[tuple[int, str, Path | None]] = []  # (step, reason, moved to)
        self._set_aside_unopenable_steps()
        self.manager = self._make_manager()

    def _set_aside_unopenable_steps(self) -> None:
        """orbax reads every step's _CHECKPOINT_METADATA and metrics when it opens the folder and fails on a
        damaged one; such steps are moved aside first (and reported by the Trainer's resume)."""
        if not self.directory.is_dir():
            return
        for folder in sorted(self.directory.iterdir()):
            if not (folder.name.isdigit() and folder.is_dir()):
                continue
            for name in ("_CHECKPOINT_METADATA", "metrics/metrics"):
                try:
                    if (folder / name).exists():
                        json.loads((folder / name).read_text())
                except (OSError, ValueError) as err:
                    reason = f"{name} is unreadable ({type(err).__name__}: {err})"
                    self.damaged_at_open.append((int(folder.name), reason, self._move_aside(folder)))
                    break

    def _make_manager(self) -> ocp.CheckpointManager:
        best_metric = self.best_metric
        keep_policy = policies.AnyPreservationPolicy([
            policies.LatestN(n=self.keep),
            # Ties go to the earlier step, as the loop's strict-improvement rule picks it.
            policies.BestN(get_metric_fn=lambda metrics: (metrics[best_metric], -metrics["step"]), n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        # best_fn only makes orbax write each save's metrics to disk (and read them back when a resumed
        # process opens the folder); without it BestN sees no metrics after a restart and deletes the best.
        options = ocp.CheckpointManagerOptions(preservation_policy=keep_policy, create=True,
                                               best_fn=lambda metrics: metrics[best_metric], best_mode="max",
                                               enable_async_checkpointing=self.asynchronous,
                                               cleanup_tmp_directories=True)  # half-written saves of a killed run
        return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    # ------------------------------------------------------------------ saving

    def save(self, step: int, state: dict, meta: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        self.wait()  # orbax would wait for the previous save anyway; here its failure is reported and digested
        metrics = None if metrics is None else {**metrics, "step": step}
        try:
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            meta=ocp.args.JsonSave(meta)),
                              metrics=metrics, force=True)
        except Exception as err:  # OSError from the synchronous part; orbax wraps some in other types
            self._save_failed(step, err)
        self._pending_step = step
        if self.on_save is not None:
            self.on_save(step)

    def wait(self) -> None:
        """Block until the last save is on disk, then write its digest. Raises CheckpointSaveError."""
        try:
            self.manager.wait_until_finished()
        except Exception as err:
            step, self._pending_step = self._pending_step, None
            self._save_failed(step, err)
        if self._pending_step is not None:
            step, self._pending_step = self._pending_step, None
            # Cloud storage checks every object's checksum itself, and a digest would download the checkpoint
            if self.is_writer and not is_remote(self.directory) and (self.directory / str(step)).is_dir():
                try:
                    write_digest(self.directory / str(step))
                except OSError as err:
                    self._save_failed(step, err)

    def _save_failed(self, step: int | None, err: Exception) -> None:
        self.manager.reload()
        good = self.latest_step()
        cause = " ".join(f"{type(err).__name__}: {err}".split())[:500]
        try:  # consume the failed async save now; otherwise orbax re-raises it as a traceback at exit
            self.manager.close()
        except Exception:  # noqa: BLE001 - it is the error reported below
            pass
        raise CheckpointSaveError(
            f"could not write the checkpoint at step {step} to {self.directory} ({cause}). "
            + (f"The previous checkpoint, at step {good}, is intact: free space (or fix the folder) and re-run "
               "the same command to resume from it." if good is not None and good != step else
               "No earlier checkpoint exists.")) from None

    # ------------------------------------------------------------------ restoring

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, step: int, like_state: dict) -> tuple[dict, dict]:
        """(state, meta) of one checkpoint; CorruptCheckpoint when its files are damaged or unreadable."""
        folder = self.directory / str(step)
        verify_digest(folder, step)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
            state, meta = restored["state"], restored["meta"]
            if not isinstance(meta, dict) or "position" not in meta:
                raise ValueError(f"meta item is {type(meta).__name__}, without the data position")
        except Exception as err:  # tensorstore, orbax and json raise many types for damaged files
            raise CorruptCheckpoint(step, " ".join(f"{type(err).__name__}: {err}".split())[:400]) from None
        return state, meta

    def quarantine(self, step: int) -> Path | None:
        """Move a damaged step folder out of orbax's sight (next to checkpoints/), for inspection."""
        target = self._move_aside(self.directory / str(step))
        self.manager.reload()
        return target

    def _move_aside(self, folder: Path) -> Path | None:
        if not (self.is_writer and folder.exists()):
            return None
        target = self.directory.parent / QUARANTINE_DIR / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        move_tree(folder, target)
        return target

    def close(self) -> None:
        self.manager.close()


def _file_digest(path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_digest(folder) -> None:
    files = {str(p.relative_to(folder)): {"size": size_of(p), "sha256": _file_digest(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != DIGEST_FILE}
    write_text(folder / DIGEST_FILE, json.dumps({"files": files}, indent=1, sort_keys=True))


def verify_digest(folder: Path, step: int) -> None:
    """Check the files of a finished checkpoint against its digest. A checkpoint without one (killed right
    after its save finished, or written by an older jaxft) is left to orbax's own checks."""
    path = folder / DIGEST_FILE
    if not folder.is_dir():
        raise CorruptCheckpoint(step, f"{folder} is missing")
    if not path.exists():
        return
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptCheckpoint(step, f"{DIGEST_FILE} is unreadable ({type(err).__name__}: {err})") from None
    for name, expected in sorted(files.items()):
        file = folder / name
        if not file.is_file():
            raise CorruptCheckpoint(step, f"file {name} is missing")
        size = size_of(file)
        if size != expected["size"]:
            raise CorruptCheckpoint(step, f"file {name} has {size} bytes, {expected['size']} were written "
                                          "(truncated or overwritten)")
        if _file_digest(file) != expected["sha256"]:
            raise CorruptCheckpoint(step, f"file {name} does not match its sha256 (corrupted on disk)")
