"""The training loop: batches in, jit-compiled steps, periodic dev evaluation, checkpoints, resume.

Task-specific parts (what a row holds, the loss, what "evaluate" means) come from a `Task` object; the loop
itself knows nothing about NER or classification. No host round trip happens inside the step loop except
every `train.log_every` steps, when the metrics accumulated on device are fetched, and at checkpoints.

Reliability (docs/reliability.md):
- Resume: a checkpoint carries everything the rest of the run depends on (state, data position, early-
  stopping counters, the train metrics summed since the last log line, how many metrics.jsonl lines were
  written), so a run killed at any point and re-run with the same command ends bit-identical.
- SIGTERM (scheduler / TPU VM preemption), checked between steps: the loop saves a checkpoint synchronously
  and exits with status 75 (errors.EXIT_PREEMPTED). One process: a signal handler sets a flag. Several
  processes: JAX's preemption service receives the signal and every process asks it at every step
  (multihost_utils.reached_preemption_sync_point), so all of them stop at the same step, the first one after
  the notice that they all reach, and write one common checkpoint; a flag checked by each process on its own
  would leave some in the save and the others in the next step's collectives.
- Damaged checkpoints (see train.checkpoint) are moved aside and the previous one is used, with a warning
  naming both steps and the reason.
- The workdir remembers the settings its checkpoints depend on (run_fingerprint.json); another run's
  config is refused naming the differing keys.
- Non-finite loss/gradients: the step drops such updates on device and counts them (train.step); the count
  is checked whenever metrics are fetched anyway and before every checkpoint, and the run stops with
  NonFiniteError (the checkpoints on disk predate the bad step) or, with train.skip_nonfinite, goes on and
  reports how many steps it skipped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from jaxft.config import ConfigError, get, resume_keys
from jaxft.files import as_path, download, is_remote, upload, write_text
from jaxft.data.batching import DataPosition
from jaxft.models.encoder import packed_position_offset
from jaxft.train import sharding
from jaxft.train.batches import plan_batches
from jaxft.train.checkpoint import Checkpointer, CorruptCheckpoint
from jaxft.train.errors import NonFiniteError, Preempted, TrainingError
from jaxft.train.optim import learning_rate_schedule, make_optimizer
from jaxft.train.state import Flat, ModelParts, split_model
from jaxft.train.hooks import NO_HOOKS, Hooks
from jaxft.train.reporting import MetricsWriter, ProgressBar
from jaxft.train.prefetch import Prefetcher
from jaxft.train.step import (METRIC_SUM_DTYPES, compiled_count, init_train_state, make_predict_step,
                              make_train_step, zero_metric_sums)

log = logging.getLogger("jaxft.train")
PREFETCH_DEPTH = 2  # batches collated and placed on the devices ahead of the running step


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
    skipped_nonfinite: int = 0   # steps whose update was dropped (NaN/inf loss or gradient; skip_nonfinite)

    def to_json(self) -> dict:
        meta = dataclasses.asdict(self)
        meta["position"] = dataclasses.asdict(self.position)
        return meta

    @classmethod
    def from_json(cls, meta: dict) -> "LoopState":
        fields = {f.name for f in dataclasses.fields(cls)}
        meta = {k: v for k, v in meta.items() if k in fields}  # the checkpoint's meta also holds other items
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


FINGERPRINT_FILE = "run_fingerprint.json"
STAGED_LOGS = ("metrics.jsonl", "tensorboard", "train.log")  # appended to: staged locally for remote workdirs


def run_fingerprint(config, task) -> dict:
    """The settings a workdir's checkpoints depend on (the keys marked `resume` in jaxft/config.py: what the
    arrays are, what the data position points into, the schedule's length), the head's labels and the number
    of training rows."""
    flat = {name: get(config, name) for name in resume_keys()}
    labels = getattr(task, "labels", None)
    if labels is not None:
        flat["labels"] = [str(label) for label in labels]
    flat["train_examples"] = len(task.train_rows)
    return flat


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """Keys present in both with different values (a key only one side knows is a newer/older jaxft).
    Strings (paths, names) are shown whole so the user can tell which folder differs; long lists (labels)
    are cut at 120 characters."""
    def short(value):
        text = repr(value)
        return text if isinstance(value, str) or len(text) <= 120 else text[:117] + "..."

    return [f"{key} ({short(saved[key])} there, {short(current[key])} now)"
            for key in sorted(saved) if key in current and saved[key] != current[key]]


class Trainer:
    def __init__(self, config, workdir: str | Path, model, task: Task, *, trainable=None,
                 is_writer: bool = True, hooks: Hooks = NO_HOOKS, staging: Path | None = None):
        """workdir: local or remote (gs://...): checkpoints and the run fingerprint go there. staging: the
        local folder for metrics.jsonl and TensorBoard (files.staging_dir; the workdir itself when local),
        uploaded to a remote workdir at every checkpoint and at close."""
        self.config = config
        self.hooks = hooks
        self.model_config = model.config
        self.workdir = as_path(workdir)
        self.staging = Path(staging) if staging is not None else Path(workdir)
        self.task = task
        self.train_cfg = config.train
        self.mesh = sharding.make_mesh(config.mesh)
        self._check_batch_fits_mesh()
        self._check_batch_fits_data()
        self.batches = plan_batches(task.train_rows, config.data, self.train_cfg, task.pad_values,
                                    packed_position_offset(model.config), sharding.batch_rows_per_shard(self.mesh))
        split_args = () if trainable is None else (trainable,)
        self.parts, params, frozen, rng = split_model(model, *split_args)
        self.total_steps = count_steps(self.batches, self.train_cfg)
        self.tx = make_optimizer(config.optim, self.total_steps, params)
        self.schedule = learning_rate_schedule(config.optim, self.total_steps)
        self.state, self.frozen, state_shardings = self._place_state(params, frozen, rng)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.train_step = make_train_step(self.parts, self.tx, task.loss, state_shardings, replicated,
                                          ema_decay=self.train_cfg.ema_decay, summed=True)
        self.predict_step = make_predict_step(self.parts, task.predict, replicated)
        log.info(sharding.describe(self.mesh, self.state["params"], self.state["opt_state"]))
        log.info(self.batches.describe())
        self.checkpoints = Checkpointer(self.workdir / "checkpoints", keep=self.train_cfg.keep_checkpoints,
                                        best_metric=f"dev_{task.main_metric}", is_writer=is_writer,
                                        on_save=hooks.after_save)
        self.metrics = MetricsWriter(self.staging, enabled=is_writer)
        self.is_writer = is_writer
        self.loop = LoopState()
        self.pending = _PendingMetrics(replicated)
        self._sigterm = False
        self._checked_through = 0   # non-finite counts are known up to this step

    def _check_batch_fits_mesh(self) -> None:
        shards = sharding.batch_rows_per_shard(self.mesh)
        if self.train_cfg.batch_size % shards:
            raise sharding.MeshError(f"train.batch_size {self.train_cfg.batch_size} is not divisible by the "
                                     f"mesh's data x fsdp = {shards} batch shards")

    def _check_batch_fits_data(self) -> None:
        rows = len(self.task.train_rows)
        per_step = self.train_cfg.batch_size * self.train_cfg.grad_accum_steps
        if not self.config.data.packing and per_step > rows:
            raise ConfigError(f"train.batch_size x train.grad_accum_steps = {per_step} examples a step, but the "
                              f"training data has only {rows}: lower train.batch_size")

    def _place_state(self, params: Flat, frozen: Flat, rng: Flat):
        """Parameters, frozen parameters, RNG and optimizer moments, each on its sharding of the mesh."""
        rules = sharding.parse_rules(self.config.mesh.rules)
        sharding.check_model_fits_mesh(self.model_config, self.mesh, rules)
        trainable_t, frozen_t, rng_t = self.parts.templates
        param_sh = sharding.variable_shardings(trainable_t, self.mesh, rules)
        frozen_sh = sharding.variable_shardings(frozen_t, self.mesh, rules)
        rng_sh = sharding.variable_shardings(rng_t, self.mesh, {})
        replicated = NamedSharding(self.mesh, PartitionSpec())
        state_sh = {"step": replicated, "params": param_sh, "rng": rng_sh,
                    "opt_state": sharding.optimizer_shardings(self.tx, params, param_sh, self.mesh)}
        ema = bool(self.train_cfg.ema_decay)
        if ema:
            state_sh["ema"] = param_sh
        init = jax.jit(lambda p, r: init_train_state(p, r, self.tx, ema=ema), out_shardings=state_sh)
        state = init(jax.device_put(params, param_sh), jax.device_put(rng, rng_sh))
        return state, jax.device_put(frozen, frozen_sh), state_sh

    # ------------------------------------------------------------------ resume

    def restore_latest(self) -> bool:
        """Resume from the newest checkpoint that reads back intact; damaged ones are moved aside (logged
        with the step fallen back to and why). Refuses a workdir whose checkpoints another config wrote."""
        self._check_fingerprint()
        failures = []
        for step, reason, moved in self.checkpoints.damaged_at_open:
            failures.append(f"step {step} ({reason})")
            log.warning("checkpoint at step %d is damaged: %s; moved it to %s", step, reason, moved)
        for step in reversed(self.checkpoints.all_steps()):
            try:
                state, meta = self.checkpoints.restore(step, self.state)
            except CorruptCheckpoint as err:
                moved = self.checkpoints.quarantine(step)
                failures.append(f"step {step} ({err.reason})")
                log.warning("%s; moved it to %s and trying the previous checkpoint", err, moved)
                continue
            self.state = state
            self.loop = LoopState.from_json(meta)
            self.pending = _PendingMetrics.from_json(meta.get("pending_train_metrics"), self.pending.sharding)
            self._checked_through = step
            if failures:
                log.warning("fell back to the checkpoint at step %d because %s %s damaged", step,
                            ", ".join(failures), "was" if len(failures) == 1 else "were")
            log.info("resumed from checkpoint at step %d (epoch %d, batch %d)", step, self.loop.position.epoch,
                     self.loop.position.batch)
            self._truncate_metrics(step, meta.get("metrics_lines"))
            return True
        if failures:
            log.warning("no intact checkpoint left (%s): training starts again from step 0", ", ".join(failures))
            self._truncate_metrics(-1, 0)
        return False

    def _check_fingerprint(self) -> None:
        path = self.workdir / FINGERPRINT_FILE
        current = run_fingerprint(self.config, self.task)
        if self.checkpoints.all_steps() and path.exists():
            try:
                saved = json.loads(path.read_text())
            except ValueError:
                saved = None
                log.warning("%s is unreadable; not checking that the checkpoints come from this config", path)
            differences = fingerprint_differences(saved, current) if isinstance(saved, dict) else []
            if differences:
                raise ConfigError(
                    f"workdir {self.workdir} holds checkpoints of a run with other settings, which this run "
                    f"would mix with its own: {'; '.join(differences)}. Use another --workdir, or the settings "
                    f"the workdir was started with to resume it")
            return
        if self.is_writer:
            write_text(path, json.dumps(current, indent=2, sort_keys=True) + "\n")

    def _metrics_lines(self) -> int | None:
        path = self.staging / "metrics.jsonl"
        if not self.is_writer:
            return None
        return path.read_bytes().count(b"\n") if path.exists() else 0

    def _truncate_metrics(self, step: int, lines: int | None) -> None:
        """Drop metric lines a killed run wrote after its last checkpoint; the resumed run rewrites them.
        Checkpoints record how many lines existed when they were saved; older ones are cut by step. A remote
        workdir's copy (uploaded with every checkpoint) is fetched first when this machine has none."""
        path = self.staging / "metrics.jsonl"
        if self.is_writer and is_remote(self.workdir) and not path.exists():
            download(self.workdir / "metrics.jsonl", path)
        if not self.is_writer or not path.exists():
            return
        text = path.read_bytes().decode("utf-8", errors="replace")
        if lines is not None:
            kept = text.split("\n")[:lines]
        else:
            kept = []
            for line in text.splitlines():
                try:
                    if line.strip() and json.loads(line)["step"] <= step:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):  # a half-written last line of a killed run
                    continue
        path.write_text("".join(line + "\n" for line in kept))

    # ------------------------------------------------------------------ batches

    @staticmethod
    def evaluated_params(state: dict) -> Flat:
        """The weights that are evaluated, kept as best and exported: the moving average when there is one."""
        return state.get("ema", state["params"])

    def predict_batches(self, rows: Sequence[dict], params: Flat | None = None) -> list[np.ndarray]:
        """Task predictions for every row (in the given order), each cut to the row's length."""
        params = self.evaluated_params(self.state) if params is None else params

        def run(batch):
            out = self.predict_step(params, self.frozen, self.state["rng"],
                                    sharding.put_batch(batch, self.mesh, batch_axis=0))
            self.hooks.after_eval_batch()
            return out

        return self.batches.predict(run, rows, per_token=getattr(self.task, "per_token_outputs", True))

    # ------------------------------------------------------------------ the loop

    def fit(self) -> TrainResult:
        previous_handler = self._install_sigterm_handler()
        try:
            return self._fit()
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)

    def _install_sigterm_handler(self):
        """One process: SIGTERM only sets a flag; the loop checkpoints between steps and exits (status 75).
        Several processes: JAX's preemption service owns SIGTERM (see _preempted)."""
        if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
            return None

        def on_sigterm(signum, frame):
            self._sigterm = True

        return signal.signal(signal.SIGTERM, on_sigterm)

    def _placed_batches(self, position: DataPosition, step: int):
        """(epoch, batch index, batches in that epoch, real tokens, the batch on the devices) from `position`
        on, for the steps after `step`; runs in the prefetch thread."""
        epoch, start = position.epoch, position.batch
        while True:
            groups = self.batches.epoch(epoch)
            for index in range(start, len(groups)):
                step += 1
                batch = self.hooks.before_step(step, self.batches.collate(groups[index]))
                yield (epoch, index, len(groups), self.batches.tokens(groups[index]),
                       sharding.put_batch(batch, self.mesh, batch_axis=1))
            epoch, start = epoch + 1, 0

    def _fit(self) -> TrainResult:
        step = int(self.state["step"])
        progress = ProgressBar(self.total_steps, enabled=self.is_writer and self.train_cfg.progress_bar)
        progress.update(step)
        pending = self.pending
        started = time.perf_counter()
        position = self.loop.position
        if step < self.total_steps:
            with Prefetcher(self._placed_batches(position, step), depth=PREFETCH_DEPTH) as batches:
                for epoch, batch_index, epoch_batches, tokens, batch in batches:
                    self.state, pending.sums = self.train_step(self.state, self.frozen, batch, pending.sums)
                    self.hooks.after_step(step + 1)
                    pending.count += 1
                    self.loop.tokens_seen += tokens
                    step += 1
                    at_epoch_end = batch_index + 1 == epoch_batches
                    position = (DataPosition(epoch + 1, 0) if at_epoch_end else DataPosition(epoch, batch_index + 1))
                    if step % self.train_cfg.log_every == 0:
                        self._log_train(step, pending, started, progress)
                    evaluated = self._eval_due(step, at_epoch_end)
                    stop = False
                    if evaluated or self._checkpoint_due(step):
                        self.loop.position = position
                        self.loop.train_seconds += self._seconds_since(started)
                        stop = self._evaluate_and_checkpoint(step, evaluate=evaluated)
                        started = time.perf_counter()
                    if self._preempted(step):
                        self.loop.position = position
                        self.loop.train_seconds += self._seconds_since(started)
                        self._save_and_exit_preempted(step)
                    if stop or step >= self.total_steps or self._stopping_here(step):
                        break
        self.loop.position = position
        self.loop.train_seconds += self._seconds_since(started)
        if pending.count and not self._stopping_here(step):  # else the checkpoint carries them to the next run
            self._log_train(step, pending, started, progress)
        self._check_finite(step)
        progress.close()
        if self._stopping_here(step):
            self.checkpoints.wait()
            log.info("stopped at step %d as train.stop_after_step asks; re-run the command to continue", step)
            return dataclasses.replace(self._result(step, restore_best=False), finished=False)
        if self.loop.last_eval_step != step:
            self._evaluate_and_checkpoint(step, evaluate=True, save=self.checkpoints.latest_step() != step)
        self.checkpoints.wait()
        return self._result(step)

    def _seconds_since(self, started: float) -> float:
        """Training time since `started`, counted once the dispatched steps have run: steps still in flight
        when an evaluation starts are training, not evaluation."""
        jax.block_until_ready(self.state)
        return time.perf_counter() - started

    def _preempted(self, step: int) -> bool:
        """Whether this step is where the run stops for a preemption notice (every process asks at every
        step: the multi-host sync point is agreed on by all of them)."""
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._sigterm

    def _eval_due(self, step: int, at_epoch_end: bool) -> bool:
        every = self.train_cfg.eval_every
        return step % every == 0 if every else at_epoch_end

    def _checkpoint_due(self, step: int) -> bool:
        every = self.train_cfg.checkpoint_every
        return bool(every) and step % every == 0 or self._stopping_here(step)

    def _stopping_here(self, step: int) -> bool:
        return step == self.train_cfg.stop_after_step and step < self.total_steps

    def _save_and_exit_preempted(self, step: int) -> None:
        """SIGTERM: a synchronous checkpoint of this step (unless one exists), then exit status 75."""
        if self.checkpoints.latest_step() != step:
            self._save(step)
        self.checkpoints.wait()
        log.warning("SIGTERM received: checkpoint at step %d is on disk; exiting (status 75). Re-run the same "
                    "command to resume", step)
        self.metrics.close()
        raise Preempted(step)

    def _check_finite(self, step: int) -> None:
        """Non-finite steps since the last check (one host fetch of a counter): stop, or count them."""
        bad = self.pending.take_nonfinite()
        since, self._checked_through = self._checked_through, step
        if not bad:
            return
        if self.train_cfg.skip_nonfinite:
            self.loop.skipped_nonfinite += bad
            log.warning("steps %d-%d: %d step(s) with a NaN/inf loss or gradient were skipped (%d so far; "
                        "train.skip_nonfinite=True)", since + 1, step, bad, self.loop.skipped_nonfinite)
            return
        good = self.checkpoints.latest_step()
        kept = (f"the last checkpoint (step {good}) predates it and is intact" if good is not None
                else "no checkpoint was written yet")
        raise NonFiniteError(
            f"the loss or the gradient was NaN or infinite in {bad} step(s) between step {since + 1} and step "
            f"{step}; the run stops and {kept}. Lower optim.learning_rate, check the data, or set "
            f"train.skip_nonfinite=True to skip such steps")

    def _save(self, step: int, metrics: dict | None = None) -> None:
        self._check_finite(step)
        meta = {**self.loop.to_json(), "pending_train_metrics": self.pending.to_json(),
                "metrics_lines": self._metrics_lines()}
        self.checkpoints.save(step, self.state, meta, metrics)
        self.upload_logs()

    def upload_logs(self) -> None:
        """A remote workdir gets the staged metrics.jsonl, TensorBoard events and train.log (process 0)."""
        if self.is_writer and is_remote(self.workdir):
            upload(self.staging, self.workdir, [name for name in STAGED_LOGS if (self.staging / name).exists()])

    def _log_train(self, step: int, pending: "_PendingMetrics", started: float, progress: ProgressBar) -> None:
        self._check_finite(step)
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
            self._save(step, metrics)
        return stop

    def _result(self, step: int, restore_best: bool = True) -> TrainResult:
        params = self.evaluated_params(self.state)
        best = self.loop.best_step
        if restore_best and best >= 0 and best != step:
            try:
                restored, _ = self.checkpoints.restore(best, self.state)
            except CorruptCheckpoint as err:
                raise TrainingError(f"{err}; it holds the best dev parameters, which cannot be exported. "
                                           "Delete the workdir's checkpoints to train again") from None
            params = self.evaluated_params(restored)
        compiles = {"train_step": compiled_count(self.train_step), "predict_step": compiled_count(self.predict_step)}
        return TrainResult(self.parts, params, self.frozen, self.state["rng"], self.loop, step, compiles,
                           lambda rows: self.predict_batches(rows, params))

    def close(self) -> None:
        self.checkpoints.wait()
        self.checkpoints.close()
        self.metrics.close()
        self.upload_logs()


