"""Tiny exported models for the predict / serve / quantize / ensemble tests: the conftest tiny BERT with a
task head of random, decisive weights (std `head_scale`), saved as an export folder."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

NER_LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
CLS_LABELS = ["negative", "positive", "neutral"]


def make_export(folder: Path, base: Path, task: str, labels=None, *, seed: int = 0, head_scale: float = 1.0,
                max_length: int = 32) -> Path:
    from jaxft.models import from_pretrained, load_tokenizer, save_pretrained

    model = from_pretrained(base, task=task, id2label=labels, seed=seed)
    rng = np.random.default_rng(seed)
    head = model.classifier if hasattr(model, "classifier") else model.qa_outputs
    kernel = head.kernel.get_value()
    head.kernel.set_value(jnp.asarray(rng.normal(0, head_scale, kernel.shape), jnp.float32))
    save_pretrained(model, folder, tokenizer=load_tokenizer(base))
    if task == "sequence-classification":
        (Path(folder) / "jaxft_task.json").write_text(json.dumps({
            "task": task, "problem_type": "single_label_classification", "labels": list(labels),
            "threshold": 0.5, "max_length": max_length, "pairs": False, "text_column": "text",
            "text_pair_column": ""}))
    if task == "question-answering":
        (Path(folder) / "jaxft_task.json").write_text(json.dumps({
            "task": task, "max_length": max_length, "doc_stride": 8, "max_query_length": 8}))
    return Path(folder)


TEXTS = [
    "John Smith flew from Paris to Berlin on Monday",
    "the weather in London is grey",
    "Maria and Pedro met at the Madrid museum",
    "nothing to see here",
    # longer than 32 sub-tokens: NER splits it into windows, classification truncates it
    " ".join(["Alice visited Rome and then Tokyo with Bob"] * 6),
    "a",
    "Berlin",
]
