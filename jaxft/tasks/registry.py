"""The task registry: every task's spec, looked up by name (config.task) or by an exported folder.

Adding a task: a module in jaxft/tasks/ with its data, Task, predictor and `SPEC`, listed here.
"""

from __future__ import annotations

from pathlib import Path

from jaxft.config import TASK_NAMES, ConfigError
from jaxft.models import task_of
from jaxft.tasks import classification, mlm, ner, qa
from jaxft.tasks.base import TaskSpec

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (ner.SPEC, classification.SPEC, qa.SPEC, mlm.SPEC)}
assert tuple(TASKS) == TASK_NAMES, "every config task name has a spec, in config.TASK_NAMES order"


def get(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ConfigError(f"config key 'task' must be one of {', '.join(TASKS)}; got {name!r}")
    return TASKS[name]


def for_folder(model_dir: str | Path) -> TaskSpec:
    """The spec of an exported model folder's task (from its config.json architectures)."""
    return TASKS[task_of(model_dir)]
