"""ModernBERT, EuroBERT and GTE (the rotary families: models/rotary_encoder.py) against PyTorch `transformers`.

Reference models are small random configs built with the PyTorch classes, every parameter perturbed before
`save_pretrained` (as in test_model_parity.py). Variants: ModernBERT with a global and two sliding layers
(local_attention 8 on rows of 24 tokens, so windows cut), `classifier_pooling` cls (no biases) and mean (every
bias, untied decoder, silu head); EuroBERT with grouped-query attention (4 query heads, 2 k/v heads), `late`
and `bos` pooling; GTE with token types. Tolerances: 1e-4 max abs on padded batches (float32), 1e-5 on real
positions and for packed rows against the same examples unpadded.

ModernBERT's padding queries whose window holds no real key (rows much shorter than the batch): transformers'
eager attention averages over every key there, its SDPA attention returns zeros; jaxft's "xla" path does
what eager does. The full padded tensors are compared with eager; real positions with SDPA too.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from family_checks import jax_outputs, perturb

import jaxft.models as jm
from jaxft.models.blocks import fused_order
from jaxft.models.config import EncoderConfig, UnsupportedModelError, with_dropout
from jaxft.models.rotary_encoder import RotaryEncoder, find
from jaxft.peft import PeftConfig, PeftParam, apply_peft, merge, peft_info
from jaxft.peft.export import from_peft_pretrained, save_merged, save_peft_adapter

ATOL_PADDED = 1e-4
ATOL_REAL = 1e-5
LENGTHS = (24, 15, 5)

SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
             max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
MODERNBERT = dict(SMALL, local_attention=8, cls_token_id=1, sep_token_id=2,
                  layer_types=["full_attention", "sliding_attention", "sliding_attention"])
CONFIGS = {
    "modernbert": lambda: transformers.ModernBertConfig(**MODERNBERT),
    "modernbert-mean": lambda: transformers.ModernBertConfig(
        **MODERNBERT, classifier_pooling="mean", attention_bias=True, mlp_bias=True, norm_bias=True,
        classifier_bias=True, decoder_bias=False, classifier_activation="silu", tie_word_embeddings=False),
    "eurobert": lambda: transformers.EuroBertConfig(**SMALL, num_key_value_heads=2, mask_token_id=3),
    "eurobert-bos": lambda: transformers.EuroBertConfig(**SMALL, num_key_value_heads=2, mask_token_id=3,
                                                        classifier_pooling="bos", attention_bias=True, mlp_bias=True,
                                                        tie_word_embeddings=True),
    "gte": lambda: transformers.GteConfig(**SMALL, type_vocab_size=2),
}
TORCH_CLASSES = {
    None: transformers.AutoModel,
    jm.TOKEN_CLASSIFICATION: transformers.AutoModelForTokenClassification,
    jm.SEQUENCE_CLASSIFICATION: transformers.AutoModelForSequenceClassification,
    jm.QUESTION_ANSWERING: transformers.AutoModelForQuestionAnswering,
    jm.MASKED_LM: transformers.AutoModelForMaskedLM,
}
LABELS = {jm.TOKEN_CLASSIFICATION: 5, jm.SEQUENCE_CLASSIFICATION: 3, jm.QUESTION_ANSWERING: 2}


def family_tasks(variant):
    tasks = [None, jm.TOKEN_CLASSIFICATION, jm.SEQUENCE_CLASSIFICATION, jm.MASKED_LM]
    return tasks + [jm.QUESTION_ANSWERING] if variant.startswith("modernbert") else tasks


CASES = [(variant, task) for variant in CONFIGS for task in family_tasks(variant)]


def torch_reference(variant, task, folder, seed=0, **overrides):
    config = CONFIGS[variant]()
    for key, value in overrides.items():
        setattr(config, key, value)
    if task in LABELS:
        config.num_labels = LABELS[task]
    torch.manual_seed(seed)
    model = TORCH_CLASSES[task].from_config(config, attn_implementation="eager").eval()
    perturb(model, seed)
    model.save_pretrained(folder)
    return model


def padded_batch(seed=0, lengths=LENGTHS):
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), max(lengths)), np.int64)
    mask, types = np.zeros_like(ids), np.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(3, 99, length)
        mask[row, :length] = 1
        types[row, length // 2:length] = 1
    return ids, mask, types


def torch_outputs(model, task, ids, mask, types):
    kwargs = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    if model.config.model_type == "gte":
        kwargs["token_type_ids"] = torch.tensor(types)
    with torch.no_grad():
        out = model(**kwargs)
    if task is None:
        return out.last_hidden_state.numpy()
    if task == jm.QUESTION_ANSWERING:
        return np.stack([out.start_logits.numpy(), out.end_logits.numpy()])
    return out.logits.numpy()


def real_positions(task, mask):
    if task == jm.QUESTION_ANSWERING:
        return np.broadcast_to(mask.astype(bool), (2, *mask.shape))
    return mask.astype(bool) if task != jm.SEQUENCE_CLASSIFICATION else slice(None)


def assert_parity(ours, theirs, task, mask):
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= ATOL_PADDED
    real = real_positions(task, mask)
    assert np.abs(ours[real] - theirs[real]).max() <= ATOL_REAL


# ---------------------------------------------------------------------------------------------- parity

@pytest.mark.parametrize("variant,task", CASES)
def test_torch_checkpoint_loads_with_equal_logits(variant, task, tmp_path):
    reference = torch_reference(variant, task, tmp_path)
    ids, mask, types = padded_batch()
    model, report = jm.from_pretrained(tmp_path, task=task, output_loading_info=True)
    assert report.missing == [] and report.mismatched == [] and not report.new_head and report.unexpected == []
    ours = jax_outputs(model, task, ids, mask, types)
    assert_parity(ours, torch_outputs(reference, task, ids, mask, types), task, mask)
    sdpa = TORCH_CLASSES[task].from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    real = real_positions(task, mask)
    assert np.abs(ours[real] - torch_outputs(sdpa, task, ids, mask, types)[real]).max() <= ATOL_REAL


def perturb_jax(model, seed, scale=0.05):
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(model, jax.tree.unflatten(
        treedef, [leaf + scale * jax.random.normal(key, leaf.shape, leaf.dtype) for leaf, key in zip(leaves, keys)]))
    return model


@pytest.mark.parametrize("variant,task", [case for case in CASES if case[1] is not None])
def test_jaxft_save_loads_in_torch_with_equal_logits(variant, task, tmp_path):
    torch_reference(variant, None, tmp_path / "base")
    labels = ["O", "B-x", "I-x", "B-y", "I-y"] if task == jm.TOKEN_CLASSIFICATION else None
    num_labels = 3 if task == jm.SEQUENCE_CLASSIFICATION else None
    model, report = jm.from_pretrained(tmp_path / "base", task=task, id2label=labels, num_labels=num_labels,
                                       seed=3, output_loading_info=True)
    assert report.new_head
    perturb_jax(model, 4)  # the fresh head too, so that a wrong name or layout shows
    jm.save_pretrained(model, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == [model.config.family.class_stem + jm.HEADS[task].architecture_suffix]
    reloaded, info = TORCH_CLASSES[task].from_pretrained(tmp_path / "out", output_loading_info=True,
                                                         attn_implementation="eager")
    assert not info["missing_keys"] and not info["mismatched_keys"] and not info["unexpected_keys"]
    ids, mask, types = padded_batch(seed=1)
    assert_parity(jax_outputs(model, task, ids, mask, types), torch_outputs(reloaded.eval(), task, ids, mask, types),
                  task, mask)
    if labels:
        assert reloaded.config.id2label == dict(enumerate(labels))


@pytest.mark.parametrize("problem_type", ["multi_label_classification", "regression"])
def test_modernbert_sequence_problem_types_round_trip(problem_type, tmp_path):
    torch_reference("modernbert-mean", None, tmp_path / "base")
    num_labels = 1 if problem_type == "regression" else 4
    model = jm.from_pretrained(tmp_path / "base", task=jm.SEQUENCE_CLASSIFICATION, num_labels=num_labels,
                               problem_type=problem_type)
    jm.save_pretrained(model, tmp_path / "out")
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert reloaded.config.problem_type == problem_type
    again = jm.from_pretrained(tmp_path / "out", task=jm.SEQUENCE_CLASSIFICATION)
    assert again.problem_type == problem_type and again.num_labels == num_labels
    ids, mask, types = padded_batch()
    task = jm.SEQUENCE_CLASSIFICATION
    assert_parity(jax_outputs(model, task, ids, mask, types), torch_outputs(reloaded, task, ids, mask, types), task,
                  mask)


def test_parameter_paths_are_hugging_face_names(tmp_path):
    torch_reference("modernbert", jm.TOKEN_CLASSIFICATION, tmp_path / "m")
    torch_reference("eurobert", jm.TOKEN_CLASSIFICATION, tmp_path / "e")
    paths = lambda folder: {".".join(map(str, p)) for p, _ in jm.hf.param_items(
        jm.from_pretrained(folder, task=jm.TOKEN_CLASSIFICATION))}
    modernbert, eurobert = paths(tmp_path / "m"), paths(tmp_path / "e")
    assert {"model.layers.1.attn.Wqkv.kernel", "model.layers.1.mlp.Wi.kernel", "model.layers.0.mlp_norm.scale",
            "model.embeddings.tok_embeddings.embedding", "head.dense.kernel", "classifier.kernel"} <= modernbert
    assert not any(p.startswith("model.layers.0.attn_norm") for p in modernbert)  # layer 0: no attention norm
    assert {"model.embed_tokens.embedding", "model.layers.0.self_attn.k_proj.kernel",
            "model.layers.2.post_attention_layernorm.scale", "model.norm.scale"} <= eurobert


# ---------------------------------------------------------------------------------------------- packed rows

@pytest.mark.parametrize("variant", ["modernbert", "eurobert", "gte"])
def test_packed_rows_equal_unpacked(variant, tmp_path):
    """Three examples packed into one row (segment ids 1, 2, 3; positions restarting at 0) give the same token
    logits as each example alone: attention, windows and rotary positions stay per example."""
    torch_reference(variant, jm.TOKEN_CLASSIFICATION, tmp_path)
    model = jm.from_pretrained(tmp_path, task=jm.TOKEN_CLASSIFICATION)
    ids, mask, types = padded_batch(seed=2, lengths=(13, 9, 6))
    alone = jax_outputs(model, jm.TOKEN_CLASSIFICATION, ids, mask, types)
    width = 32
    row, segments, positions, row_types = (np.zeros((1, width), np.int32) for _ in range(4))
    start = 0
    for example, length in enumerate((13, 9, 6)):
        row[0, start:start + length] = ids[example, :length]
        row_types[0, start:start + length] = types[example, :length]
        segments[0, start:start + length] = example + 1
        positions[0, start:start + length] = np.arange(length)
        start += length
    packed = np.asarray(model(row, (segments > 0).astype(np.int32), row_types, position_ids=positions,
                              segment_ids=segments))
    start = 0
    for example, length in enumerate((13, 9, 6)):
        np.testing.assert_allclose(packed[0, start:start + length], alone[example, :length], atol=ATOL_REAL, rtol=0)
        start += length


def test_sliding_window_reaches_the_attention_entry_point(tmp_path):
    """The sliding layers pass window (local_attention // 2, local_attention // 2): the Pallas splash kernel
    (interpret mode on CPU), which builds no [T, T] mask, gives the xla path's logits."""
    torch_reference("modernbert", jm.TOKEN_CLASSIFICATION, tmp_path)
    model = jm.from_pretrained(tmp_path, task=jm.TOKEN_CLASSIFICATION)
    windows = [layer.attn.window for layer in model.model.layers]
    assert windows == [None, (4, 4), (4, 4)]
    ids, mask, types = padded_batch(seed=3, lengths=(24, 24))
    kernel = jm.from_pretrained(tmp_path, task=jm.TOKEN_CLASSIFICATION, attention="pallas")
    np.testing.assert_allclose(jax_outputs(kernel, jm.TOKEN_CLASSIFICATION, ids, mask, types),
                               jax_outputs(model, jm.TOKEN_CLASSIFICATION, ids, mask, types), atol=1e-5, rtol=0)


def test_long_rows_match_far_beyond_the_window(tmp_path):
    """1024-token rows (positions up to 1023; local_attention 128): rotary tables and windows hold far out."""
    reference = torch_reference("modernbert", None, tmp_path, local_attention=128, max_position_embeddings=1024)
    ids, mask, types = padded_batch(seed=4, lengths=(1024, 700))
    model = jm.from_pretrained(tmp_path)
    assert_parity(jax_outputs(model, None, ids, mask, types), torch_outputs(reference, None, ids, mask, types), None,
                  mask)


# ---------------------------------------------------------------------------------------------- config.json

def test_old_config_fields_read_like_the_new_ones(tmp_path):
    """Hub configs written before transformers 5 (global/local_rope_theta, global_attn_every_n_layers,
    rope_theta at the top level, EuroBERT's clf_pooling) give the same settings as transformers 5's."""
    new = transformers.ModernBertConfig(**{**MODERNBERT, "layer_types": None}, global_attn_every_n_layers=2,
                                        global_rope_theta=5000.0, local_rope_theta=700.0).to_dict()
    old = {k: v for k, v in new.items() if k not in ("layer_types", "rope_parameters")}
    old.update(global_attn_every_n_layers=2, global_rope_theta=5000.0, local_rope_theta=700.0)
    ours_new, ours_old = EncoderConfig.from_hf(new), EncoderConfig.from_hf(old)
    assert ours_new.rotary == ours_old.rotary
    assert ours_new.rotary.layer_windows == (0, 8, 0) and ours_new.rotary.rope_thetas == (5000.0, 700.0, 5000.0)
    euro = transformers.EuroBertConfig(**SMALL, classifier_pooling="mean").to_dict()
    euro_old = {k: v for k, v in euro.items() if k not in ("rope_parameters", "classifier_pooling")}
    euro_old.update(rope_theta=euro["rope_parameters"]["rope_theta"], clf_pooling="mean")
    assert EncoderConfig.from_hf(euro).rotary == EncoderConfig.from_hf(euro_old).rotary


def test_unsupported_settings_and_heads_are_refused_in_one_line(tmp_path):
    gte = transformers.GteConfig(**SMALL).to_dict()
    with pytest.raises(UnsupportedModelError, match=r"x\.json: rope_type 'dynamic' is not supported"):
        EncoderConfig.from_hf({**gte, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, source="x.json")
    euro = transformers.EuroBertConfig(**SMALL).to_dict()
    with pytest.raises(UnsupportedModelError, match="classifier_pooling 'max' is not one of bos, mean, late"):
        EncoderConfig.from_hf({**euro, "classifier_pooling": "max"})
    with pytest.raises(UnsupportedModelError, match="num_attention_heads 4 is not a multiple of num_key_value_heads 3"):
        EncoderConfig.from_hf({**euro, "num_key_value_heads": 3})
    torch_reference("gte", None, tmp_path)
    with pytest.raises(UnsupportedModelError, match="gte has no question-answering head in transformers"):
        jm.from_pretrained(tmp_path, task=jm.QUESTION_ANSWERING)


def test_dropout_overrides_name_the_family_fields():
    modernbert = transformers.ModernBertConfig(**MODERNBERT).to_dict()
    updated = with_dropout(modernbert, 0.2, 0.1)
    assert (updated["embedding_dropout"], updated["mlp_dropout"], updated["attention_dropout"]) == (0.2, 0.2, 0.1)
    settings = EncoderConfig.from_hf(updated)
    assert (settings.rotary.embedding_dropout, settings.rotary.mlp_dropout, settings.attention_dropout) == (0.2, 0.2, 0.1)
    euro = transformers.EuroBertConfig(**SMALL).to_dict()
    assert with_dropout(euro, None, 0.1)["attention_dropout"] == 0.1
    with pytest.raises(UnsupportedModelError, match="model.hidden_dropout: eurobert has no such dropout"):
        with_dropout(euro, 0.1, None)


def test_gte_original_checkpoint_names_load(tmp_path):
    """A GTE checkpoint in the original remote-code names (new.encoder.layer.N.attention.qkv_proj, mlp.up_gate_proj,
    attn_ln, mlp_ln) loads to the same logits as the transformers-named one."""
    from safetensors.torch import save_file

    reference = torch_reference("gte", jm.TOKEN_CLASSIFICATION, tmp_path / "new")
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    old = {}
    for key, value in state.items():
        key = key.replace("gte.", "new.", 1).replace("layers.", "encoder.layer.").replace("self_attn.o_proj",
                                                                                         "attention.o_proj")
        key = key.replace("post_attention_layernorm", "attn_ln").replace("post_mlp_layernorm", "mlp_ln")
        old[key] = value
    for layer in range(3):
        base = f"new.encoder.layer.{layer}."
        for leaf in ("weight", "bias"):
            parts = [old.pop(f"{base}self_attn.{p}_proj.{leaf}") for p in "qkv"]
            old[f"{base}attention.qkv_proj.{leaf}"] = torch.cat(parts)
        up, gate = old.pop(f"{base}mlp.up_proj.weight"), old.pop(f"{base}mlp.gate_proj.weight")
        old[f"{base}mlp.up_gate_proj.weight"] = torch.cat([up, gate])
    (tmp_path / "old").mkdir()
    save_file(old, str(tmp_path / "old" / "model.safetensors"))
    (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    model, report = jm.from_pretrained(tmp_path / "old", task=jm.TOKEN_CLASSIFICATION, output_loading_info=True)
    assert report.missing == [] and report.unexpected == []
    ids, mask, types = padded_batch()
    assert_parity(jax_outputs(model, jm.TOKEN_CLASSIFICATION, ids, mask, types),
                  torch_outputs(reference, jm.TOKEN_CLASSIFICATION, ids, mask, types), jm.TOKEN_CLASSIFICATION, mask)


def test_fused_columns_are_stored_head_major():
    """Wqkv's stored column (head n, part p, dim d) is Hugging Face's column (p, n, d); Wi's (i, p) is HF's (p, i)."""
    order = fused_order(3, 4, 8)
    assert order[:8].tolist() == list(range(8))            # head 0 of q
    assert order[8:16].tolist() == list(range(32, 40))     # head 0 of k
    assert order[24:32].tolist() == list(range(8, 16))     # head 1 of q
    assert fused_order(2, 3, 1).tolist() == [0, 3, 1, 4, 2, 5]


# ---------------------------------------------------------------------------------------------- PEFT

IDS = np.random.RandomState(0).randint(3, 99, (3, 20)).astype(np.int32)
MASK = np.ones_like(IDS)
MASK[1, 12:] = 0
MASK[2, 5:] = 0


def randomize_peft(model, seed=0, scale=0.2):
    key = jax.random.key(seed)
    for path, variable in nnx.to_flat_state(nnx.state(model, PeftParam)):
        key, sub = jax.random.split(key)
        value = variable.get_value()
        noise = jax.random.normal(sub, value.shape)
        variable.set_value(value * (1 + 0.1 * noise) if path[-1] == "lora_magnitude" else value + scale * noise)


def logits(model, ids=IDS, mask=MASK):
    model.eval()
    return np.asarray(model(ids, mask))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_modernbert_lora_adapter_loads_in_pytorch_peft(tmp_path, method):
    """jaxft's default ModernBERT targets (Wqkv|Wo) as a peft adapter: PeftModel.from_pretrained on the PyTorch
    ModernBertForTokenClassification reproduces jaxft's logits; the merged export is a plain ModernBERT model."""
    peft = pytest.importorskip("peft")
    torch_reference("modernbert-mean", None, tmp_path / "base")
    model = jm.from_pretrained(tmp_path / "base", task=jm.TOKEN_CLASSIFICATION, num_labels=5, seed=1)
    apply_peft(model, PeftConfig(method=method, rank=4, alpha=8))
    wrapped = peft_info(model)["wrapped"]
    assert len(wrapped) == 9 and all(w.endswith(("attn.Wqkv", "attn.Wo", "mlp.Wo")) for w in wrapped)
    randomize_peft(model)
    ours = logits(model)
    save_peft_adapter(model, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert "model.layers.0.attn.Wqkv" in config["target_modules"] and config["task_type"] == "TOKEN_CLS"
    base = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "base", num_labels=5)
    adapted = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = adapted(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)).logits.numpy()
    real = MASK.astype(bool)
    assert np.abs(theirs[real] - ours[real]).max() <= 1e-5
    save_merged(model, tmp_path / "merged")
    merged = transformers.ModernBertForTokenClassification.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        plain = merged(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)).logits.numpy()
    assert np.abs(plain[real] - ours[real]).max() <= 1e-5
    np.testing.assert_allclose(logits(from_peft_pretrained(tmp_path / "adapter")), ours, atol=1e-6, rtol=0)


def test_adapter_trained_with_pytorch_peft_on_fused_layers(tmp_path):
    """A peft LoRA trained in PyTorch on Wqkv and Wi (the fused projections) gives PyTorch's logits in jaxft."""
    peft = pytest.importorskip("peft")
    # a token-classification base: ModernBERT's `head` is not in peft's default modules_to_save, so it must
    # come from the checkpoint on both sides
    torch_reference("modernbert", jm.TOKEN_CLASSIFICATION, tmp_path / "base")
    torch.manual_seed(0)
    base = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "base")
    config = peft.LoraConfig(task_type=peft.TaskType.TOKEN_CLS, r=4, lora_alpha=16, init_lora_weights=False,
                             target_modules=["Wqkv", "Wi"], use_dora=True)
    adapted = peft.get_peft_model(base, config)
    adapted.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        theirs = adapted.eval()(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)).logits.numpy()
    ours = logits(from_peft_pretrained(tmp_path / "adapter", base_model=str(tmp_path / "base")))
    real = MASK.astype(bool)
    assert np.abs(theirs[real] - ours[real]).max() <= 1e-5


