"""The NER and sentiment recipes end to end with a small random ModernBERT folder (--config.model.name_or_path),
on one device and sharded on 8 simulated devices (fsdp 4 x tensor 2): the same train losses to 1e-5, exports
that PyTorch transformers loads as ModernBertFor* with jaxft's logits, predictions through the predictor.

The folder: 2 layers (global, then sliding with local_attention 16, so rows of 64 tokens are cut into
windows), hidden 32, 4 heads, GeGLU 64, mlp and attention dropout 0.1, the packaged MiniLM tokenizer.
"""

import csv
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import jaxft.models as jm
from jaxft.predict import load_predictor

REPO = Path(__file__).parent.parent
STEPS = 8
LOSS_TOLERANCE = 1e-5
POSITIVE = ["great", "wonderful", "superb", "lovely", "excellent", "brilliant"]
NEGATIVE = ["awful", "terrible", "boring", "dull", "dreadful", "tedious"]
FILLER = "the film had a plot some actors and a long middle part with music".split()


@pytest.fixture(scope="module")
def tiny_modernbert(tmp_path_factory, minilm_path) -> Path:
    folder = tmp_path_factory.mktemp("tiny-modernbert")
    config = transformers.ModernBertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=512, local_attention=16, layer_types=["full_attention", "sliding_attention"],
        pad_token_id=0, bos_token_id=101, eos_token_id=102, cls_token_id=101, sep_token_id=102,
        mlp_dropout=0.1, attention_dropout=0.1)
    torch.manual_seed(0)
    transformers.ModernBertModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("reviews") / "reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for _ in range(240):
            label = rng.choice(["pos", "neg"])
            words = rng.sample(FILLER, 6) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
            rng.shuffle(words)
            writer.writerow([" ".join(words), label])
    return path


def train(recipe, workdir, model, data, devices, *mesh_flags):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    command = [sys.executable, "-m", "jaxft.main", "--config", f"configs/{recipe}.py", "--workdir", str(workdir),
               f"--config.model.name_or_path={model}", f"--config.data.train_file={data}",
               "--config.data.max_length=64", "--config.train.batch_size=8", f"--config.train.max_steps={STEPS}",
               "--config.train.log_every=1", f"--config.train.eval_every={STEPS}", "--config.optim.learning_rate=1e-3",
               "--config.train.progress_bar=False", *mesh_flags]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    losses = {line["step"]: line["loss"] for line in lines if line["split"] == "train"}
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses, json.loads((Path(workdir) / "results.json").read_text())


FSDP_TENSOR = ("--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.mesh.tensor=2")


def torch_logits(export, task, texts):
    classes = {jm.TOKEN_CLASSIFICATION: transformers.ModernBertForTokenClassification,
               jm.SEQUENCE_CLASSIFICATION: transformers.ModernBertForSequenceClassification}
    model = classes[task].from_pretrained(export).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    batch = tokenizer(texts, padding=True, return_tensors="np", return_token_type_ids=False)
    with torch.no_grad():
        out = model(**{k: torch.tensor(v) for k, v in batch.items()}).logits.numpy()
    return batch, out


def test_ner_recipe_on_modernbert_one_and_eight_devices(tiny_modernbert, small_ner_file, tmp_path):
    one, results = train("ner", tmp_path / "one", tiny_modernbert, small_ner_file, 1)
    eight, _ = train("ner", tmp_path / "eight", tiny_modernbert, small_ner_file, 8, *FSDP_TENSOR)
    assert max(abs(one[s] - eight[s]) for s in one) <= LOSS_TOLERANCE
    assert {"f1", "precision", "recall"} <= set(results["test"])
    export = tmp_path / "one" / "export"
    assert json.loads((export / "config.json").read_text())["architectures"] == ["ModernBertForTokenClassification"]
    texts = ["John Smith flew from Paris to Berlin on Monday", "the weather in London is grey"]
    batch, theirs = torch_logits(export, jm.TOKEN_CLASSIFICATION, texts)
    ours = np.asarray(jm.from_pretrained(export, task=jm.TOKEN_CLASSIFICATION)(batch["input_ids"],
                                                                                 batch["attention_mask"]))
    real = batch["attention_mask"].astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() <= 1e-5
    predictions = load_predictor(export).predict_items(texts)
    assert len(predictions) == 2 and all("entities" in p for p in predictions)


def test_sentiment_recipe_on_modernbert_one_and_eight_devices(tiny_modernbert, reviews, tmp_path):
    one, results = train("sentiment", tmp_path / "one", tiny_modernbert, reviews, 1)
    eight, _ = train("sentiment", tmp_path / "eight", tiny_modernbert, reviews, 8, *FSDP_TENSOR)
    assert max(abs(one[s] - eight[s]) for s in one) <= LOSS_TOLERANCE
    assert results["labels"] == ["neg", "pos"] and "accuracy" in results["test"]
    export = tmp_path / "one" / "export"
    texts = ["a superb film with music", "it was dull and tedious"]
    batch, theirs = torch_logits(export, jm.SEQUENCE_CLASSIFICATION, texts)
    model = jm.from_pretrained(export, task=jm.SEQUENCE_CLASSIFICATION)
    np.testing.assert_allclose(np.asarray(model(batch["input_ids"], batch["attention_mask"])), theirs, atol=1e-5,
                               rtol=0)
    predictions = load_predictor(export).predict_items(texts)
    probabilities = torch.softmax(torch.tensor(theirs), -1).numpy()
    for prediction, probs in zip(predictions, probabilities):
        assert [prediction["probabilities"]["neg"], prediction["probabilities"]["pos"]] == pytest.approx(probs,
                                                                                                        abs=1e-5)


def test_masked_lm_pretraining_on_packed_rows(tiny_modernbert, tmp_path):
    """Continued masked-LM pretraining on packed rows (segment ids, positions restarting per example): the
    export loads as ModernBertForMaskedLM with jaxft's logits."""
    from conftest import recipe_config
    from jaxft.tasks.run import run

    words = "the film is a quiet triumph of graceful storytelling though its second act drags".split()
    rng = np.random.default_rng(0)
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(" ".join(rng.choice(words, rng.integers(4, 30))) for _ in range(80)) + "\n")
    config = recipe_config("mlm", tiny_modernbert, text, **{
        "data.max_length": 64, "data.packing": True, "train.batch_size": 8, "train.max_steps": 6,
        "train.eval_every": 6, "optim.learning_rate": 1e-3, "mlm.source_split": "all", "mlm.heldout_fraction": 0.1})
    results = run(config, tmp_path / "run")
    assert np.isfinite(results["perplexity_after"]) and results["perplexity_after"] < results["perplexity_before"]
    export = tmp_path / "run" / "export"
    theirs, info = transformers.AutoModelForMaskedLM.from_pretrained(export, output_loading_info=True)
    assert type(theirs).__name__ == "ModernBertForMaskedLM" and not info["missing_keys"]
    tokenizer = jm.load_tokenizer(export)
    batch = tokenizer(["the film is a [MASK] triumph", "drags"], padding=True, return_tensors="np")
    ours = np.asarray(jm.from_pretrained(export, task=jm.MASKED_LM)(batch["input_ids"], batch["attention_mask"]))
    with torch.no_grad():
        reference = theirs.eval()(input_ids=torch.tensor(batch["input_ids"]),
                                  attention_mask=torch.tensor(batch["attention_mask"])).logits.numpy()
    real = batch["attention_mask"].astype(bool)
    assert np.abs(ours[real] - reference[real]).max() <= 1e-4
