"""Callbacks a training run offers at fixed points: after each dispatched step, after a checkpoint save is
handed to orbax, after each evaluation batch, after each exported file, and a chance to replace a batch
before it is dispatched. The product installs none; tests install fault injection (kills, NaN batches) here,
so nothing in jaxft knows about faults (tests/faults.py).

    run(config, workdir, hooks=MyHooks())   # jaxft.tasks.run
"""

from __future__ import annotations

from pathlib import Path


class Hooks:
    """No-op base: override what you need. Called on the host, outside any jitted function."""

    def before_step(self, step: int, batch: dict) -> dict:
        """The batch (host arrays, [grad_accum_steps, rows, length]) of optimizer step `step` (1-based),
        before it is placed on the devices; return it, or a replacement of the same structure."""
        return batch

    def after_step(self, step: int) -> None:
        """Step `step` was dispatched (its computation may still be running)."""

    def after_save(self, step: int) -> None:
        """The checkpoint of `step` was handed to orbax (an asynchronous write may be in flight)."""

    def after_eval_batch(self) -> None:
        """One prediction batch of an evaluation (dev, test) was dispatched."""

    def after_export_file(self, path: Path) -> None:
        """One file of an exported model folder was moved into place."""


NO_HOOKS = Hooks()
