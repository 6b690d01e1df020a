"""orbax checkpoints of the whole training state: async saves, keep the latest N and the best by dev metric.

Each checkpoint holds the train state (step, parameters, optimizer moments, dropout RNG) and a JSON
"meta" item (data position, early-stopping counters). orbax writes into a temporary folder and renames it
when complete, so a checkpoint is either whole or absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int, best_metric: str, asynchronous: bool = True):
        self.best_metric = best_metric
        keep_policy = policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            # Ties go to the earlier step, as the loop's strict-improvement rule picks it.
            policies.BestN(get_metric_fn=lambda metrics: (metrics[best_metric], -metrics["step"]), n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=keep_policy, create=True,
                                               enable_async_checkpointing=asynchronous)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options,
                                             item_names=("state", "meta"))

    def save(self, step: int, state: dict, meta: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        metrics = None if metrics is None else {**metrics, "step": step}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)),
                          metrics=metrics, force=True)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def restore(self, step: int, like_state: dict) -> tuple[dict, dict]:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                      meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
