"""DeBERTa-v2/v3 (jaxft/models/deberta.py) against PyTorch transformers' DebertaV2* classes.

References are small random configs (2 layers, hidden 32, 4 heads) covering: c2p + p2c with share_att_key on,
log buckets (position_buckets > 0), norm_rel_ebd and neither absolute positions nor token types (DeBERTa-v3's
settings); share_att_key off, position_buckets = 0 with clipped distances, absolute positions and token types
(v2); one position term with the convolution branch and embedding_size != hidden_size (v2-xlarge's layout);
and no relative attention. Every parameter is perturbed before saving (family_checks.perturb).
Tolerances: logits max abs <= 1e-4 on padded batches in float32, whole tensors (padding positions included),
both directions (torch folder -> jaxft, jaxft export -> torch); packed rows equal each example alone to 1e-5;
a LoRA adapter round-trips through peft's PeftModel.from_pretrained to 1e-5.
The tokenizer is DeBERTa-v3's format: a SentencePiece spm.model without tokenizer.json (trained here on the
packaged tweets), converted by transformers, which needs sentencepiece and protobuf (jaxft[sentencepiece]).
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

import jaxft.models as jm
from conftest import tiny_ner_config
from family_checks import (NER_LABELS, TORCH_CLASSES, flat_params, jax_outputs, max_difference, packed_row_inputs,
                           padded_batch, save_reference, torch_outputs, train_steps)
from jaxft.models.encoder import describe_attention
from jaxft.models.relative_positions import deberta_buckets
from jaxft.peft import PeftConfig, PeftParam, apply_peft, peft_info
from jaxft.peft.export import from_peft_pretrained, load_with_peft, save_peft_adapter, save_peft_state
from jaxft.train.optim import update_factors

REPO = Path(__file__).parent.parent
ATOL = 1e-4
PACKED_ATOL = 1e-5
PEFT_ATOL = 1e-5

SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64)
CONFIGS = {
    "v3": dict(relative_attention=True, pos_att_type="p2c|c2p", position_buckets=8, max_relative_positions=-1,
               share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0),
    "v2": dict(relative_attention=True, pos_att_type=["c2p", "p2c"], position_buckets=0, max_relative_positions=6,
               share_att_key=False, position_biased_input=True, type_vocab_size=2, pooler_hidden_act="tanh",
               cls_dropout=0.2),
    "v2-conv": dict(relative_attention=True, pos_att_type="c2p", position_buckets=16, max_relative_positions=32,
                    share_att_key=False, norm_rel_ebd="layer_norm", conv_kernel_size=3, conv_act="gelu",
                    type_vocab_size=0, embedding_size=16),
    "no-relative": dict(relative_attention=False, pos_att_type="c2p|p2c", type_vocab_size=0),
}
TASKS = [None, jm.TOKEN_CLASSIFICATION, jm.SEQUENCE_CLASSIFICATION, jm.QUESTION_ANSWERING, jm.MASKED_LM]


def deberta_config(name: str, **overrides) -> transformers.DebertaV2Config:
    return transformers.DebertaV2Config(**{**SMALL, **CONFIGS[name], **overrides})


def batch_for(config, seed=0):
    return padded_batch(config.vocab_size, config.pad_token_id, token_types=config.type_vocab_size == 2, seed=seed)


# ---------------------------------------------------------------------------------------------- positions

@pytest.mark.parametrize("buckets,max_position", [(256, 512), (256, 1024), (8, 64), (16, 32), (6, 20)])
def test_log_buckets_equal_transformers_on_every_distance(buckets, max_position):
    distances = np.arange(-8192, 8193)
    theirs = make_log_bucket_position(torch.tensor(distances), buckets, max_position).long().numpy()
    np.testing.assert_array_equal(deberta_buckets(distances, buckets, max_position), theirs)
    np.testing.assert_array_equal(deberta_buckets(distances, 0, max_position), distances)  # no buckets


# ---------------------------------------------------------------------------------------------- parity

@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", ["v3", "v2"])
def test_torch_checkpoint_loads_with_equal_logits(name, task, tmp_path):
    config = deberta_config(name)
    reference = save_reference(config, task, tmp_path)
    model, report = jm.from_pretrained(tmp_path, task=task, output_loading_info=True)
    assert report.missing == [] and report.mismatched == [] and not report.new_head and report.unexpected == []
    ids, mask, types = batch_for(config)
    assert max_difference(jax_outputs(model, task, ids, mask, types),
                          torch_outputs(reference, task, ids, mask, types)) <= ATOL


@pytest.mark.parametrize("name", ["v2-conv", "no-relative"])
def test_convolution_and_plain_attention_match_torch(name, tmp_path):
    config = deberta_config(name)
    for task in (jm.TOKEN_CLASSIFICATION, jm.MASKED_LM):
        reference = save_reference(config, task, tmp_path / task)
        model, report = jm.from_pretrained(tmp_path / task, task=task, output_loading_info=True)
        assert report.missing == [] and report.unexpected == []
        ids, mask, types = batch_for(config)
        assert max_difference(jax_outputs(model, task, ids, mask, types),
                              torch_outputs(reference, task, ids, mask, types)) <= ATOL


def test_v3_masked_lm_head_without_legacy(tmp_path):
    """config "legacy": false: the lm_predictions.lm_head head the DeBERTa-v3 checkpoints carry."""
    config = deberta_config("v3", legacy=False)
    reference = save_reference(config, jm.MASKED_LM, tmp_path)
    model, report = jm.from_pretrained(tmp_path, task=jm.MASKED_LM, output_loading_info=True)
    assert report.missing == [] and report.unexpected == []
    assert "lm_predictions.lm_head.dense.kernel" in flat_params(model)
    ids, mask, types = batch_for(config)
    assert max_difference(jax_outputs(model, jm.MASKED_LM, ids, mask, types),
                          torch_outputs(reference, jm.MASKED_LM, ids, mask, types)) <= ATOL


@pytest.mark.parametrize("task", TASKS[1:])
@pytest.mark.parametrize("name", ["v3", "v2"])
def test_jaxft_save_loads_in_torch_with_equal_logits(name, task, tmp_path):
    config = deberta_config(name)
    save_reference(config, None, tmp_path / "base")
    labels = NER_LABELS if task == jm.TOKEN_CLASSIFICATION else None
    num_labels = 3 if task == jm.SEQUENCE_CLASSIFICATION else None
    model, report = jm.from_pretrained(tmp_path / "base", task=task, id2label=labels, num_labels=num_labels, seed=3,
                                       output_loading_info=True)
    assert report.new_head
    jm.save_pretrained(model, tmp_path / "out")
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert exported["architectures"] == [f"DebertaV2{jm.HEADS[task].architecture_suffix}"]
    reloaded, info = TORCH_CLASSES[task].from_pretrained(tmp_path / "out", output_loading_info=True)
    assert type(reloaded).__name__ == exported["architectures"][0]
    assert not info["missing_keys"] and not info["mismatched_keys"] and not info["unexpected_keys"]
    ids, mask, types = batch_for(config, seed=1)
    assert max_difference(jax_outputs(model, task, ids, mask, types),
                          torch_outputs(reloaded.eval(), task, ids, mask, types)) <= ATOL


def test_parameter_paths_are_transformers_names(tmp_path):
    config = deberta_config("v2")
    save_reference(config, jm.SEQUENCE_CLASSIFICATION, tmp_path)
    model = jm.from_pretrained(tmp_path, task=jm.SEQUENCE_CLASSIFICATION)
    paths = set(flat_params(model))
    assert {"deberta.encoder.layer.1.attention.self.query_proj.kernel", "deberta.encoder.rel_embeddings.embedding",
            "deberta.encoder.layer.0.attention.self.pos_key_proj.kernel", "pooler.dense.kernel",
            "classifier.kernel"} <= paths
    assert set(jm.to_hf_state_dict(model)) == set(
        transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).state_dict())


# ---------------------------------------------------------------------------------------------- packed rows

@pytest.mark.parametrize("name", ["v3", "v2", "v2-conv"])
def test_packed_rows_equal_each_example_alone(name, tmp_path):
    """Relative positions restart with each packed example; the convolution does not reach across them."""
    config = deberta_config(name)
    save_reference(config, jm.TOKEN_CLASSIFICATION, tmp_path)
    model = jm.from_pretrained(tmp_path, task=jm.TOKEN_CLASSIFICATION)
    rng = np.random.default_rng(0)
    examples = [rng.integers(4, 99, n).astype(np.int32) for n in (9, 5, 12, 7)]
    ids, mask, segments, positions = packed_row_inputs([examples[:2], examples[2:]], 20, 0, config.pad_token_id)
    packed = np.asarray(model(ids, mask, position_ids=positions, segment_ids=segments))
    worst = 0.0
    for row, members in enumerate([examples[:2], examples[2:]]):
        start = 0
        for tokens in members:
            alone = np.asarray(model(tokens[None], np.ones((1, len(tokens)), np.int32)))[0]
            worst = max(worst, max_difference(packed[row, start:start + len(tokens)], alone))
            start += len(tokens)
    assert worst <= PACKED_ATOL


# ---------------------------------------------------------------------------------------------- attention

def _largest_intermediate(jaxpr) -> int:
    sizes = [0]
    for eqn in jaxpr.eqns:
        sizes += [int(np.prod(v.aval.shape)) for v in eqn.outvars if hasattr(v.aval, "shape")]
        for param in eqn.params.values():
            for sub in (param if isinstance(param, (list, tuple)) else [param]):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    sizes.append(_largest_intermediate(inner))
    return max(sizes)


def test_position_terms_are_gathered_not_materialised(tmp_path):
    """Nothing in the traced forward pass is larger than the [B, N, T, T] scores: c2p/p2c are [B, N, T, R]
    products gathered into the score bias, never a [T, T, hidden] tensor (which would be 16x larger here)."""
    config = deberta_config("v3", hidden_size=64, num_attention_heads=4, max_position_embeddings=128)
    save_reference(config, None, tmp_path)
    model = jm.from_pretrained(tmp_path)
    ids = np.ones((2, 96), np.int32)
    batch, heads, length = 2, 4, 96
    largest = _largest_intermediate(jax.make_jaxpr(lambda x: model(x))(ids).jaxpr)
    assert largest <= batch * heads * length * length < batch * length * length * 64


def test_startup_line_says_the_bias_needs_xla(tmp_path):
    save_reference(deberta_config("v3"), None, tmp_path)
    config = jm.from_pretrained(tmp_path).config
    line = describe_attention(config, "float32", packed=False)
    assert "eval xla: a score bias (relative positions) needs the explicit path" in line
    pallas = jm.from_pretrained(tmp_path, attention="pallas", attention_dropout=0.0).config
    with pytest.raises(ValueError, match="pallas takes no score bias"):
        describe_attention(pallas, "float32", packed=True)


# ---------------------------------------------------------------------------------------------- PEFT

@pytest.mark.parametrize("task", [jm.TOKEN_CLASSIFICATION, jm.SEQUENCE_CLASSIFICATION])
def test_lora_defaults_to_peft_targets_and_round_trips_through_peft(task, tmp_path):
    import peft

    config = deberta_config("v3")  # share_att_key: the LoRA'd query_proj/key_proj also project the positions
    save_reference(config, task, tmp_path / "base")
    model = jm.from_pretrained(tmp_path / "base", task=task)
    apply_peft(model, PeftConfig(method="lora", rank=4, alpha=8))
    info = peft_info(model)
    assert info["wrapped"] == [f"deberta.encoder.layer.{i}.attention.self.{name}" for i in range(2)
                               for name in ("query_proj", "value_proj")]
    expected_saved = ["classifier"] + (["pooler"] if task == jm.SEQUENCE_CLASSIFICATION else [])
    assert sorted(info["saved_modules"]) == sorted(expected_saved)
    key = jax.random.key(0)
    for _, layer in nnx.iter_modules(model):
        if hasattr(layer, "lora_b"):
            key, sub = jax.random.split(key)
            layer.lora_b.set_value(0.2 * jax.random.normal(sub, layer.lora_b.get_value().shape))
    ids, mask, types = batch_for(config)
    model.eval()
    ours = jax_outputs(model, task, ids, mask, types)
    save_peft_adapter(model, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(set(name.rsplit(".", 1)[-1] for name in adapter["target_modules"])) == ["query_proj", "value_proj"]
    base = TORCH_CLASSES[task].from_pretrained(tmp_path / "base")
    theirs_model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    assert max_difference(ours, torch_outputs(theirs_model, task, ids, mask, types)) <= PEFT_ATOL
    back = from_peft_pretrained(tmp_path / "adapter")
    assert max_difference(jax_outputs(back, task, ids, mask, types), ours) <= 1e-6


METHODS = {
    # peft config -> (which base parameters train, number of PeftParams)
    "lora": (dict(method="lora"), lambda p: p.startswith("classifier."), 8),
    "dora": (dict(method="dora"), lambda p: p.startswith("classifier."), 12),
    "bitfit": (dict(method="bitfit"), lambda p: p.endswith(".bias") or p.startswith("classifier."), 0),
    "houlsby": (dict(method="houlsby", adapter_size=8), lambda p: p.startswith("classifier."), 16),
    "pfeiffer": (dict(method="pfeiffer", adapter_size=8), lambda p: p.startswith("classifier."), 8),
    "prefix": (dict(method="prefix", prefix_length=4), lambda p: p.startswith("classifier."), 4),
    "freeze": (dict(method="none", freeze=r"embeddings\.|layer\.0\."),
               lambda p: not ("embeddings." in p or "layer.0." in p), 0),
}


@pytest.fixture(scope="module")
def tagger_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deberta-tagger")
    save_reference(deberta_config("v3"), jm.TOKEN_CLASSIFICATION, folder)
    return folder


@pytest.mark.parametrize("case", sorted(METHODS))
def test_every_peft_method_trains_only_its_parameters(tagger_folder, case):
    settings, trains, peft_count = METHODS[case]
    model = jm.from_pretrained(tagger_folder, task=jm.TOKEN_CLASSIFICATION)
    before = flat_params(model)
    trainable = apply_peft(model, PeftConfig(**settings))
    peft_before = flat_params(model, PeftParam)
    assert len(peft_before) == peft_count
    ids, mask, _ = padded_batch(99, 0, lengths=(12, 8, 5))
    after_model = train_steps(model, trainable, ids.astype(np.int32), mask.astype(np.int32))
    after = flat_params(after_model)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {k for k in before if trains(k)}, sorted(changed ^ {k for k in before if trains(k)})[:4]
    assert all(not np.array_equal(v, flat_params(after_model, PeftParam)[k]) for k, v in peft_before.items())


@pytest.mark.parametrize("method", ["houlsby", "prefix"])
def test_unmergeable_methods_export_and_reload(tagger_folder, tmp_path, method):
    model = jm.from_pretrained(tagger_folder, task=jm.TOKEN_CLASSIFICATION)
    ids, mask, types = padded_batch(99, 0)
    before = jax_outputs(model, jm.TOKEN_CLASSIFICATION, ids, mask, types)
    apply_peft(model, PeftConfig(method=method, adapter_size=8, prefix_length=4))
    key = jax.random.key(0)
    for _, layer in nnx.iter_modules(model):
        for name in ("adapter_down", "adapter_up", "prefix_key"):
            if hasattr(layer, name):
                key, sub = jax.random.split(key)
                variable = getattr(layer, name)
                variable.set_value(variable.get_value() + 0.3 * jax.random.normal(sub, variable.get_value().shape))
    ours = jax_outputs(model, jm.TOKEN_CLASSIFICATION, ids, mask, types)
    assert max_difference(ours, before) > 1e-3
    save_peft_state(model, tmp_path / "export")
    reloaded = load_with_peft(tmp_path / "export", task=jm.TOKEN_CLASSIFICATION)
    np.testing.assert_array_equal(jax_outputs(reloaded, jm.TOKEN_CLASSIFICATION, ids, mask, types), ours)
    if method == "prefix":  # prefixes: no relative position, padding still invisible to the real tokens
        ids[1, 8:] = 7
        real = mask[1].astype(bool)
        assert max_difference(jax_outputs(reloaded, jm.TOKEN_CLASSIFICATION, ids, mask, types)[1][real],
                              ours[1][real]) <= 1e-6


def test_layer_decay_puts_the_relative_embeddings_with_the_embeddings(tagger_folder):
    model = jm.from_pretrained(tagger_folder, task=jm.TOKEN_CLASSIFICATION)
    factors = update_factors(flat_params(model), layer_decay=0.5, loraplus_lr_ratio=1.0, head_lr_ratio=10.0)
    embeddings = factors["deberta.embeddings.word_embeddings.embedding"]
    assert embeddings == 0.5 ** 3
    assert factors["deberta.encoder.rel_embeddings.embedding"] == embeddings
    assert factors["deberta.encoder.LayerNorm.scale"] == embeddings
    assert factors["classifier.kernel"] == 10.0


# ---------------------------------------------------------------------------------------------- tokenizer and runs

def tweets_sentences(tweets_ner_path) -> list[str]:
    sentences, words = [], []
    for line in tweets_ner_path.read_text(encoding="utf-8").splitlines():
        token = line.split("\t")[0].strip()
        if token:
            words.append(token)
        elif words:
            sentences.append(" ".join(words))
            words = []
    return sentences


def write_spm_tokenizer(folder: Path, sentences: list[str]) -> bytes:
    """A DeBERTa-v3-style tokenizer folder: spm.model ([PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3, [MASK]) and
    tokenizer_config.json naming DebertaV2Tokenizer, no tokenizer.json."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=1000, model_type="unigram",
        pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]", unk_id=3,
        unk_piece="[UNK]", user_defined_symbols=["[MASK]"], character_coverage=1.0, num_threads=1, minloglevel=2)
    (folder / "spm.model").write_bytes(model.getvalue())
    specials = {"bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]", "sep_token": "[SEP]",
                "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "DebertaV2Tokenizer",
                                                              "do_lower_case": False, **specials}))
    return model.getvalue()


