"""One training run of any task: config -> data -> model -> PEFT -> train (resuming) -> dev/test -> export.

    results = run(config, workdir)              # what `python -m jaxft.main --config ...` does

The task is looked up in the registry (tasks/registry.py); everything here is the same for every task, and
what differs comes from the task's spec and its Task object (tasks/base.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from jaxft import distill, files, hub, runtime
from jaxft.config import validate, validate_workdir
from jaxft.files import write_json
from jaxft.models import from_pretrained, load_tokenizer
from jaxft.models.encoder import describe_attention
from jaxft.peft import run as peft_run
from jaxft.tasks import registry
from jaxft.tasks.base import TaskSpec, is_writer, resolve_model_path
from jaxft.tasks.predictor import TASK_FILE
from jaxft.train.adversarial import adversarial_loss
from jaxft.train.hooks import NO_HOOKS, Hooks
from jaxft.train.loop import Trainer
from jaxft.train.reporting import ProgressLog, bar_visible

log = logging.getLogger("jaxft.run")


def run(config, workdir: str | Path, *, hooks: Hooks = NO_HOOKS) -> dict:
    """Train, evaluate and export one recipe into `workdir` (every export with a README.md model card; pushed
    to the hub when train.push_to_hub names a repo); returns the results dict (what results.json holds).
    Re-running on the same workdir resumes from its latest checkpoint."""
    validate(config)
    validate_workdir(config, workdir)  # a remote workdir that cannot be reached is refused here, in one line
    runtime.initialize_distributed(config.mesh)
    workdir = files.as_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    runtime.setup_logging(files.staging_dir(workdir))
    runtime.enable_compilation_cache()
    log.info(runtime.describe_devices())
    warning = runtime.check_accelerator_in_use()
    if warning:
        log.warning(warning)
    return train_and_evaluate(registry.get(config.task), config, workdir, hooks=hooks)


def train_and_evaluate(spec: TaskSpec, config, workdir, *, hooks: Hooks = NO_HOOKS) -> dict:
    """workdir: a local folder or a remote one (gs://...): checkpoints, the fingerprint, config.json,
    results.json and the exports go there; what is appended to (metrics, TensorBoard, train.log) and the
    reports are written to files.staging_dir(workdir) and uploaded."""
    staging = files.staging_dir(workdir)
    data = spec.prepare(config)  # data errors surface before the model is loaded
    distiller = distill.for_config(config, spec.name, staging)  # distill.teacher: the student's folder; else no-op
    model_path = distiller.student_folder or resolve_model_path(config.model.name_or_path)
    tokenizer = load_tokenizer(model_path)
    dtype, _, compute = runtime.describe_compute(config.model)
    log.info(compute)
    attention_dropout, why = runtime.attention_dropout(config.model.attention_dropout)
    if why:
        log.info(why)
    model, load_report = from_pretrained(
        model_path, task=spec.name, dtype=dtype, seed=config.train.seed, remat=config.model.remat,
        hidden_dropout=config.model.hidden_dropout, attention_dropout=attention_dropout,
        attention=config.model.attention, output_loading_info=True, **spec.model_options(config, data))
    model.name_or_path = hub.portable_name(config.model.name_or_path)  # the exports' config.json _name_or_path
    log.info(describe_attention(model.config, dtype, packed=config.data.packing))
    task = distiller.wrap(spec.build(config, tokenizer, model, data), tokenizer)  # the teacher's soft targets
    if config.train.adversarial != "none":
        task.loss = adversarial_loss(task.loss, config.train)
        log.info("adversarial training: %s on the word embeddings (epsilon %g)", config.train.adversarial,
                 config.train.adversarial_epsilon)

    writer = is_writer()
    resolved = json.loads(config.to_json_best_effort())
    if writer:
        write_json(workdir / "config.json", resolved)
    trainable = peft_run.setup(config, model)  # PEFT method / freezing, by config
    trainable = distiller.attach(model, trainable, dtype)  # the frozen teacher rides in the model, not trained
    trainer = Trainer(config, workdir, model, task, trainable=trainable, is_writer=writer, hooks=hooks,
                      staging=staging)
    if config.train.wandb:
        trainer.metrics.add_wandb(config.train.wandb_project, resolved)
    peft_run.check_base(config, workdir, trainer, model_path, writer)
    resumed = trainer.restore_latest()
    ProgressLog.attach(trainer, task, train_lines=not (config.train.progress_bar and bar_visible()))
    task.before_training(trainer, resumed, workdir)
    result = trainer.fit()
    if not result.finished:  # train.stop_after_step: the checkpoint carries the run to the next process
        trainer.close()
        return {"stopped_at_step": result.steps}

    dev, test = task.final_metrics(result.predict_batches)
    result = distiller.detach(model, result)  # the export and the parameter counts are the student's
    trainer.metrics.write(result.steps, "test", test)
    exports = peft_run.export(config, model, task.before_export(model, result), workdir, model_path, tokenizer,
                              writer, on_file=hooks.after_export_file)
    results = {**run_summary(config, result, load_report, dev, test, exports), **task.results(), **distiller.results()}
    trainer.close()
    if writer:
        info = {"task": spec.name, "max_length": config.data.max_length, **task.export_info()}
        for name, folder in exports.items():
            write_json(files.as_path(folder) / TASK_FILE, info)
            task.write_export_files(files.as_path(folder))
            hub.write_model_card(folder, hub.card_for(config, results, getattr(model, "labels", ()),
                                                      kind="adapter" if name == "export_adapter" else "model"))
        write_json(workdir / "results.json", results)
        task.report(staging, results)
        files.upload(staging, workdir)  # a remote workdir gets the reports and the logs (none to do locally)
        if config.train.push_to_hub:  # after results.json: a failed upload loses nothing
            folders = {"": exports["export"], **({"adapter": exports["export_adapter"]} if "export_adapter" in exports
                                                 else {})}
            log.info("uploaded to %s: %s", config.train.push_to_hub, hub.push(folders, config.train.push_to_hub))
    return results


def run_summary(config, result, load_report, dev: dict, test: dict, exports: dict) -> dict:
    """The fields of results.json every task reports."""
    trainable = sum(int(np.prod(v.shape)) for v in result.params.values())
    return {
        "dev": dev, "test": test, "best_step": result.loop.best_step, "steps": result.steps,
        "trainable_params": trainable,
        "total_params": trainable + sum(int(np.prod(v.shape)) for v in result.frozen.values()),
        "train_seconds": result.loop.train_seconds, "train_tokens": result.loop.tokens_seen,
        "tokens_per_sec": result.loop.tokens_seen / max(result.loop.train_seconds, 1e-9),
        "compilations": result.compiles, "new_head": load_report.new_head, "peft_method": config.peft.method,
        "skipped_nonfinite_steps": result.loop.skipped_nonfinite,
        "exports": sorted(exports),
    }
