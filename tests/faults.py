"""Fault injection for the preemption tests (tests/test_faults.py), installed as training-run hooks.

    JAXFT_FAULT_AT="phase:n[@seconds][,phase:n...]" python tests/fault_run.py --config ... (jaxft.main's flags)

Each hook call counts one occurrence of its phase in this process; at the n-th occurrence the planned fault
fires: by default SIGKILL of this very process (no cleanup, no flush, like a preempted VM); `@seconds` delays
the kill by that long from a background thread while the run goes on (so the kill lands *inside* whatever the
phase started, e.g. an async checkpoint write). Phases:

    step       a train step was dispatched (its computation may still be running)
    save       a checkpoint save was handed to orbax (its async write is in flight)
    eval       a predict batch of an evaluation (dev, test) was dispatched
    export     one file of an exported model folder was moved into place
    sigterm    at this step, send SIGTERM to this process instead of SIGKILL (the graceful preemption path)
    nonfinite  at this step, poison the batch so its loss and gradients are NaN (`poison_losses` makes the
               NER task's loss read the poison; the product step knows nothing of it)
"""

from __future__ import annotations

import os
import signal
import threading

import numpy as np

from jaxft.train.hooks import Hooks

ENV = "JAXFT_FAULT_AT"
PHASES = ("step", "save", "eval", "export", "sigterm", "nonfinite")
POISON_KEY = "fault_poison"  # batch key: [grad_accum_steps, rows] float32 multiplier of the loss (NaN poisons)


def parse_plan(spec: str) -> dict[tuple[str, int], float]:
    plan = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        phase, _, rest = item.partition(":")
        count, _, delay = rest.partition("@")
        if phase not in PHASES or not count.isdigit() or int(count) < 1:
            raise ValueError(f"{ENV}: bad item {item!r}; expected phase:n[@seconds] with phase one of "
                             f"{', '.join(PHASES)} and n >= 1")
        plan[(phase, int(count))] = float(delay) if delay else 0.0
    return plan


class FaultHooks(Hooks):
    def __init__(self, plan: dict[tuple[str, int], float]):
        self.plan = plan
        self.counts: dict[str, int] = {}

    @classmethod
    def from_env(cls) -> "FaultHooks":
        return cls(parse_plan(os.environ.get(ENV, "")))

    def _due(self, phase: str) -> float | None:
        """Count one occurrence; the planned delay when this one is due, else None."""
        self.counts[phase] = self.counts.get(phase, 0) + 1
        return self.plan.get((phase, self.counts[phase]))

    def _signal(self, phase: str, sig: int = signal.SIGKILL) -> None:
        delay = self._due(phase)
        if delay is None:
            return
        if delay <= 0:
            os.kill(os.getpid(), sig)
        else:
            timer = threading.Timer(delay, os.kill, (os.getpid(), sig))
            timer.daemon = True
            timer.start()

    def before_step(self, step: int, batch: dict) -> dict:
        if self._due("nonfinite") is None:
            return batch
        accum, rows = next(iter(batch.values())).shape[:2]
        return {**batch, POISON_KEY: np.full((accum, rows), np.nan, np.float32)}

    def after_step(self, step: int) -> None:
        self._signal("step")
        self._signal("sigterm", signal.SIGTERM)

    def after_save(self, step: int) -> None:
        self._signal("save")

    def after_eval_batch(self) -> None:
        self._signal("eval")

    def after_export_file(self, path) -> None:
        self._signal("export")


def poison_losses() -> None:
    """Make the NER task's loss multiply by the batch's POISON_KEY when a hook put one there (the key is
    absent from every other batch, so only the poisoned step compiles a second program)."""
    from jaxft.tasks.ner import NerTask

    clean_loss = NerTask.loss

    def loss(self, model, batch):
        if POISON_KEY not in batch:
            return clean_loss(self, model, batch)
        poison = batch[POISON_KEY][0]  # a micro-batch's [rows] of one value
        loss_sum, count = clean_loss(self, model, {k: v for k, v in batch.items() if k != POISON_KEY})
        return loss_sum * poison, count

    NerTask.loss = loss
