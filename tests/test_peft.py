"""PEFT: LoRA/DoRA wrapping, merge parity, peft-format export/import against PyTorch `peft`, only the
intended parameters change for every method, frozen weights bit-identical after a real run, small
checkpoints and resume, sharded LoRA on 8 simulated devices, bfloat16, layer-wise LR decay, FGM/PGD."""

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxft.models as jm
from conftest import tiny_ner_config
from jaxft.config import ConfigError, base_config, validate
from jaxft.peft import PeftConfig, PeftParam, apply_peft, count_params, merge, peft_info
from jaxft.peft.export import (base_fingerprint, from_peft_pretrained, load_peft_adapter, load_trained,
                               load_with_peft, record_base, save_merged, save_peft_adapter, save_peft_state)
from jaxft.train.state import split_model
from jaxft.train.step import init_train_state, make_train_step, token_cross_entropy

REPO = Path(__file__).parent.parent
IDS = np.random.RandomState(0).randint(1000, 20000, (3, 12)).astype(np.int32)
MASK = np.ones_like(IDS)
MASK[1, 8:] = 0
MASK[2, 5:] = 0


def tiny_model(folder, labels=5, **kwargs):
    return jm.from_pretrained(folder, task=jm.TOKEN_CLASSIFICATION, num_labels=labels, seed=1, **kwargs)


def randomize_lora(model, seed=0, scale=0.2):
    """LoRA's B starts at zero; give every adapter a visible effect."""
    key = jax.random.key(seed)
    for _, layer in nnx.iter_modules(model):
        if isinstance(layer, jm.ForTokenClassification):
            continue
        for name in ("lora_b", "adapter_down", "adapter_up", "prefix_key"):
            if hasattr(layer, name):
                key, sub = jax.random.split(key)
                variable = getattr(layer, name)
                variable.set_value(variable.get_value() + scale * jax.random.normal(sub, variable.get_value().shape))
        if hasattr(layer, "lora_magnitude"):
            key, sub = jax.random.split(key)
            m = layer.lora_magnitude
            m.set_value(m.get_value() * (1 + 0.1 * jax.random.normal(sub, m.get_value().shape)))


def logits(model):
    model.eval()
    return np.asarray(model(IDS, MASK))


def flat_params(model, kind=nnx.Param):
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, kind))}


# ---------------------------------------------------------------------------------------------- wrapping

def test_lora_wraps_targets_in_place_and_starts_exactly_at_the_base(tiny_bert):
    model = tiny_model(tiny_bert)
    before, base_params = logits(model), flat_params(model)
    trainable = apply_peft(model, PeftConfig(method="lora", rank=4, alpha=8))
    np.testing.assert_array_equal(logits(model), before)  # B = 0: the very same function
    # Base weights keep their paths and values; LoRA weights sit next to them as PeftParam, not nnx.Param.
    assert flat_params(model).keys() == base_params.keys()
    assert all(np.array_equal(flat_params(model)[k], v) for k, v in base_params.items())
    lora = flat_params(model, PeftParam)
    assert sorted(lora) == sorted(f"bert.encoder.layer.{i}.attention.self.{m}.{ab}" for i in range(2)
                                  for m in ("query", "value") for ab in ("lora_a", "lora_b"))
    assert lora["bert.encoder.layer.0.attention.self.query.lora_a"].shape == (32, 4)
    assert lora["bert.encoder.layer.0.attention.self.query.lora_b"].shape == (4, 32)
    assert jm.to_hf_state_dict(model).keys() == jm.to_hf_state_dict(tiny_model(tiny_bert)).keys()
    train, total = count_params(model, trainable)
    assert train == 4 * 2 * (32 * 4) + (32 * 5 + 5)  # 4 adapted layers + the classifier head
    assert total == sum(v.size for v in base_params.values()) + 4 * 2 * 32 * 4
    _, params, frozen, _ = split_model(model, trainable)
    assert set(params) == set(lora) | {"classifier.kernel", "classifier.bias"}
    assert "bert.encoder.layer.0.attention.self.query.kernel" in frozen