@pytest.fixture(scope="module")
def tiny_deberta(tmp_path_factory, tweets_ner_path):
    """A random 2-layer DeBERTa-v3-style model (log buckets, shared keys) with a SentencePiece tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-deberta")
    spm = write_spm_tokenizer(folder, tweets_sentences(tweets_ner_path))
    config = transformers.DebertaV2Config(
        vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=128, relative_attention=True, pos_att_type="p2c|c2p", position_buckets=16,
        max_relative_positions=64, share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
        type_vocab_size=0, pad_token_id=0)
    torch.manual_seed(0)
    transformers.DebertaV2Model(config).save_pretrained(folder)
    return folder, spm


def test_sentencepiece_folder_gives_a_fast_tokenizer_with_its_pieces(tiny_deberta):
    import sentencepiece

    folder, spm = tiny_deberta
    tokenizer = jm.load_tokenizer(folder)
    assert tokenizer.is_fast and type(tokenizer).__name__ == "DebertaV2Tokenizer" and len(tokenizer) == 1000
    text = "Pretty bad storm here last evening , Empire State Building"
    pieces = sentencepiece.SentencePieceProcessor(model_proto=spm).encode(text, out_type=str)
    encoded = tokenizer(text)
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == ["[CLS]", *pieces, "[SEP]"]
    words = tokenizer(text.split(), is_split_into_words=True)
    assert max(i for i in words.word_ids() if i is not None) == len(text.split()) - 1


def test_sentencepiece_folder_without_the_package_says_what_to_install(tiny_deberta, tmp_path):
    folder, _ = tiny_deberta
    code = ("import sys; sys.modules['sentencepiece'] = None\n"
            "import jaxft.models as jm\n"
            f"jm.load_tokenizer({str(folder)!r})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode != 0
    assert "spm.model is a SentencePiece tokenizer without tokenizer.json; converting it needs sentencepiece " \
           "(pip install 'jaxft[sentencepiece]')" in done.stderr


def train_losses(workdir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if line["split"] == "train"}


NER_RUN = {"train.max_steps": 12, "train.eval_every": 6, "train.log_every": 1, "data.max_length": 48,
           "data.packing": False}  # the padded path here: tests/test_sharding.py runs packed rows on meshes


@pytest.fixture(scope="module")
def trained(tiny_deberta, small_ner_file, tmp_path_factory):
    """The NER recipe end to end on the tiny DeBERTa (one device, in process)."""
    from jaxft.tasks.run import run

    folder, _ = tiny_deberta
    workdir = tmp_path_factory.mktemp("deberta-ner")
    results = run(tiny_ner_config(folder, small_ner_file, **NER_RUN), workdir)
    return workdir, results


def test_ner_recipe_runs_end_to_end_and_exports_for_torch(trained):
    workdir, results = trained
    losses = train_losses(workdir)
    assert sum(losses[s] for s in (10, 11, 12)) < sum(losses[s] for s in (1, 2, 3))  # the tag prior, at least
    assert 0.0 < results["test"]["accuracy"] <= 1.0 and 0.0 <= results["test"]["f1"] <= 1.0
    export = workdir / "export"
    assert (export / "tokenizer.json").exists()  # the export needs no sentencepiece to load
    model = jm.from_pretrained(export, task=jm.TOKEN_CLASSIFICATION)
    torch_model = transformers.AutoModelForTokenClassification.from_pretrained(export).eval()
    assert type(torch_model).__name__ == "DebertaV2ForTokenClassification"
    tokenizer = jm.load_tokenizer(export)
    batch = tokenizer(["John Smith flew to Paris", "short"], padding=True, return_tensors="np")
    ours = jax_outputs(model, jm.TOKEN_CLASSIFICATION, batch["input_ids"], batch["attention_mask"],
                       batch["token_type_ids"])
    theirs = torch_outputs(torch_model, jm.TOKEN_CLASSIFICATION, batch["input_ids"], batch["attention_mask"],
                           batch["token_type_ids"])
    assert max_difference(ours, theirs) <= ATOL


def test_eight_device_mesh_gives_the_single_device_losses(trained, tiny_deberta, small_ner_file, tmp_path):
    """The same run on a (data 2, fsdp 2, tensor 2) mesh of 8 simulated CPU devices (jaxft's command line)."""
    workdir, _ = trained
    folder, _ = tiny_deberta
    command = [sys.executable, "-m", "jaxft.main", "--config", "configs/ner.py", "--workdir", str(tmp_path),
               f"--config.model.name_or_path={folder}", f"--config.data.train_file={small_ner_file}",
               "--config.train.progress_bar=False", "--config.train.batch_size=8", "--config.train.num_epochs=2",
               "--config.optim.learning_rate=1e-3", "--config.mesh.data=2", "--config.mesh.fsdp=2",
               "--config.mesh.tensor=2", *(f"--config.{key}={value}" for key, value in NER_RUN.items())]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mesh (data=2, fsdp=2, tensor=2) over 8 cpu device(s)" in done.stderr
    assert "a score bias (relative positions) needs the explicit path" in done.stderr

    one, eight = train_losses(workdir), train_losses(tmp_path)
    assert sorted(eight) == sorted(one) == list(range(1, 13))
    assert max(abs(one[s] - eight[s]) for s in one) <= 1e-5


def test_predict_serve_and_quantize_take_the_export(trained, tmp_path):
    from starlette.testclient import TestClient

    from jaxft.models.quantized import QuantizedLinear
    from jaxft.predict import load_predictor
    from jaxft.quantize import quantize_folder
    from jaxft.serve.app import ServeState, build_app
    from jaxft.serve.inputs import Limits
    from jaxft.tasks.predictor import load_model

    export = trained[0] / "export"
    texts = ["John Smith flew from Paris to Berlin", "the weather in London is grey"]
    predictor = load_predictor([export], batch_sizes=[1, 2], length_buckets=[16, 32])
    predicted = predictor.predict_items(texts)
    state = ServeState(predictor, limits=Limits())
    with TestClient(build_app(state)) as client:
        state.ready.wait(120)
        answer = client.post("/predict", json={"texts": texts})
    assert answer.status_code == 200
    assert [p["entities"] for p in answer.json()["predictions"]] == [p["entities"] for p in predicted]

    quantize_folder(export, tmp_path / "int8")
    quantized = load_model(tmp_path / "int8", jm.TOKEN_CLASSIFICATION)
    # q, k, v (which with shared keys also project the relative embeddings), output, intermediate, output
    assert sum(isinstance(m, QuantizedLinear) for _, m in nnx.iter_graph(quantized)) == 2 * 6
    tokenizer = jm.load_tokenizer(export)
    batch = tokenizer(texts, padding=True, return_tensors="np")
    full = np.asarray(jm.from_pretrained(export, task=jm.TOKEN_CLASSIFICATION)(batch["input_ids"],
                                                                               batch["attention_mask"]))
    real = batch["attention_mask"].astype(bool)
    assert np.abs(np.asarray(quantized(batch["input_ids"], batch["attention_mask"])) - full)[real].max() < 0.1



def test_integrated_gradients_are_complete_on_a_deberta_classifier(tiny_deberta):
    from jaxft.explain import Explainer

    folder, _ = tiny_deberta
    model = jm.from_pretrained(folder, task=jm.SEQUENCE_CLASSIFICATION, num_labels=3, seed=1)
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    nnx.update(model, jax.tree.unflatten(treedef, [leaf + 0.1 * jax.random.normal(key, leaf.shape)
                                                   for leaf, key in zip(leaves, keys)]))
    result = Explainer(model, jm.load_tokenizer(folder)).explain("the storm here was pretty bad last evening")
    assert result["tokens"][0] == "[CLS]" and len(result["words"]) == 8
    (explanation,) = result["explanations"]
    assert abs(explanation["value"] - explanation["baseline_value"]) > 0.01
    assert explanation["relative_gap"] <= 1e-3
