"""The training loop: batches in, jit-compiled steps, periodic dev evaluation, checkpoints, resume.

Task-specific parts (what a row holds, the loss, what "evaluate" means) come from a `Task` object; the loop
itself knows nothing about NER or classification. No host round trip happens inside the step loop except
every `train.log_every` steps, when the metrics accumulated on device are fetched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxft.data.batching import DataPosition
from jaxft.evaluate.reports import MetricsWriter, ProgressBar
from jaxft.models.encoder import packed_position_offset
from jaxft.train import sharding
from jaxft.train.batches import plan_batches
from jaxft.train.checkpoint import Checkpointer
from jaxft.train.optim import learning_rate_schedule, make_optimizer
from jaxft.train.state import Flat, ModelParts, split_model
from jaxft.train.step import compiled_count, init_train_state, make_predict_step, make_train_step

log = logging.getLogger("jaxft.train")


class Task(Protocol):
    main_metric: str                                  # dev metric that picks the best checkpoint ("f1")
    train_rows: Sequence[dict[str, np.ndarray]]       # per-example arrays, each [length]
    pad_values: dict[str, int]                        # per-token keys of a row and their pad value
    # (optional) per_token_outputs: bool = True       # False: predict() returns one value per row

    def loss(self, model, batch) -> tuple[jax.Array, jax.Array]: ...
    def predict(self, model, batch) -> jax.Array: ...
    def evaluate(self, split: str, predict_batches: Callable) -> dict[str, Any]: ...


@dataclasses.dataclass
class LoopState:
    """Host-side state that a checkpoint carries next to the arrays (its JSON "meta")."""

    position: DataPosition = DataPosition()
    best_metric: float = -math.inf
    best_step: int = -1
    evals_without_improvement: int = 0
    last_eval_step: int = -1
    train_seconds: float = 0.0
    tokens_seen: int = 0         # real (non-pad) input tokens trained on

    def to_json(self) -> dict:
        meta = dataclasses.asdict(self)
        meta["position"] = dataclasses.asdict(self.position)
        return meta

    @classmethod
    def from_json(cls, meta: dict) -> "LoopState":
        meta = dict(meta)
        meta["position"] = DataPosition(**meta["position"])
        return cls(**meta)


@dataclasses.dataclass
class TrainResult:
    parts: ModelParts
    params: Flat                 # best (by dev) trainable parameters, or the last if never evaluated
    frozen: Flat
    rng: Flat
    loop: LoopState
    steps: int
    compiles: dict[str, int]
    predict_batches: Callable    # for test evaluation with the same compiled predict step
    finished: bool = True        # False: stopped at train.stop_after_step; re-run to continue


def count_steps(batches, train_config) -> int:
    """Optimizer steps of the whole run: max_steps, or the epochs' batches (packing varies them a little)."""
    if train_config.max_steps > 0:
        return train_config.max_steps
    return sum(len(batches.epoch(epoch)) for epoch in range(train_config.num_epochs))