def test_target_rules_and_errors(tiny_bert):
    model = tiny_model(tiny_bert)
    apply_peft(model, PeftConfig(method="lora", target_modules=r"layer\.1\.attention\.self\.(query|key)|intermediate\.dense"))
    assert peft_info(model)["wrapped"] == [
        "bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.1.attention.self.key",
        "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.intermediate.dense"]
    with pytest.raises(ValueError, match="no module matched"):
        apply_peft(tiny_model(tiny_bert), PeftConfig(method="lora", target_modules="q_proj"))
    config = base_config()
    config.peft.method = "lora"
    config.peft.target_modules = "query|(value"
    with pytest.raises(ConfigError, match="peft.target_modules"):
        validate(config)
    config.peft.target_modules = "query"
    config.peft.method = "qlora"
    with pytest.raises(ConfigError, match="peft.method"):
        validate(config)


def test_frozen_weights_get_no_weight_gradient(tiny_bert):
    """In the LoRA train step no matmul produces a base-kernel-shaped gradient (full fine-tuning has 12)."""
    def dot_shapes(jaxpr):
        shapes = []
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                shapes.append(tuple(eqn.outvars[0].aval.shape))
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        shapes += dot_shapes(inner)
        return shapes

    def grad_dots(method):
        model = tiny_model(tiny_bert)
        trainable = apply_peft(model, PeftConfig(method=method)) if method != "none" else nnx.Param
        parts, params, frozen, rng = split_model(model, trainable)

        def loss(params, frozen, rng):
            out = parts.merge(params, frozen, rng, train=True)(IDS, MASK)
            return token_cross_entropy(out, np.zeros_like(IDS))[0]

        return collections.Counter(dot_shapes(jax.make_jaxpr(jax.grad(loss))(params, frozen, rng).jaxpr))

    kernel_shapes = [(32, 32), (32, 64), (64, 32)]
    full, lora = grad_dots("none"), grad_dots("lora")
    assert sum(full[s] for s in kernel_shapes) == 12  # 2 layers x 6 dense kernels
    assert sum(lora[s] for s in kernel_shapes) == 0
    assert lora[(32, 8)] == lora[(8, 32)] == 4        # dA and dB of the 4 adapted layers


def test_low_rank_product_gradient_equals_autodiff():
    """The hand-written LoRA backward (it keeps XLA:CPU from recomputing GELU in transposed order) gives
    autodiff's gradients, for 2-D and 3-D inputs."""
    from jaxft.peft.lora import low_rank_product
    keys = jax.random.split(jax.random.key(3), 4)
    for x_shape in [(7, 16), (2, 5, 16)]:
        x = jax.random.normal(keys[0], x_shape)
        a = jax.random.normal(keys[1], (16, 4))
        b = jax.random.normal(keys[2], (4, 24))
        weight = jax.random.normal(keys[3], x_shape[:-1] + (24,))
        ours = jax.grad(lambda x, a, b: jnp.sum(jnp.sin(low_rank_product(x, a, b, 0.5)) * weight), (0, 1, 2))
        plain = jax.grad(lambda x, a, b: jnp.sum(jnp.sin((x @ a) @ b * 0.5) * weight), (0, 1, 2))
        for got, want in zip(ours(x, a, b), plain(x, a, b)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(low_rank_product(x, a, b, 0.5), (x @ a) @ b * 0.5, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------- merge

@pytest.mark.parametrize("method,rslora", [("lora", False), ("lora", True), ("dora", False)])
def test_merge_is_exact(tiny_bert, method, rslora):
    model = tiny_model(tiny_bert)
    apply_peft(model, PeftConfig(method=method, rank=4, alpha=16, rslora=rslora,
                                 target_modules="query|key|value|dense"))
    randomize_lora(model)
    unmerged = logits(model)
    assert np.abs(unmerged - logits(tiny_model(tiny_bert))).max() > 1e-2  # the adapters matter
    merged = merge(model)
    assert not flat_params(merged, PeftParam) and flat_params(model, PeftParam)  # a copy; the original kept
    np.testing.assert_allclose(logits(merged), unmerged, atol=1e-5, rtol=0)
    scale = 16 / (2.0 if rslora else 4.0)
    layer = model.bert.encoder.layer[0].attention.self.query
    assert layer.scaling == scale


def test_merged_export_loads_in_transformers(tiny_bert, tmp_path):
    torch = pytest.importorskip("torch")
    import transformers

    model = tiny_model(tiny_bert)
    apply_peft(model, PeftConfig(method="dora", rank=4, alpha=8))
    randomize_lora(model)
    save_merged(model, tmp_path / "merged")
    torch_model = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        theirs = torch_model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)).logits.numpy()
    np.testing.assert_allclose(theirs, logits(model), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- peft format

@pytest.mark.parametrize("method,rslora", [("lora", False), ("dora", True)])
def test_peft_adapter_round_trip_with_pytorch_peft(tiny_bert, tmp_path, method, rslora):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    import transformers
    from safetensors.numpy import load_file

    model = tiny_model(tiny_bert)
    apply_peft(model, PeftConfig(method=method, rank=4, alpha=8, rslora=rslora,
                                 target_modules="query|value|intermediate.dense"))
    randomize_lora(model)
    ours = logits(model)
    save_peft_adapter(model, tmp_path / "adapter", base_model=str(tiny_bert))
    keys = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    a = keys["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"]
    assert a.shape == (4, 32)
    np.testing.assert_array_equal(a, np.asarray(model.bert.encoder.layer[0].attention.self.query.lora_a[...]).T)
    assert keys["base_model.model.bert.encoder.layer.1.intermediate.dense.lora_B.weight"].shape == (64, 4)
    assert "base_model.model.classifier.weight" in keys
    assert ("base_model.model.bert.encoder.layer.0.attention.self.query.lora_magnitude_vector" in keys) == (
        method == "dora")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["use_rslora"], config["use_dora"]) == (4, 8, rslora,
                                                                                              method == "dora")

    base = transformers.AutoModelForTokenClassification.from_pretrained(tiny_bert, num_labels=5)
    theirs_model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = theirs_model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)
    # ... and back: the adapter onto a fresh base gives our logits again.
    np.testing.assert_allclose(logits(from_peft_pretrained(tmp_path / "adapter")), ours, atol=1e-6, rtol=0)