PEFT_CASES = ([("modernbert", m) for m in ("lora", "dora", "bitfit", "houlsby", "pfeiffer", "prefix")]
              + [("eurobert", "lora"), ("eurobert", "prefix"), ("gte", "houlsby"), ("gte", "bitfit")])


@pytest.mark.parametrize("variant,method", PEFT_CASES)
def test_every_peft_method_trains_only_its_parameters(variant, method, tmp_path):
    """Each method on ModernBERT (fused projections, sliding layers), LoRA and prefixes on EuroBERT (grouped-
    query attention), adapters and BitFit on GTE (post-norm): only the method's parameters and the head move."""
    from jaxft.peft.export import load_trained
    from jaxft.train.optim import make_optimizer
    from jaxft.train.state import split_model
    from jaxft.train.step import init_train_state, make_train_step, token_cross_entropy
    from jaxft.config import base_config

    torch_reference(variant, None, tmp_path)
    model = jm.from_pretrained(tmp_path, task=jm.TOKEN_CLASSIFICATION, num_labels=5, seed=1)
    before = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    plain = logits(model)
    trainable = apply_peft(model, PeftConfig(method=method, rank=4, adapter_size=8, prefix_length=3))
    assert peft_info(model)["wrapped"] or method == "bitfit"
    np.testing.assert_allclose(logits(model), plain, atol=1e-5 if method != "prefix" else 10.0)
    parts, params, frozen, rng = split_model(model, trainable)
    optim = base_config().optim
    optim.warmup_ratio, optim.learning_rate = 0.0, 1e-2
    tx = make_optimizer(optim, 10, params)
    step = make_train_step(parts, tx, lambda m, b: token_cross_entropy(m(b["input_ids"], b["attention_mask"]),
                                                                      b["labels"]))
    labels = np.where(MASK, np.random.RandomState(1).randint(0, 5, IDS.shape), -100).astype(np.int32)
    state = init_train_state(params, rng, tx)
    for _ in range(2):
        state, _ = step(state, frozen, {"input_ids": IDS[None], "attention_mask": MASK[None], "labels": labels[None]})
    load_trained(model, parts, state["params"], frozen)
    after = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    head = {k for k in before if not k.startswith(model.prefix + ".")}  # ModernBERT: `head` and `classifier`
    expected = head | ({k for k in before if k.endswith(".bias")} if method == "bitfit" else set())
    assert changed == expected
    assert np.isfinite(logits(model)).all()
    if method in ("lora", "dora"):
        np.testing.assert_allclose(logits(merge(model)), logits(model), atol=1e-5, rtol=0)


