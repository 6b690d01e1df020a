"""int8 quantization (integer matmuls with per-token activation scales, and weight-only) and magnitude pruning:
array maths, the integer matmul against exact integer arithmetic and in the compiled program, the quantize
command's folder, logits of the quantized model against float32, size on disk, and loading through predict."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from jaxft.main import main
from jaxft.models import ModelLoadError, from_pretrained, load_tokenizer
from jaxft.models.quantized import (DYNAMIC, MARKER, SCALE_SUFFIX, WEIGHT_ONLY, WEIGHTS_FILE, QuantizedEmbed,
                                    QuantizedLinear, dequantize_rows, dequantize_tensors, int8_matmul,
                                    quantize_activations, quantize_rows)
from jaxft.predict import load_predictor
from jaxft.quantize import folder_bytes, prune, quantize_folder, target_keys
from jaxft.tasks.predictor import load_model
from tiny_exports import NER_LABELS, TEXTS, make_export

# Stated tolerance: on the tiny model (hidden 32, decisive random head, logits of size ~5) int8 kernels move
# the logits by at most 0.1 in absolute value and keep at least 97% of the token argmaxes.
LOGIT_TOLERANCE = 0.1


def test_quantize_rows_error_is_at_most_half_a_step():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (16, 40)).astype(np.float32)
    w[3] = 0.0  # an all-zero row gets scale 1 and stays zero
    q, scale = quantize_rows(w)
    assert q.dtype == np.int8 and scale.shape == (16,) and np.abs(q).max() == 127
    assert np.all(np.abs(dequantize_rows(q, scale) - w) <= scale[:, None] / 2 + 1e-8)
    assert np.all(dequantize_rows(q, scale)[3] == 0)


def test_prune_per_layer_zeroes_exactly_the_fraction():
    rng = np.random.default_rng(1)
    tensors = {"a.layer.0.x.weight": rng.normal(size=(30, 20)), "a.layer.1.x.weight": rng.normal(size=(7, 13))}
    pruned, zeros = prune(tensors, list(tensors), 0.3, "layer")
    for key, w in tensors.items():
        assert np.sum(pruned[key] == 0) == round(0.3 * w.size)
        kept = np.abs(pruned[key][pruned[key] != 0])
        assert kept.min() >= np.abs(w[pruned[key] == 0]).max()  # the smallest magnitudes went
        assert zeros[key] == pytest.approx(round(0.3 * w.size) / w.size)


def test_prune_global_uses_one_threshold():
    rng = np.random.default_rng(2)
    small, large = rng.normal(0, 0.1, (20, 20)), rng.normal(0, 1.0, (20, 20))
    tensors = {"m.layer.0.small.weight": small, "m.layer.0.large.weight": large}
    pruned, zeros = prune(tensors, list(tensors), 0.5, "global")
    total = sum(np.sum(pruned[k] == 0) for k in tensors)
    assert total == 400  # half of 800
    assert zeros["m.layer.0.small.weight"] > 0.8 > 0.2 > zeros["m.layer.0.large.weight"]  # not 50% each
    threshold = max(np.abs(tensors[k][pruned[k] == 0]).max() for k in tensors)
    assert all(np.abs(pruned[k][pruned[k] != 0]).min() >= threshold for k in tensors)


def test_target_keys_are_the_encoder_layer_kernels(tiny_bert_no_dropout):
    tensors = load_file(str(tiny_bert_no_dropout / "model.safetensors"))
    keys = target_keys(tensors)
    assert len(keys) == 2 * 6  # q, k, v, attention output, intermediate, output per layer
    assert all(".layer." in k and tensors[k].ndim == 2 for k in keys)
    assert any(k.endswith("word_embeddings.weight") for k in target_keys(tensors, embeddings=True))


@pytest.fixture(scope="module")
def ner_export(tmp_path_factory, tiny_bert_no_dropout):
    return make_export(tmp_path_factory.mktemp("q") / "ner", tiny_bert_no_dropout, "token-classification",
                       NER_LABELS)


def batch_for(folder, texts):
    tokenizer = load_tokenizer(folder)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="np")
    return batch["input_ids"], batch["attention_mask"]


def test_int8_matmul_is_exact_integer_arithmetic():
    """Per-token activation codes times int8 weights accumulate exactly in int32; only the scales are float."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, (2, 5, 48)).astype(np.float32)
    x[0, 1] = 0.0  # an all-zero token gets scale 1 and codes 0
    w = rng.normal(0, 0.05, (24, 48)).astype(np.float32)  # HF [out, in]
    q, w_scale = quantize_rows(w)
    codes, x_scale = (np.asarray(a) for a in quantize_activations(jnp.asarray(x)))
    assert codes.dtype == np.int8 and np.abs(codes).max() == 127 and np.all(codes[0, 1] == 0)
    assert np.all(np.abs(codes * x_scale - x) <= x_scale / 2 + 1e-6)
    exact = (codes.astype(np.int64) @ q.T.astype(np.int64)).astype(np.float32) * x_scale * w_scale
    got = np.asarray(int8_matmul(jnp.asarray(x), jnp.asarray(q.T), jnp.asarray(w_scale)))
    np.testing.assert_allclose(got, exact, rtol=1e-6)
    assert np.abs(got - x @ w.T).max() < 0.05 * np.abs(x @ w.T).max()