class Trainer:
    def __init__(self, config, workdir: str | Path, model, task: Task, *, trainable=None,
                 is_writer: bool = True):
        self.config = config
        self.workdir = Path(workdir)
        self.task = task
        self.train_cfg = config.train
        self.mesh = sharding.make_mesh(config.mesh)
        self._check_batch_fits_mesh()
        self.batches = plan_batches(task.train_rows, config.data, self.train_cfg, task.pad_values,
                                    packed_position_offset(model.config), sharding.batch_rows_per_shard(self.mesh))
        split_args = () if trainable is None else (trainable,)
        self.parts, params, frozen, rng = split_model(model, *split_args)
        self.total_steps = count_steps(self.batches, self.train_cfg)
        self.tx = make_optimizer(config.optim, self.total_steps, params)
        self.schedule = learning_rate_schedule(config.optim, self.total_steps)
        self.state, self.frozen, state_shardings = self._place_state(params, frozen, rng)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.train_step = make_train_step(self.parts, self.tx, task.loss, state_shardings, replicated)
        self.predict_step = make_predict_step(self.parts, task.predict, replicated)
        log.info(sharding.describe(self.mesh, self.state["params"], self.state["opt_state"]))
        self.checkpoints = Checkpointer(self.workdir / "checkpoints", keep=self.train_cfg.keep_checkpoints,
                                        best_metric=f"dev_{task.main_metric}")
        self.metrics = MetricsWriter(self.workdir, enabled=is_writer)
        self.is_writer = is_writer
        self.loop = LoopState()

    def _check_batch_fits_mesh(self) -> None:
        shards = sharding.batch_rows_per_shard(self.mesh)
        if self.train_cfg.batch_size % shards:
            raise sharding.MeshError(f"train.batch_size {self.train_cfg.batch_size} is not divisible by the "
                                     f"mesh's data x fsdp = {shards} batch shards")

    def _place_state(self, params: Flat, frozen: Flat, rng: Flat):
        """Parameters, frozen parameters, RNG and optimizer moments, each on its sharding of the mesh."""
        rules = sharding.parse_rules(self.config.mesh.rules)
        trainable_t, frozen_t, rng_t = self.parts.templates
        param_sh = sharding.variable_shardings(trainable_t, self.mesh, rules)
        frozen_sh = sharding.variable_shardings(frozen_t, self.mesh, rules)
        rng_sh = sharding.variable_shardings(rng_t, self.mesh, {})
        replicated = NamedSharding(self.mesh, PartitionSpec())
        state_sh = {"step": replicated, "params": param_sh, "rng": rng_sh,
                    "opt_state": sharding.optimizer_shardings(self.tx, params, param_sh, self.mesh)}
        init = jax.jit(lambda p, r: init_train_state(p, r, self.tx), out_shardings=state_sh)
        state = init(jax.device_put(params, param_sh), jax.device_put(rng, rng_sh))
        return state, jax.device_put(frozen, frozen_sh), state_sh

    # ------------------------------------------------------------------ resume

    def restore_latest(self) -> bool:
        step = self.checkpoints.latest_step()
        if step is None:
            return False
        self.state, meta = self.checkpoints.restore(step, self.state)
        self.loop = LoopState.from_json(meta)
        log.info("resumed from checkpoint at step %d (epoch %d, batch %d)", step, self.loop.position.epoch,
                 self.loop.position.batch)
        self._truncate_metrics_after(step)
        return True

    def _truncate_metrics_after(self, step: int) -> None:
        """Drop metric lines a killed run wrote after its last checkpoint; the resumed run rewrites them."""
        path = self.workdir / "metrics.jsonl"
        if not self.is_writer or not path.exists():
            return
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))

    # ------------------------------------------------------------------ batches

    def predict_batches(self, rows: Sequence[dict], params: Flat | None = None) -> list[np.ndarray]:
        """Task predictions for every row (in the given order), each cut to the row's length."""
        params = self.state["params"] if params is None else params

        def run(batch):
            return self.predict_step(params, self.frozen, self.state["rng"],
                                     sharding.put_batch(batch, self.mesh, batch_axis=0))

        return self.batches.predict(run, rows, per_token=getattr(self.task, "per_token_outputs", True))

    # ------------------------------------------------------------------ the loop

    def fit(self) -> TrainResult:
        step = int(self.state["step"])
        progress = ProgressBar(self.total_steps, enabled=self.is_writer and self.train_cfg.progress_bar)
        progress.update(step)
        pending = _PendingMetrics()
        started = time.perf_counter()
        stop = step >= self.total_steps
        position = self.loop.position
        while not stop:
            groups = self.batches.epoch(position.epoch)
            for batch_index in range(position.batch, len(groups)):
                batch = sharding.put_batch(self.batches.collate(groups[batch_index]), self.mesh, batch_axis=1)
                self.state, step_metrics = self.train_step(self.state, self.frozen, batch)
                pending.add(step_metrics)
                self.loop.tokens_seen += self.batches.tokens(groups[batch_index])
                step += 1
                at_epoch_end = batch_index + 1 == len(groups)
                next_position = (DataPosition(position.epoch + 1, 0) if at_epoch_end
                                 else DataPosition(position.epoch, batch_index + 1))
                if step % self.train_cfg.log_every == 0:
                    self._log_train(step, pending, started, progress)
                evaluated = self._eval_due(step, at_epoch_end)
                if evaluated or self._checkpoint_due(step):
                    self.loop.position = next_position
                    self.loop.train_seconds += time.perf_counter() - started
                    started = time.perf_counter()
                    stop = self._evaluate_and_checkpoint(step, evaluate=evaluated)
                if step >= self.total_steps or self._stopping_here(step):
                    stop = True
                if stop:
                    position = next_position
                    break
            else:
                position = DataPosition(position.epoch + 1, 0)
        self.loop.position = position
        self.loop.train_seconds += time.perf_counter() - started
        if pending.count:
            self._log_train(step, pending, started, progress)
        progress.close()
        if self._stopping_here(step):
            self.checkpoints.wait()
            log.info("stopped at step %d as train.stop_after_step asks; re-run the command to continue", step)
            return dataclasses.replace(self._result(step, restore_best=False), finished=False)
        if self.loop.last_eval_step != step:
            self._evaluate_and_checkpoint(step, evaluate=True, save=self.checkpoints.latest_step() != step)
        self.checkpoints.wait()
        return self._result(step)

    def _eval_due(self, step: int, at_epoch_end: bool) -> bool:
        every = self.train_cfg.eval_every
        return step % every == 0 if every else at_epoch_end

    def _checkpoint_due(self, step: int) -> bool:
        every = self.train_cfg.checkpoint_every
        return bool(every) and step % every == 0 or self._stopping_here(step)

    def _stopping_here(self, step: int) -> bool:
        return step == self.train_cfg.stop_after_step and step < self.total_steps

    def _log_train(self, step: int, pending: "_PendingMetrics", started: float, progress: ProgressBar) -> None:
        values = pending.fetch()
        elapsed = self.loop.train_seconds + time.perf_counter() - started
        record = {"loss": values["loss"], "grad_norm": values["grad_norm"], "learning_rate":
                  self.learning_rate(step), "tokens_per_sec": self.loop.tokens_seen / max(elapsed, 1e-9)}
        self.metrics.write(step, "train", record)
        progress.update(step, loss=values["loss"], tokens_per_sec=record["tokens_per_sec"])

    def learning_rate(self, step: int) -> float:
        return float(self.schedule(step))

    def _evaluate_and_checkpoint(self, step: int, *, evaluate: bool, save: bool = True) -> bool:
        """Dev evaluation (when due), early-stopping bookkeeping and a checkpoint. Returns: stop now."""
        metrics = None
        stop = False
        if evaluate:
            dev = self.task.evaluate("dev", self.predict_batches)
            self.metrics.write(step, "dev", dev)
            score = float(dev[self.task.main_metric])
            self.loop.last_eval_step = step
            log.info("step %d: dev %s %.4f", step, self.task.main_metric, score)
            if score > self.loop.best_metric:
                self.loop.best_metric, self.loop.best_step = score, step
                self.loop.evals_without_improvement = 0
            else:
                self.loop.evals_without_improvement += 1
            patience = self.train_cfg.early_stopping_patience
            stop = bool(patience) and self.loop.evals_without_improvement >= patience
            if stop:
                log.info("early stopping: no dev improvement in %d evaluations", patience)
            metrics = {f"dev_{self.task.main_metric}": score}
        if save:
            self.checkpoints.save(step, self.state, self.loop.to_json(), metrics)
        return stop

    def _result(self, step: int, restore_best: bool = True) -> TrainResult:
        params = self.state["params"]
        best = self.loop.best_step
        if restore_best and best >= 0 and best != step:
            restored, _ = self.checkpoints.restore(best, self.state)
            params = restored["params"]
        compiles = {"train_step": compiled_count(self.train_step), "predict_step": compiled_count(self.predict_step)}
        return TrainResult(self.parts, params, self.frozen, self.state["rng"], self.loop, step, compiles,
                           lambda rows: self.predict_batches(rows, params))

    def close(self) -> None:
        self.checkpoints.wait()
        self.checkpoints.close()
        self.metrics.close()


class _PendingMetrics:
    """Step metrics summed on device; fetched (one host sync) only when logged."""

    def __init__(self):
        self._sums = None
        self.count = 0

    def add(self, metrics: dict) -> None:
        metrics = {"loss_sum": metrics["loss_sum"], "targets": metrics["count"], "grad_norm": metrics["grad_norm"]}
        self._sums = metrics if self._sums is None else jax.tree.map(jnp.add, self._sums, metrics)
        self.count += 1

    def fetch(self) -> dict[str, float]:
        sums = jax.device_get(self._sums)
        values = {"loss": float(sums["loss_sum"]) / max(int(sums["targets"]), 1),
                  "grad_norm": float(sums["grad_norm"]) / self.count}
        self._sums, self.count = None, 0
        return values