def test_prefix_attention_ignores_padding_on_sliding_layers(tmp_path):
    torch_reference("modernbert", None, tmp_path)
    model = jm.from_pretrained(tmp_path, task=jm.TOKEN_CLASSIFICATION, num_labels=5)
    apply_peft(model, PeftConfig(method="prefix", prefix_length=3))
    randomize_peft(model)
    full = logits(model)
    ids = IDS.copy()
    ids[1, 12:] = 7  # other tokens under the padding: the same outputs at the real positions
    np.testing.assert_allclose(logits(model, ids)[1, :12], full[1, :12], atol=1e-5)
    ids = IDS.copy()
    ids[0, 15:] = 9  # beyond the window of position 3 (+-4) in the sliding layers, within the global one
    assert np.abs(logits(model, ids)[0, :3] - full[0, :3]).max() > 1e-6


# ---------------------------------------------------------------------------------------------- inference tools

def test_quantized_modernbert_equals_its_dequantized_weights(tmp_path):
    """int8 ModernBERT: the quantized modules (the fused Wqkv and Wi included) compute what the dequantized
    float weights compute, and stay close to the float32 model."""
    from jaxft.models.quantized import WEIGHT_ONLY, dequantize_tensors, load_quantized
    from jaxft.quantize import quantize_folder
    from safetensors.numpy import load_file

    reference = torch_reference("modernbert-mean", jm.TOKEN_CLASSIFICATION, tmp_path / "float")
    del reference
    quantize_folder(tmp_path / "float", tmp_path / "int8", embeddings=True, method=WEIGHT_ONLY)
    tensors = load_file(str(tmp_path / "int8" / "model_int8.safetensors"))
    assert tensors["model.layers.0.attn.Wqkv.weight"].dtype == np.int8
    assert tensors["model.embeddings.tok_embeddings.weight"].dtype == np.int8
    quantized = load_quantized(tmp_path / "int8", jm.TOKEN_CLASSIFICATION)
    dequantized, _ = jm.from_tensors(tmp_path / "int8", dequantize_tensors(tensors), jm.TOKEN_CLASSIFICATION)
    real = MASK.astype(bool)
    np.testing.assert_allclose(logits(quantized)[real], logits(dequantized)[real], atol=1e-5, rtol=0)
    full = logits(jm.from_pretrained(tmp_path / "float", task=jm.TOKEN_CLASSIFICATION))
    assert np.abs(logits(quantized)[real] - full[real]).max() < 0.05 * np.abs(full).max()


