"""The few calls a training run makes for PEFT, so every task wires it the same way (jaxft/tasks/run.py):

    trainable = peft_run.setup(config, model)                  # after from_pretrained, before Trainer
    trainer = Trainer(config, workdir, model, task, trainable=trainable)
    peft_run.check_base(config, workdir, trainer, model_path)  # before restore_latest
    ...
    exports = peft_run.export(config, model, result, workdir, model_path, tokenizer)
"""

from __future__ import annotations

import logging
from pathlib import Path

from jaxft.files import as_path
from jaxft.peft.export import OnFile, export_model, load_trained, record_base
from jaxft.peft.methods import apply_peft, count_params, peft_info

log = logging.getLogger("jaxft.peft")


def peft_enabled(config) -> bool:
    return config.peft.method != "none" or bool(config.peft.freeze)


def setup(config, model):
    """Apply config.peft to the model (in place). Returns the trainable filter for the Trainer (None:
    everything trains, the default path)."""
    if not peft_enabled(config):
        return None
    trainable = apply_peft(model, config.peft, seed=config.train.seed)
    train, total = count_params(model, trainable)
    log.info("peft %s: %s of %s parameters trainable (%.2f%%)", config.peft.method, f"{train:,}", f"{total:,}",
             100 * train / total)
    return trainable


def check_base(config, workdir: Path, trainer, base_model: str, is_writer: bool = True) -> None:
    """Name and fingerprint the frozen base next to the checkpoints; refuse to resume onto another base."""
    if not peft_enabled(config) or not trainer.frozen:
        return
    resuming = trainer.checkpoints.latest_step() is not None
    if is_writer or resuming:
        record_base(workdir, trainer.frozen, base_model=base_model, method=config.peft.method,
                    resuming=resuming)


def export(config, model, result, workdir: Path, base_model: str, tokenizer=None, is_writer: bool = True,
           on_file: OnFile | None = None) -> dict:
    """Best parameters back into the model, then the exports (see peft.export.export_model)."""
    load_trained(model, result.parts, result.params, result.frozen)
    if not is_writer:
        return {}
    exports = export_model(model, as_path(workdir), base_model=base_model, tokenizer=tokenizer,
                           adapter=config.peft.export_adapter, on_file=on_file)
    if peft_info(model):
        log.info("exported %s", ", ".join(f"{k}/" for k in exports))
    return exports
