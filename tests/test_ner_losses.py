"""train.label_smoothing and class weights: the NER token loss against transformers' LabelSmoother and torch's
CrossEntropyLoss(weight, label_smoothing), sequence classification (single- and multi-label) against torch,
both through the tasks' own loss on a tiny model's logits; ner.class_weights; the config's checks."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxft.config import ConfigError, base_config, validate
from jaxft.data.ner_readers import Sentence
from jaxft.models import from_pretrained, load_tokenizer
from jaxft.models.encoder import model_inputs
from jaxft.tasks import ner
from jaxft.tasks.classification import ClassificationTask, TextSplits
from jaxft.data.text_readers import TextExample

NER_LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
SENTENCES = [Sentence("John lives in New York".split(), ["B-PER", "O", "O", "B-LOC", "I-LOC"], "m:1"),
             Sentence("unbelievably Washington".split(), ["O", "B-LOC"], "m:2"),
             Sentence(["Mary"], ["B-PER"], "m:3")]


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_no_dropout):
    return load_tokenizer(tiny_bert_no_dropout)


def ner_batch(task):
    from jaxft.data.batching import collate

    return collate(task.train_rows, len(task.train_rows), [16], task.pad_values)


def ner_task(tokenizer, **options):
    splits = ner.NerSplits(SENTENCES, [], [], "IOB2", 0)
    return ner.NerTask(tokenizer, splits, NER_LABELS, 16, **options)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_ner_label_smoothing_is_hf_label_smoother(tokenizer, tiny_bert_no_dropout, smoothing):
    from transformers.trainer_pt_utils import LabelSmoother

    model = from_pretrained(tiny_bert_no_dropout, task="token-classification", id2label=NER_LABELS, seed=3)
    task = ner_task(tokenizer, label_smoothing=smoothing)
    batch = ner_batch(task)
    loss_sum, count = task.loss(model, batch)
    logits = torch.from_numpy(np.asarray(model(**model_inputs(batch)), np.float64))
    labels = torch.from_numpy(np.asarray(batch["labels"], np.int64))
    want = LabelSmoother(epsilon=smoothing)({"logits": logits}, labels) if smoothing else \
        torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100)
    assert int(count) == 8  # the first sub-token of each word
    np.testing.assert_allclose(float(loss_sum) / int(count), float(want), rtol=1e-5)


def test_ner_class_weights_with_smoothing_are_torch_cross_entropy(tokenizer, tiny_bert_no_dropout):
    model = from_pretrained(tiny_bert_no_dropout, task="token-classification", id2label=NER_LABELS, seed=3)
    task = ner_task(tokenizer, label_smoothing=0.2, class_weights="B-PER:3,I-LOC:0.5")
    np.testing.assert_array_equal(np.asarray(task.class_weights), [1, 1, 0.5, 3, 1])
    batch = ner_batch(task)
    loss_sum, count = task.loss(model, batch)
    logits = torch.from_numpy(np.asarray(model(**model_inputs(batch)), np.float64))
    labels = torch.from_numpy(np.asarray(batch["labels"], np.int64))
    per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none",
                                                  weight=torch.tensor([1, 1, 0.5, 3, 1], dtype=torch.float64),
                                                  label_smoothing=0.2)
    np.testing.assert_allclose(float(loss_sum), float(per_token.sum()), rtol=1e-5)  # summed, then / count
    assert int(count) == 8


def test_ner_balanced_class_weights_and_errors(tokenizer):
    task = ner_task(tokenizer, class_weights="balanced")
    counts = np.array([3, 2, 1, 2, 0])  # O, B-LOC, I-LOC, B-PER, I-PER among the 8 trained words
    np.testing.assert_allclose(np.asarray(task.class_weights), 8 / (5 * np.maximum(counts, 1)), rtol=1e-6)
    with pytest.raises(ConfigError, match="ner.class_weights: 'B-ORG:2' is not 'label:weight' with a label among"):
        ner_task(tokenizer, class_weights="B-ORG:2")
    with pytest.raises(ConfigError, match="weight 'x' of 'O' is not a number"):
        ner_task(tokenizer, class_weights="O:x")


def classification_task(tokenizer, problem_type, labels, smoothing, class_weights="none"):
    texts = ["a fine film", "dull and long", "fine", "long"]
    examples = [TextExample(text, None, labels[i if i < 3 else 1], f"m:{i}") for i, text in enumerate(texts)]
    task = ClassificationTask(tokenizer, TextSplits(examples, [], []), ["neg", "pos", "mid"], max_length=16,
                              problem_type=problem_type, class_weights=class_weights)
    task.label_smoothing = smoothing
    return task


def classification_batch(task):
    from jaxft.data.batching import collate

    return collate(task.train_rows, len(task.train_rows), [16], task.pad_values)


@pytest.mark.parametrize("class_weights", ["none", "neg:2,mid:0.5"])
def test_single_label_smoothing_is_torch_cross_entropy(tokenizer, tiny_bert_no_dropout, class_weights):
    model = from_pretrained(tiny_bert_no_dropout, task="sequence-classification", id2label=["neg", "pos", "mid"],
                            seed=4)
    task = classification_task(tokenizer, "single_label_classification", ["neg", "pos", "mid"], 0.15, class_weights)
    batch = classification_batch(task)
    loss_sum, count = task.loss(model, batch)
    logits = torch.from_numpy(np.asarray(model(**model_inputs(batch)), np.float64))
    weight = None if task.class_weights is None else torch.from_numpy(np.asarray(task.class_weights, np.float64))
    per_example = torch.nn.functional.cross_entropy(logits, torch.from_numpy(np.asarray(batch["label"], np.int64)),
                                                    weight=weight, label_smoothing=0.15, reduction="none")
    np.testing.assert_allclose(float(loss_sum), float(per_example.sum()), rtol=1e-5)
    assert int(count) == 4


def test_multi_label_smoothing_is_torch_bce_on_smoothed_targets(tokenizer, tiny_bert_no_dropout):
    model = from_pretrained(tiny_bert_no_dropout, task="sequence-classification", id2label=["neg", "pos", "mid"],
                            problem_type="multi_label_classification", seed=5)
    task = classification_task(tokenizer, "multi_label_classification", ["neg,mid", "pos", "mid"], 0.2, "balanced")
    batch = classification_batch(task)
    loss_sum, _ = task.loss(model, batch)
    logits = torch.from_numpy(np.asarray(model(**model_inputs(batch)), np.float64))
    targets = torch.from_numpy(np.asarray(batch["labels"], np.float64)) * 0.8 + 0.1
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=torch.from_numpy(np.asarray(task.class_weights, np.float64)),
                                     reduction="none")(logits, targets)
    np.testing.assert_allclose(float(loss_sum), float(bce.mean(-1).sum()), rtol=1e-5)
    task.label_smoothing = 0.0  # without smoothing the existing BCE path, which the smoothed one extends
    plain, _ = task.loss(model, batch)
    hard = torch.from_numpy(np.asarray(batch["labels"], np.float64))
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=torch.from_numpy(np.asarray(task.class_weights, np.float64)),
                                     reduction="none")(logits, hard)
    np.testing.assert_allclose(float(plain), float(bce.mean(-1).sum()), rtol=1e-5)


def test_label_smoothing_config_checks():
    config = base_config()
    config.train.label_smoothing = 1.0
    with pytest.raises(ConfigError, match=r"train.label_smoothing must be in \[0, 1\)"):
        validate(config)
    config = base_config()
    config.task = "question-answering"
    config.qa.doc_stride = 64
    config.train.label_smoothing = 0.1
    with pytest.raises(ConfigError, match="applies to classification and NER, not to question-answering"):
        validate(config)
    config = base_config()
    config.task = "sequence-classification"
    config.classification.problem_type = "regression"
    config.train.label_smoothing = 0.1
    with pytest.raises(ConfigError, match="not to sequence-classification regression"):
        validate(config)
    config = base_config()
    config.train.label_smoothing = 0.1
    validate(config)  # NER (the default task) takes it


def test_zero_smoothing_keeps_the_plain_loss_exactly(tokenizer, tiny_bert_no_dropout):
    from jaxft.train.step import token_cross_entropy

    model = from_pretrained(tiny_bert_no_dropout, task="token-classification", id2label=NER_LABELS, seed=3)
    task = ner_task(tokenizer)
    batch = ner_batch(task)
    logits = model(**model_inputs(batch))
    got = task.loss(model, batch)
    want = token_cross_entropy(logits, jnp.asarray(batch["labels"]))
    assert float(got[0]) == float(want[0]) and int(got[1]) == int(want[1])