def test_import_adapter_trained_with_pytorch_peft(tiny_bert, tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    import transformers

    torch.manual_seed(0)
    base = transformers.AutoModelForTokenClassification.from_pretrained(tiny_bert, num_labels=3)
    config = peft.LoraConfig(task_type=peft.TaskType.TOKEN_CLS, r=4, lora_alpha=16, init_lora_weights=False,
                             target_modules=["query", "key", "value", "dense"], rank_pattern={"key": 2},
                             alpha_pattern={"value": 4})
    theirs_model = peft.get_peft_model(base, config)
    with torch.no_grad():  # a "trained" head too
        theirs_model.base_model.model.classifier.modules_to_save["default"].weight.normal_(0, 0.5)
    theirs_model.save_pretrained(tmp_path / "adapter")
    theirs_model.eval()
    with torch.no_grad():
        theirs = theirs_model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)).logits.numpy()

    ours_model = from_peft_pretrained(tmp_path / "adapter", base_model=str(tiny_bert))
    info = peft_info(ours_model)
    assert len(info["wrapped"]) == 2 * 6  # query, key, value and the three "dense" layers of each layer
    assert ours_model.bert.encoder.layer[0].attention.self.key.rank == 2
    assert ours_model.bert.encoder.layer[0].attention.self.value.alpha == 4
    np.testing.assert_allclose(logits(ours_model), theirs, atol=1e-5, rtol=0)
    # Onto a model built by hand (e.g. to continue training it), the same numbers.
    again = load_peft_adapter(tiny_model(tiny_bert, labels=3), tmp_path / "adapter")
    np.testing.assert_allclose(logits(again), theirs, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- methods

def train_steps(model, trainable, steps=3):
    parts, params, frozen, rng = split_model(model, trainable)
    config = base_config()
    config.optim.warmup_ratio = 0.0
    config.optim.learning_rate = 1e-2
    from jaxft.train.optim import make_optimizer
    tx = make_optimizer(config.optim, 10, params)
    step = make_train_step(parts, tx, lambda m, b: token_cross_entropy(m(b["input_ids"], b["attention_mask"]),
                                                                      b["labels"]))
    labels = np.random.RandomState(1).randint(0, 5, IDS.shape).astype(np.int32)
    batch = {"input_ids": IDS[None], "attention_mask": MASK[None], "labels": np.where(MASK, labels, -100)[None]}
    state = init_train_state(params, rng, tx)
    for _ in range(steps):
        state, _ = step(state, frozen, batch)
    return load_trained(model, parts, state["params"], frozen)


BIAS_COUNT = 2 * (6 + 2) + 1  # per layer 6 dense + 2 LayerNorm biases; the embeddings' LayerNorm
METHOD_CASES = {
    # method config -> (base nnx.Param paths expected to change, PeftParam count)
    "lora": (dict(method="lora"), lambda p: p.startswith("classifier."), 8),
    "dora": (dict(method="dora"), lambda p: p.startswith("classifier."), 12),
    "bitfit": (dict(method="bitfit"), lambda p: p.endswith(".bias") or p.startswith("classifier."), 0),
    "houlsby": (dict(method="houlsby", adapter_size=8), lambda p: p.startswith("classifier."), 16),
    "pfeiffer": (dict(method="pfeiffer", adapter_size=8), lambda p: p.startswith("classifier."), 8),
    "prefix": (dict(method="prefix", prefix_length=4), lambda p: p.startswith("classifier."), 4),
    "freeze": (dict(method="none", freeze=r"embeddings|layer\.0\."),
               lambda p: not ("embeddings" in p or "layer.0." in p), 0),
}


@pytest.mark.parametrize("case", sorted(METHOD_CASES))
def test_only_intended_parameters_change(tiny_bert, case):
    settings, expected, peft_count = METHOD_CASES[case]
    model = tiny_model(tiny_bert)
    before = flat_params(model)
    trainable = apply_peft(model, PeftConfig(**settings))
    peft_before = flat_params(model, PeftParam)
    assert len(peft_before) == peft_count
    train_steps(model, trainable)
    after = flat_params(model)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {k for k in before if expected(k)}, sorted(changed ^ {k for k in before if expected(k)})[:4]
    peft_after = flat_params(model, PeftParam)
    assert all(not np.array_equal(peft_before[k], peft_after[k]) for k in peft_before)
    if case == "bitfit":
        assert sum(k.endswith(".bias") and k.startswith("bert.") for k in changed) == BIAS_COUNT
    if case in ("houlsby", "pfeiffer"):
        wrapped = peft_info(model)["wrapped"]
        assert len(wrapped) == (4 if case == "houlsby" else 2)
        assert all(w.endswith("output.dense") for w in wrapped)
        assert any("attention.output" in w for w in wrapped) == (case == "houlsby")


@pytest.mark.parametrize("method", ["houlsby", "prefix"])
def test_unmergeable_methods_export_and_reload(tiny_bert, tmp_path, method):
    model = tiny_model(tiny_bert)
    before = logits(model)
    apply_peft(model, PeftConfig(method=method, adapter_size=8, prefix_length=4))
    randomize_lora(model)
    ours = logits(model)
    assert np.abs(ours - before).max() > 1e-3
    with pytest.raises(ValueError, match="cannot merge"):
        merge(model)
    save_peft_state(model, tmp_path / "export")
    np.testing.assert_array_equal(logits(load_with_peft(tmp_path / "export", task=jm.TOKEN_CLASSIFICATION)), ours)


def test_prefix_attention_ignores_padding_and_sees_prefixes(tiny_bert):
    model = tiny_model(tiny_bert)
    apply_peft(model, PeftConfig(method="prefix", prefix_length=3))
    full = logits(model)
    ids, mask = IDS.copy(), MASK.copy()
    ids[1, 8:] = 7  # other tokens under the padding: same outputs on real positions
    np.testing.assert_allclose(np.asarray(model(ids, mask))[1, :8], full[1, :8], atol=1e-6)
    assert model.bert.encoder.layer[0].attention.self.prefix_key.get_value().shape == (3, 32)


# ---------------------------------------------------------------------------------------------- bf16, LLRD, FGM

def test_lora_in_bfloat16(tiny_bert):
    model32 = tiny_model(tiny_bert)
    model16 = tiny_model(tiny_bert, dtype="bfloat16")
    for model in (model32, model16):
        apply_peft(model, PeftConfig(method="lora", rank=4))
        randomize_lora(model)
    out32, out16 = logits(model32), logits(model16)
    assert out16.dtype == np.float32  # heads return float32 logits
    assert np.abs(out16 - out32).max() < 0.05 * np.abs(out32).max()
    model = tiny_model(tiny_bert, dtype="bfloat16")
    trainable = apply_peft(model, PeftConfig(method="lora"))
    lora_before = flat_params(model, PeftParam)
    train_steps(model, trainable, steps=2)
    lora_after = flat_params(model, PeftParam)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in lora_after.values())
    assert all(not np.array_equal(lora_before[k], lora_after[k]) for k in lora_before)


