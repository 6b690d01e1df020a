"""Fault injection at well-defined points of a run, for the preemption tests (tests/test_faults.py).

    JAXFT_FAULT_AT="phase:n[@seconds][,phase:n...]"

Each call `reached(phase)` counts one occurrence of `phase` in this process; at the n-th occurrence the
planned fault fires: by default SIGKILL of this very process (no cleanup, no flush, like a preempted VM),
`@seconds` delays the kill by that long from a background thread while the run goes on (so the kill lands
*inside* whatever the phase started, e.g. an async checkpoint write). Phases the code reports:

    step       a train step was dispatched (its computation may still be running)
    save       a checkpoint save was handed to orbax (its async write is in flight)
    eval       a predict batch of an evaluation (dev, test) was dispatched
    export     one file of an exported model folder was moved into place
    sigterm    at this step, send SIGTERM to this process instead of SIGKILL (the graceful preemption path)
    nonfinite  at this step, poison the batch so its loss and gradients are NaN (see train.step)

Without the variable, `reached` is one dict lookup; nothing here runs in a normal run.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "JAXFT_FAULT_AT"
PHASES = ("step", "save", "eval", "export", "sigterm", "nonfinite")

_counts: dict[str, int] = {}
_plan_cache: dict[str, dict[tuple[str, int], float]] = {}


def _plan() -> dict[tuple[str, int], float]:
    spec = os.environ.get(ENV, "")
    if spec not in _plan_cache:
        plan = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            phase, _, rest = item.partition(":")
            count, _, delay = rest.partition("@")
            if phase not in PHASES or not count.isdigit() or int(count) < 1:
                raise ValueError(f"{ENV}: bad item {item!r}; expected phase:n[@seconds] with phase one of "
                                 f"{', '.join(PHASES)} and n >= 1")
            plan[(phase, int(count))] = float(delay) if delay else 0.0
        _plan_cache[spec] = plan
    return _plan_cache[spec]


def reached(phase: str) -> bool:
    """Count one occurrence of `phase`. Kills the process when planned; for the phases that do not kill
    ("nonfinite") returns True when the fault is due now."""
    if ENV not in os.environ:
        return False
    plan = _plan()
    if not plan:
        return False
    _counts[phase] = _counts.get(phase, 0) + 1
    key = (phase, _counts[phase])
    if key not in plan:
        return False
    if phase == "nonfinite":
        return True
    sig = signal.SIGTERM if phase == "sigterm" else signal.SIGKILL
    delay = plan[key]
    if delay <= 0:
        os.kill(os.getpid(), sig)
    else:
        timer = threading.Timer(delay, os.kill, (os.getpid(), sig))
        timer.daemon = True
        timer.start()
    return False