def test_int8_dynamic_compiles_to_an_integer_dot(ner_export, tmp_path):
    quantize_folder(ner_export, tmp_path / "int8")
    model = load_model(tmp_path / "int8", "token-classification")
    ids, mask = batch_for(ner_export, TEXTS)
    graph, state = nnx.split(model)
    forward = jax.jit(lambda state, ids, mask: nnx.merge(graph, state)(ids, mask))
    hlo = forward.lower(state, ids, mask).compile().as_text()
    assert len(re.findall(r"= s32\[[^\]]*\]\{[^}]*\} dot\(", hlo)) == 12  # each quantized layer: an int32 dot


def test_quantized_logits_close_to_float32_and_exact_to_dequantized(ner_export, tmp_path):
    summary = quantize_folder(ner_export, tmp_path / "int8", method=WEIGHT_ONLY)
    ids, mask = batch_for(ner_export, TEXTS)
    fp32 = np.asarray(from_pretrained(ner_export, task="token-classification")(ids, mask))
    quantized = load_model(tmp_path / "int8", "token-classification")
    assert sum(isinstance(m, QuantizedLinear) for _, m in __import__("flax").nnx.iter_graph(quantized)) == 12
    q_logits = np.asarray(quantized(ids, mask))
    real = mask.astype(bool)
    assert np.abs(q_logits - fp32)[real].max() < LOGIT_TOLERANCE
    assert np.mean(q_logits.argmax(-1)[real] == fp32.argmax(-1)[real]) >= 0.97
    # the int8 path computes exactly what float32 kernels holding the dequantized values give
    reference = from_pretrained(ner_export, task="token-classification")
    tensors = dequantize_tensors(load_file(str(tmp_path / "int8" / WEIGHTS_FILE)))
    from jaxft.models.hf import hf_key, param_items
    for path, variable in param_items(reference):
        key, transpose = hf_key(path, reference.config)
        variable.set_value(jnp.asarray(tensors[key].T if transpose else tensors[key]))
    np.testing.assert_allclose(q_logits, np.asarray(reference(ids, mask)), atol=2e-5)
    assert summary["quantized_params"] == 2 * (4 * 32 * 32 + 2 * 32 * 64)
    # integer matmuls (the default): the activations' rounding on top, within the same stated tolerance
    quantize_folder(ner_export, tmp_path / "int8-dynamic")
    assert json.loads((tmp_path / "int8-dynamic" / "config.json").read_text())[MARKER]["method"] == DYNAMIC
    dynamic = load_model(tmp_path / "int8-dynamic", "token-classification")
    assert all(m.activations == "dynamic" for _, m in nnx.iter_graph(dynamic)
               if isinstance(m, QuantizedLinear))
    d_logits = np.asarray(dynamic(ids, mask))
    assert np.abs(d_logits - fp32)[real].max() < LOGIT_TOLERANCE
    assert np.mean(d_logits.argmax(-1)[real] == fp32.argmax(-1)[real]) >= 0.97
    assert not np.allclose(d_logits, q_logits, atol=1e-6)  # it is another computation