def first_updates(paths: list[str], **optim) -> dict:
    """The first AdamW update of params of ones under gradients of 0.7 (no warmup, decay or clipping),
    with the given optim.* settings."""
    from jaxft.train.optim import make_optimizer

    config = base_config().optim
    config.warmup_ratio, config.weight_decay, config.clip_norm, config.schedule = 0.0, 0.0, 0.0, "constant"
    for key, value in optim.items():
        config[key] = value
    params = {p: jnp.ones((3,)) for p in paths}
    tx = make_optimizer(config, 10, params)
    updates, _ = tx.update({p: jnp.full((3,), 0.7) for p in paths}, tx.init(params), params)
    return {p: np.asarray(u) for p, u in updates.items()}


def test_layer_wise_lr_decay_scales_updates():
    from jaxft.train.optim import update_factors

    paths = ["bert.embeddings.word_embeddings.embedding", "bert.encoder.layer.0.attention.self.query.kernel",
             "bert.encoder.layer.1.output.dense.kernel", "classifier.kernel"]
    factors = update_factors(dict.fromkeys(paths), layer_decay=0.5, loraplus_lr_ratio=1.0)
    assert [factors[p] for p in paths] == [0.125, 0.25, 0.5, 1.0]
    plain, decayed = first_updates(paths, layer_decay=1.0), first_updates(paths, layer_decay=0.5)
    for p in paths:
        np.testing.assert_allclose(decayed[p], factors[p] * plain[p], rtol=1e-6)