def test_integrated_gradients_are_complete_on_eurobert(tmp_path, minilm_path):
    from jaxft.explain import Explainer

    torch_reference("eurobert", None, tmp_path, vocab_size=30522)
    model = jm.from_pretrained(tmp_path, task=jm.SEQUENCE_CLASSIFICATION, id2label=["neg", "pos"])
    perturb_jax(model, 0, scale=0.1)
    tokenizer = jm.load_tokenizer(minilm_path)
    result = Explainer(model, tokenizer).explain("the movie was not great but the cast shone", steps=50)
    (explanation,) = result["explanations"]
    delta = explanation["value"] - explanation["baseline_value"]
    assert abs(delta) > 1e-3 and explanation["relative_gap"] <= 1e-3
    assert sum(explanation["token_attributions"]) == pytest.approx(delta, rel=1e-3)


# ---------------------------------------------------------------------------------------------- sharding

SHARDING_SCRIPT = r"""
import json, sys
import jax, numpy as np
import jaxft.models as jm
from jaxft.config import base_config
from jaxft.models.blocks import fused_order
from jaxft.train import sharding
from jaxft.train.state import split_model
model = jm.from_pretrained(sys.argv[1], task="token-classification", num_labels=5)
parts, params, frozen, rng = split_model(model)
config = base_config()
config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 2, 4
mesh = sharding.make_mesh(config.mesh)
sharding.check_model_fits_mesh(model.config, mesh, sharding.parse_rules(config.mesh.rules))
specs = sharding.variable_shardings(parts.templates[0], mesh, sharding.parse_rules(config.mesh.rules))
out = {}
for name, parts_, groups, width in (("attn.Wqkv", 3, 4, 8), ("mlp.Wi", 2, 48, 1)):
    key = f"model.layers.1.{name}.kernel"
    array = jax.device_put(params[key], specs[key])
    order = fused_order(parts_, groups, width)
    shards = []
    for shard in array.addressable_shards:
        columns = order[shard.index[1]]  # the HF columns this device holds
        shards.append(sorted({(int(c) // (groups * width), int(c) % (groups * width) // width) for c in columns}))
    out[name] = {"spec": [list(a) if isinstance(a, tuple) else a for a in specs[key].spec], "shards": shards}
print(json.dumps(out))
"""


