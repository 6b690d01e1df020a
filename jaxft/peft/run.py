"""The few calls a task's run makes for PEFT (and the training options that go with it), so every task wires
it the same way:

    trainable = peft_run.setup(config, model, task)            # after from_pretrained, before Trainer
    trainer = Trainer(config, workdir, model, task, trainable=trainable)
    peft_run.check_base(config, workdir, trainer, model_path)  # before restore_latest
    ...
    exports = peft_run.export(config, model, result, workdir, model_path, tokenizer)
"""

from __future__ import annotations

import logging
from pathlib import Path

from jaxft.peft.export import export_model, load_trained, record_base
from jaxft.peft.methods import apply_peft, count_params, peft_info

log = logging.getLogger("jaxft.peft")


def peft_enabled(config) -> bool:
    return config.peft.method != "none" or bool(config.peft.freeze)


def setup(config, model, task=None):
    """Apply config.peft to the model (in place); wrap task.loss for adversarial training. Returns the
    trainable filter for the Trainer (None: everything trains, the default path)."""
    trainable = None
    if peft_enabled(config):
        trainable = apply_peft(model, config.peft, seed=config.train.seed)
        train, total = count_params(model, trainable)
        log.info("peft %s: %s of %s parameters trainable (%.2f%%)", config.peft.method, f"{train:,}",
                 f"{total:,}", 100 * train / total)
    if task is not None and config.train.adversarial != "none":
        from jaxft.peft.adversarial import adversarial_loss
        task.loss = adversarial_loss(task.loss, config.train)
        log.info("adversarial training: %s on the word embeddings (epsilon %g)", config.train.adversarial,
                 config.train.adversarial_epsilon)
    return trainable


def check_base(config, workdir: Path, trainer, base_model: str, is_writer: bool = True) -> None:
    """Name and fingerprint the frozen base next to the checkpoints; refuse to resume onto another base."""
    if not peft_enabled(config) or not trainer.frozen:
        return
    resuming = trainer.checkpoints.latest_step() is not None
    if is_writer or resuming:
        record_base(workdir, trainer.frozen, base_model=base_model, method=config.peft.method,
                    resuming=resuming)


def export(config, model, result, workdir: Path, base_model: str, tokenizer=None, is_writer: bool = True) -> dict:
    """Best parameters back into the model, then the exports (see peft.export.export_model)."""
    load_trained(model, result.parts, result.params, result.frozen)
    if not is_writer:
        return {}
    exports = export_model(model, Path(workdir), base_model=base_model, tokenizer=tokenizer,
                           adapter=config.peft.export_adapter)
    info = peft_info(model)
    if info:
        log.info("exported %s", ", ".join(f"{k}/" for k in exports))
    return exports