def test_loraplus_speeds_up_only_lora_b():
    paths = ["bert.encoder.layer.0.attention.self.query.lora_a", "bert.encoder.layer.0.attention.self.query.lora_b",
             "classifier.kernel"]
    plain, plus = first_updates(paths, loraplus_lr_ratio=1.0), first_updates(paths, loraplus_lr_ratio=16.0)
    for p, factor in zip(paths, (1.0, 16.0, 1.0)):
        np.testing.assert_allclose(plus[p], factor * plain[p], rtol=1e-6)
    assert float(np.abs(plain[paths[1]]).min()) > 0


@pytest.mark.parametrize("method", ["fgm", "pgd"])
def test_adversarial_loss_adds_a_worse_perturbed_loss(tiny_bert_no_dropout, method):
    from jaxft.train.adversarial import adversarial_loss

    config = base_config().train
    config.adversarial, config.adversarial_epsilon = method, 1.0
    model = tiny_model(tiny_bert_no_dropout)
    labels = np.where(MASK, np.random.RandomState(1).randint(0, 5, IDS.shape), -100).astype(np.int32)
    batch = {"input_ids": IDS, "attention_mask": MASK, "labels": labels}
    clean_fn = lambda m, b: token_cross_entropy(m(b["input_ids"], b["attention_mask"]), b["labels"])
    table_before = np.asarray(model.bert.embeddings.word_embeddings.embedding.get_value())
    clean, count = clean_fn(model, batch)
    total, count2 = adversarial_loss(clean_fn, config)(model, batch)
    assert int(count) == int(count2)
    adv = float(total) - float(clean)
    assert adv > float(clean)  # the perturbed loss is higher than the clean one
    np.testing.assert_array_equal(np.asarray(model.bert.embeddings.word_embeddings.embedding.get_value()),
                                  table_before)  # the perturbation never touches the stored parameters
    parts, params, frozen, rng = split_model(model, apply_peft(model, PeftConfig(method="lora")))

    def loss(params):
        return adversarial_loss(clean_fn, config)(parts.merge(params, frozen, rng, train=True), batch)[0]

    grads = jax.jit(jax.grad(loss))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads.values())


