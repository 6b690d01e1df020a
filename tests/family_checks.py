"""What tests/test_deberta.py and tests/test_mpnet.py share: PyTorch references of small random configs with
every parameter perturbed away from its init (LayerNorm weights are 1 and biases 0 at init, which would hide
a mapping error), padded and packed batches, both sides' outputs, and a few real training steps for the PEFT
checks."""

from __future__ import annotations

import inspect

import numpy as np
import torch
import transformers
from flax import nnx

import jaxft.models as jm
from jaxft.config import base_config
from jaxft.train.optim import make_optimizer
from jaxft.train.state import split_model
from jaxft.train.step import init_train_state, make_train_step, token_cross_entropy

TORCH_CLASSES = {
    None: transformers.AutoModel,
    jm.TOKEN_CLASSIFICATION: transformers.AutoModelForTokenClassification,
    jm.SEQUENCE_CLASSIFICATION: transformers.AutoModelForSequenceClassification,
    jm.QUESTION_ANSWERING: transformers.AutoModelForQuestionAnswering,
    jm.MASKED_LM: transformers.AutoModelForMaskedLM,
}
TASK_LABELS = {jm.TOKEN_CLASSIFICATION: 5, jm.SEQUENCE_CLASSIFICATION: 3, jm.QUESTION_ANSWERING: 2}
NER_LABELS = ["O", "B-x", "I-x", "B-y", "I-y"]


def perturb(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))


def save_reference(config, task, folder, seed: int = 0) -> torch.nn.Module:
    """A perturbed random PyTorch model of `config` with the head of `task`, saved to `folder`."""
    config = config.__class__.from_dict(config.to_dict())
    if task in TASK_LABELS:
        config.num_labels = TASK_LABELS[task]
    torch.manual_seed(seed)
    model = TORCH_CLASSES[task].from_config(config).eval()
    perturb(model, seed)
    model.save_pretrained(folder)
    return model


def padded_batch(vocab_size: int, pad_id: int, lengths=(11, 7, 3), token_types: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), max(lengths)), pad_id, np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(4, vocab_size, length)
        mask[row, :length] = 1
        if token_types:
            types[row, length // 2:length] = 1
    return ids, mask, types


def torch_outputs(model, task, ids, mask, types):
    kwargs = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        kwargs["token_type_ids"] = torch.tensor(types)
    with torch.no_grad():
        out = model(**kwargs)
    if task is None:
        return out.last_hidden_state.numpy()
    if task == jm.QUESTION_ANSWERING:
        return np.stack([out.start_logits.numpy(), out.end_logits.numpy()])
    return out.logits.numpy()


def jax_outputs(model, task, ids, mask, types, **kwargs):
    out = model(ids.astype(np.int32), mask.astype(np.int32), types.astype(np.int32), **kwargs)
    if task == jm.QUESTION_ANSWERING:
        return np.stack([np.asarray(out[0]), np.asarray(out[1])])
    return np.asarray(out)


def max_difference(ours, theirs) -> float:
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max())


def packed_row_inputs(examples: list[list[np.ndarray]], length: int, position_offset: int, pad_id: int):
    """Rows holding several examples each: (input_ids, attention_mask, segment_ids, position_ids), the
    segment ids 1, 2, ... per example and positions restarting at `position_offset`, as data/batching.py packs."""
    shape = (len(examples), length)
    ids, segments, positions = np.full(shape, pad_id, np.int32), np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    for row, members in enumerate(examples):
        start = 0
        for segment, tokens in enumerate(members, start=1):
            end = start + len(tokens)
            ids[row, start:end], segments[row, start:end] = tokens, segment
            positions[row, start:end] = np.arange(len(tokens)) + position_offset
            start = end
    return ids, (segments > 0).astype(np.int32), segments, positions


def flat_params(model, kind=nnx.Param) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, kind))}


def train_steps(model, trainable, ids, mask, steps: int = 3):
    """A few AdamW steps (lr 1e-2) of token cross-entropy on random labels, written back into the model."""
    from jaxft.peft.export import load_trained  # the PEFT side only where a test needs it

    parts, params, frozen, rng = split_model(model, trainable)
    config = base_config()
    config.optim.warmup_ratio = 0.0
    config.optim.learning_rate = 1e-2
    tx = make_optimizer(config.optim, 10, params)
    step = make_train_step(parts, tx, lambda m, b: token_cross_entropy(m(b["input_ids"], b["attention_mask"]),
                                                                      b["labels"]))
    labels = np.random.RandomState(1).randint(0, model.num_labels, ids.shape).astype(np.int32)
    batch = {"input_ids": ids[None], "attention_mask": mask[None], "labels": np.where(mask, labels, -100)[None]}
    state = init_train_state(params, rng, tx)
    for _ in range(steps):
        state, _ = step(state, frozen, batch)
    return load_trained(model, parts, state["params"], frozen)