def test_fused_projections_shard_along_heads_and_within_glu_halves(tmp_path):
    """On 8 simulated devices (fsdp 2 x tensor 4), every device's block of Wqkv holds q, k and v of the same
    one head (4 heads over 4 tensor shards), and its block of Wi the same columns of both GeGLU halves."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    torch_reference("modernbert", None, tmp_path, vocab_size=100)  # the vocabulary rows split over tensor=4
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    done = subprocess.run([sys.executable, "-c", SHARDING_SCRIPT, str(tmp_path)], env=env, capture_output=True,
                          text=True, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["attn.Wqkv"]["spec"] == ["fsdp", "tensor"] and out["mlp.Wi"]["spec"] == ["fsdp", "tensor"]
    for shard in out["attn.Wqkv"]["shards"]:
        shard = [tuple(column) for column in shard]
        heads = {head for _, head in shard}
        assert len(heads) == 1 and shard == [(part, min(heads)) for part in range(3)]
    for shard in out["mlp.Wi"]["shards"]:
        shard = [tuple(column) for column in shard]
        first = [i for part, i in shard if part == 0]
        assert len(first) == 12 and shard == sorted([(0, i) for i in first] + [(1, i) for i in first])


def test_bare_rotary_encoders_and_their_embedding_tables(tmp_path):
    tables = {"modernbert": "embeddings.tok_embeddings", "eurobert": "embed_tokens", "gte": "embeddings.word_embeddings"}
    for variant, table in tables.items():
        torch_reference(variant, None, tmp_path / variant)
        encoder = jm.from_pretrained(tmp_path / variant)
        assert isinstance(encoder, RotaryEncoder) and not hasattr(encoder, "pooler")  # GteModel has no pooler
        assert jm.heads.word_embeddings(encoder) is find(encoder, table)
        ids, mask, types = padded_batch()
        embeds = jm.heads.word_embeddings(encoder)(jnp.asarray(ids, jnp.int32))
        np.testing.assert_allclose(np.asarray(encoder(ids, mask, types, inputs_embeds=embeds)),
                                   np.asarray(encoder(ids, mask, types)), atol=1e-6, rtol=0)