def test_resume_refuses_another_base(tmp_path):
    frozen = {"a": np.ones(3, np.float32)}
    record_base(tmp_path, frozen, base_model="m1", method="lora", resuming=False)
    record_base(tmp_path, frozen, base_model="m1-copy", method="lora", resuming=True)  # same weights: fine
    with pytest.raises(ConfigError, match="use a new workdir"):
        record_base(tmp_path, {"a": np.zeros(3, np.float32)}, base_model="m2", method="lora", resuming=True)
    assert base_fingerprint(frozen) != base_fingerprint({"a": np.ones(3, np.float64)})


# ---------------------------------------------------------------------------------------------- real runs

def run_ner(workdir, model, data, **overrides):
    from jaxft.tasks.run import run
    config = tiny_ner_config(model, data, **{"train.num_epochs": 0, "train.max_steps": 8, "train.eval_every": 4,
                                             "train.log_every": 1,
                                             **overrides})
    return run(config, workdir)


def dir_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def lora_and_full_runs(tmp_path_factory, tiny_bert, small_ner_file):
    root = tmp_path_factory.mktemp("peft-runs")
    lora = run_ner(root / "lora", tiny_bert, small_ner_file, **{"peft.method": "lora", "peft.rank": 4})
    full = run_ner(root / "full", tiny_bert, small_ner_file)
    return root, lora, full


def test_lora_run_keeps_frozen_weights_bit_identical_and_exports(lora_and_full_runs, tiny_bert):
    import torch
    import transformers
    from safetensors.numpy import load_file

    root, lora, full = lora_and_full_runs
    assert lora["peft_method"] == "lora" and lora["exports"] == ["export", "export_adapter"]
    labels = json.loads((root / "lora" / "export_adapter" / "labels.json").read_text())
    assert lora["trainable_params"] == 4 * 2 * 32 * 4 + 33 * len(labels) < 0.02 * lora["total_params"]
    assert full["trainable_params"] == full["total_params"]
    base = load_file(str(tiny_bert / "model.safetensors"))
    exported = load_file(str(root / "lora" / "export" / "model.safetensors"))
    targets = ("attention.self.query.weight", "attention.self.value.weight")
    for key, value in exported.items():
        if key.startswith("classifier."):
            continue
        original = base[key.removeprefix("bert.")]  # the base folder is a BertModel: no "bert." prefix
        if key.endswith(targets):
            assert not np.array_equal(value, original), key  # LoRA merged in
        else:
            np.testing.assert_array_equal(value, original, err_msg=key)  # frozen: bit-identical
    # The merged export and the adapter on the base are the same model, in PyTorch too.
    peft = pytest.importorskip("peft")
    ids = torch.tensor(IDS)
    merged = transformers.AutoModelForTokenClassification.from_pretrained(root / "lora" / "export").eval()
    base_model = transformers.AutoModelForTokenClassification.from_pretrained(tiny_bert, num_labels=len(labels))
    adapted = peft.PeftModel.from_pretrained(base_model, root / "lora" / "export_adapter").eval()
    with torch.no_grad():
        a, b = merged(input_ids=ids).logits.numpy(), adapted(input_ids=ids).logits.numpy()
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_lora_checkpoint_is_small_and_resume_matches(lora_and_full_runs, tiny_bert, small_ner_file, tmp_path):
    root, lora, full = lora_and_full_runs
    lora_ckpt, full_ckpt = dir_bytes(root / "lora" / "checkpoints"), dir_bytes(root / "full" / "checkpoints")
    assert lora_ckpt < 0.1 * full_ckpt, (lora_ckpt, full_ckpt)
    assert json.loads((root / "lora" / "peft_base.json").read_text())["base_model"] == str(tiny_bert)
    # Stop half-way and resume onto the base: the same train losses and the same result as the straight run.
    overrides = {"peft.method": "lora", "peft.rank": 4}
    stopped = run_ner(tmp_path, tiny_bert, small_ner_file, **overrides, **{"train.stop_after_step": 4})
    assert stopped == {"stopped_at_step": 4}
    resumed = run_ner(tmp_path, tiny_bert, small_ner_file, **overrides)

    def losses(folder):
        lines = [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]
        return {line["step"]: line["loss"] for line in lines if line["split"] == "train"}

    assert losses(tmp_path) == losses(root / "lora")
    assert resumed["test"]["f1"] == lora["test"]["f1"]
    assert resumed["dev"] == lora["dev"]