class _PendingMetrics:
    """Step metrics summed on device by the train step itself (no host work per step); fetched (one host
    sync) only when logged. Checkpoints carry the sums (exact float32 values), so a resumed run logs the same
    averages as one that never stopped. `count` is the number of steps summed (the host knows it)."""

    def __init__(self, sharding=None):
        self.sharding = sharding  # where the step keeps them (replicated): placed there from the start, so
        self.sums = self._placed(zero_metric_sums())  # the step sees one input type and compiles once
        self.count = 0

    def _placed(self, sums: dict) -> dict:
        return sums if self.sharding is None else jax.device_put(sums, self.sharding)

    def take_nonfinite(self) -> int:
        bad = int(jax.device_get(self.sums["nonfinite"]))
        if bad:
            self.sums = {**self.sums, "nonfinite": self._placed(zero_metric_sums())["nonfinite"]}
        return bad

    def fetch(self) -> dict[str, float]:
        sums = jax.device_get(self.sums)
        good_steps = self.count - int(sums["nonfinite"])
        values = {"loss": float(sums["loss_sum"]) / max(int(sums["targets"]), 1),
                  "grad_norm": float(sums["grad_norm"]) / max(good_steps, 1)}
        self.sums, self.count = self._placed(zero_metric_sums()), 0
        return values

    def to_json(self) -> dict | None:
        if not self.count:
            return None
        sums = jax.device_get(self.sums)
        return {"count": self.count, **{k: float(v) if k in ("loss_sum", "grad_norm") else int(v)
                                        for k, v in sums.items()}}

    @classmethod
    def from_json(cls, saved: dict | None, sharding=None) -> "_PendingMetrics":
        pending = cls(sharding)
        if saved:
            pending.count = int(saved["count"])
            pending.sums = pending._placed({k: np.asarray(saved[k], dtype) for k, dtype in METRIC_SUM_DTYPES.items()})
        return pending
