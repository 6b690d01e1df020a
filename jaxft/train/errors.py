"""Errors that end a training run for a reason the user can act on (printed as one line by jaxft.main)."""

from __future__ import annotations

EXIT_PREEMPTED = 75     # EX_TEMPFAIL: SIGTERM received, a checkpoint was saved; re-run the same command
EXIT_TRAINING_ERROR = 3  # non-finite loss, a checkpoint that could not be written, ...


class TrainingError(RuntimeError):
    """A run stopped by something that happened while training (not by its config or data)."""


class NonFiniteError(TrainingError):
    """The loss or the gradient was NaN or infinite and train.skip_nonfinite is off."""


class Preempted(SystemExit):
    """SIGTERM arrived; the state was checkpointed. Exits the process with EXIT_PREEMPTED."""

    def __init__(self, step: int):
        self.step = step
        super().__init__(EXIT_PREEMPTED)