SHARDING_SCRIPT = r"""
import json, sys
import jax
import jaxft.models as jm
from jaxft.config import base_config
from jaxft.peft import PeftConfig, apply_peft
from jaxft.train import sharding
from jaxft.train.state import split_model
model = jm.from_pretrained(sys.argv[1], task="token-classification", num_labels=5)
trainable = apply_peft(model, PeftConfig(method="lora", rank=4, target_modules="query|intermediate.dense|output.dense"))
parts, params, frozen, rng = split_model(model, trainable)
config = base_config()
config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 2, 4
mesh = sharding.make_mesh(config.mesh)
specs = sharding.variable_shardings(parts.templates[0], mesh, sharding.parse_rules(config.mesh.rules))
print(json.dumps({k: [list(a) if isinstance(a, tuple) else a for a in v.spec] for k, v in specs.items()}))
"""


def test_lora_is_sharded_and_matches_one_device(tiny_bert, small_ner_file, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    done = subprocess.run([sys.executable, "-c", SHARDING_SCRIPT, str(tiny_bert)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    specs = json.loads(done.stdout.strip().splitlines()[-1])
    layer = "bert.encoder.layer.0."
    assert specs[layer + "attention.self.query.lora_a"] == ["fsdp", None]       # like the kernel's rows
    assert specs[layer + "attention.self.query.lora_b"] == [None, "tensor"]     # like the kernel's columns
    assert specs[layer + "intermediate.dense.lora_b"] == [None, "tensor"]
    assert specs[layer + "output.dense.lora_a"] == ["tensor", None]             # mlp rows
    assert specs[layer + "output.dense.lora_b"] == [None, "fsdp"]

    def train(workdir, devices, *mesh):
        command = [sys.executable, "-m", "jaxft.main", "--config", "configs/ner.py", "--workdir", str(workdir),
                   f"--config.model.name_or_path={tiny_bert}", f"--config.data.train_file={small_ner_file}",
                   "--config.data.max_length=64", "--config.train.batch_size=8", "--config.train.max_steps=6",
                   "--config.train.log_every=1", "--config.train.eval_every=6", "--config.optim.learning_rate=1e-3",
                   "--config.train.progress_bar=False", "--config.peft.method=lora", "--config.peft.dropout=0.1",
                   *mesh]
        run_env = {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        result = subprocess.run(command, cwd=REPO, env=run_env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return {line["step"]: line["loss"] for line in lines if line["split"] == "train"}

    one = train(tmp_path / "one", 1)
    eight = train(tmp_path / "eight", 8, "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2")
    assert sorted(one) == sorted(eight) == list(range(1, 7))
    assert max(abs(one[s] - eight[s]) for s in one) < 1e-5


def test_ner_lora_recipe_trains_under_two_percent_of_minilm(minilm_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("ner_lora", REPO / "configs" / "ner_lora.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    config = recipe.get_config()
    validate(config)
    model = jm.from_pretrained(minilm_path, task=jm.TOKEN_CLASSIFICATION, num_labels=21)
    from jaxft.peft import run as peft_run
    trainable = peft_run.setup(config, model)
    train, total = count_params(model, trainable)
    assert train / total < 0.02  # head included


def test_head_lr_ratio_speeds_up_only_pooler_and_head():
    paths = ["bert.embeddings.word_embeddings.embedding", "bert.encoder.layer.0.output.dense.kernel",
             "bert.encoder.layer.1.output.LayerNorm.scale", "bert.pooler.dense.kernel", "classifier.kernel",
             "classifier.bias"]
    plain, fast = first_updates(paths, head_lr_ratio=1.0), first_updates(paths, head_lr_ratio=20.0)
    for p, factor in zip(paths, (1.0, 1.0, 1.0, 20.0, 20.0, 20.0)):
        np.testing.assert_allclose(fast[p], factor * plain[p], rtol=1e-6)
    assert float(np.abs(plain[paths[0]]).min()) > 0
    config = base_config()
    config.optim.head_lr_ratio = 0.0
    with pytest.raises(ConfigError, match=r"optim.head_lr_ratio must be > 0 .*got 0.0"):
        validate(config)