def test_folder_layout_size_and_refusal_by_plain_loaders(ner_export, tmp_path):
    summary = quantize_folder(ner_export, tmp_path / "int8")
    out = tmp_path / "int8"
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / "config.json").read_text())[MARKER]["activations"] == "dynamic_per_token"
    assert (out / "tokenizer.json").exists()
    tensors = load_file(str(out / WEIGHTS_FILE))
    keys = [k for k in tensors if k + SCALE_SUFFIX in tensors]
    assert len(keys) == 12 and all(tensors[k].dtype == np.int8 for k in keys)
    # 3 bytes saved per quantized weight, 4 bytes spent per output-channel scale (headers differ by < 8 KB)
    params = sum(tensors[k].size for k in keys)
    channels = sum(tensors[k].shape[0] for k in keys)
    saved = summary["bytes_before"] - summary["bytes_after"]
    assert abs(saved - (3 * params - 4 * channels)) < 8192
    with pytest.raises(ModelLoadError, match="no weights found"):
        from_pretrained(out, task="token-classification")
    # with the embedding table quantized too the tiny model (mostly vocabulary) shrinks to under 30%
    quantize_folder(ner_export, tmp_path / "int8-emb", embeddings=True)
    assert folder_bytes(tmp_path / "int8-emb") < 0.3 * folder_bytes(ner_export)
    model = load_model(tmp_path / "int8-emb", "token-classification")
    assert isinstance(model.bert.embeddings.word_embeddings, QuantizedEmbed)
    ids, mask = batch_for(ner_export, TEXTS)
    fp32 = np.asarray(from_pretrained(ner_export, task="token-classification")(ids, mask))
    assert np.abs(np.asarray(model(ids, mask)) - fp32)[mask.astype(bool)].max() < LOGIT_TOLERANCE


def test_pruned_and_quantized_round_trip_through_the_command(ner_export, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["jaxft", "quantize", "--model", str(ner_export), "--out", str(out), "--prune", "0.3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["prune"]["zero_fraction"] == pytest.approx(0.3, abs=1e-3)
    tensors = load_file(str(out / WEIGHTS_FILE))
    for key in target_keys(load_file(str(ner_export / "model.safetensors"))):
        assert np.mean(tensors[key] == 0) >= 0.3 - 1e-3  # pruned zeros stay zero as int8 codes
    # predict loads it; on the same texts the quantized + pruned model still runs and keeps most tags
    fp32 = load_predictor(ner_export, max_length=32).predict_words([t.split() for t in TEXTS])
    pruned = load_predictor(out, max_length=32).predict_words([t.split() for t in TEXTS])
    agree = [a == b for x, y in zip(fp32, pruned) for a, b in zip(x.tags, y.tags)]
    assert len(agree) > 50 and np.mean(agree) > 0.5
    # only pruning: an ordinary float32 folder with exact zeros
    assert main(["jaxft", "quantize", "--model", str(ner_export), "--out", str(tmp_path / "p"), "--prune", "0.5",
                 "--no-int8", "--prune-scope", "global"]) == 0
    plain = load_file(str(tmp_path / "p" / "model.safetensors"))
    keys = target_keys(plain)
    assert sum(np.sum(plain[k] == 0) for k in keys) == round(0.5 * sum(plain[k].size for k in keys))
    from_pretrained(tmp_path / "p", task="token-classification")  # loads as a plain HF folder


def test_quantize_command_errors(ner_export, tmp_path, capsys):
    assert main(["jaxft", "quantize", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "folder not found" in capsys.readouterr().err
    quantize_folder(ner_export, tmp_path / "once")
    assert main(["jaxft", "quantize", "--model", str(tmp_path / "once"), "--out", str(tmp_path / "twice")]) == 2
    assert "already quantized" in capsys.readouterr().err
    assert main(["jaxft", "quantize", "--model", str(ner_export), "--out", str(tmp_path / "x"), "--prune", "1.5"]) == 2
    assert "prune fraction" in capsys.readouterr().err
