"""Logits parity with PyTorch `transformers` for every family and head, in both directions.

Reference models are small random configs built with the PyTorch classes; every parameter is perturbed
away from its initial value (LayerNorm weights are 1 and biases 0 at init, which would hide a mapping
error) before `save_pretrained`. Tolerance: 1e-4 max abs on padded batches (float32), and 1e-5 on the real
(non-pad) positions of token outputs.
"""


import numpy as np
import pytest
import torch
import transformers

from family_checks import jax_outputs, perturb, torch_outputs

import jaxft.models as jm

ATOL_PADDED = 1e-4
ATOL_REAL = 1e-5

SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64)
FAMILY_CONFIGS = {
    "bert": lambda: transformers.BertConfig(**SMALL, type_vocab_size=2),
    "roberta": lambda: transformers.RobertaConfig(**{**SMALL, "max_position_embeddings": 66}, type_vocab_size=1,
                                                  pad_token_id=1, bos_token_id=0, eos_token_id=2),
    "xlm-roberta": lambda: transformers.XLMRobertaConfig(**{**SMALL, "max_position_embeddings": 66},
                                                         type_vocab_size=1, pad_token_id=1, hidden_act="gelu_new"),
    "distilbert": lambda: transformers.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                        max_position_embeddings=64),
    "electra": lambda: transformers.ElectraConfig(**SMALL, embedding_size=16, type_vocab_size=2),
}
TORCH_CLASSES = {
    None: transformers.AutoModel,
    jm.TOKEN_CLASSIFICATION: transformers.AutoModelForTokenClassification,
    jm.SEQUENCE_CLASSIFICATION: transformers.AutoModelForSequenceClassification,
    jm.QUESTION_ANSWERING: transformers.AutoModelForQuestionAnswering,
}
TASK_LABELS = {None: None, jm.TOKEN_CLASSIFICATION: 5, jm.SEQUENCE_CLASSIFICATION: 3, jm.QUESTION_ANSWERING: 2}


def torch_reference(family: str, task, folder, seed=0, **config_overrides):
    config = FAMILY_CONFIGS[family]()
    for key, value in config_overrides.items():
        setattr(config, key, value)
    if TASK_LABELS[task]:
        config.num_labels = TASK_LABELS[task]
    torch.manual_seed(seed)
    model = TORCH_CLASSES[task].from_config(config).eval()
    perturb(model, seed)
    model.save_pretrained(folder)
    return model


def padded_batch(family: str, seed=0):
    rng = np.random.default_rng(seed)
    config = FAMILY_CONFIGS[family]()
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    lengths = [11, 7, 3]
    ids = np.full((3, 11), pad, np.int64)
    mask = np.zeros((3, 11), np.int64)
    types = np.zeros((3, 11), np.int64)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(3, 99, length)
        mask[row, :length] = 1
        if getattr(config, "type_vocab_size", 0) == 2:
            types[row, length // 2:length] = 1
    return ids, mask, types


def assert_parity(ours, theirs, task, mask):
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= ATOL_PADDED
    if task in (None, jm.TOKEN_CLASSIFICATION):
        real = mask.astype(bool)
        assert np.abs(ours[real] - theirs[real]).max() <= ATOL_REAL


@pytest.mark.parametrize("task", list(TORCH_CLASSES))
@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
def test_torch_checkpoint_loads_with_equal_logits(family, task, tmp_path):
    reference = torch_reference(family, task, tmp_path)
    ids, mask, types = padded_batch(family)
    model, report = jm.from_pretrained(tmp_path, task=task, output_loading_info=True)
    assert report.missing == [] and report.mismatched == [] and not report.new_head
    assert_parity(jax_outputs(model, task, ids, mask, types), torch_outputs(reference, task, ids, mask, types),
                  task, mask)


@pytest.mark.parametrize("task", [jm.TOKEN_CLASSIFICATION, jm.SEQUENCE_CLASSIFICATION, jm.QUESTION_ANSWERING])
@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
def test_jaxft_save_loads_in_torch_with_equal_logits(family, task, tmp_path):
    torch_reference(family, None, tmp_path / "base")
    labels = ["O", "B-x", "I-x", "B-y", "I-y"] if task == jm.TOKEN_CLASSIFICATION else None
    num_labels = 3 if task == jm.SEQUENCE_CLASSIFICATION else None
    model, report = jm.from_pretrained(tmp_path / "base", task=task, id2label=labels, num_labels=num_labels,
                                       seed=3, output_loading_info=True)
    assert report.new_head  # a base checkpoint has no head: it is initialised and said so
    jm.save_pretrained(model, tmp_path / "out")
    reloaded, info = TORCH_CLASSES[task].from_pretrained(tmp_path / "out", output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["mismatched_keys"]
    ids, mask, types = padded_batch(family, seed=1)
    assert_parity(jax_outputs(model, task, ids, mask, types), torch_outputs(reloaded.eval(), task, ids, mask, types),
                  task, mask)
    if labels:
        assert reloaded.config.id2label == dict(enumerate(labels))


@pytest.mark.parametrize("problem_type", ["multi_label_classification", "regression"])
def test_sequence_problem_types_round_trip(problem_type, tmp_path):
    torch_reference("bert", None, tmp_path / "base")
    num_labels = 1 if problem_type == "regression" else 4
    model = jm.from_pretrained(tmp_path / "base", task=jm.SEQUENCE_CLASSIFICATION, num_labels=num_labels,
                               problem_type=problem_type)
    jm.save_pretrained(model, tmp_path / "out")
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert reloaded.config.problem_type == problem_type
    again = jm.from_pretrained(tmp_path / "out", task=jm.SEQUENCE_CLASSIFICATION)
    assert again.problem_type == problem_type and again.num_labels == num_labels
    ids, mask, types = padded_batch("bert")
    assert_parity(jax_outputs(model, jm.SEQUENCE_CLASSIFICATION, ids, mask, types),
                  torch_outputs(reloaded, jm.SEQUENCE_CLASSIFICATION, ids, mask, types),
                  jm.SEQUENCE_CLASSIFICATION, mask)


def test_packaged_minilm_matches_torch_hidden_states(minilm_path):
    tokenizer = jm.load_tokenizer(minilm_path)
    texts = ["Empire State Building = ESB . Pretty bad storm here last evening .", "short one",
             "naïve café — 東京 🙂 tokenization"]
    batch = tokenizer(texts, padding=True, return_tensors="np")
    assert batch["input_ids"].shape[1] < 128  # the packaged tokenizer.json's padding to 128 is off
    model = jm.from_pretrained(minilm_path)
    reference = transformers.BertModel.from_pretrained(minilm_path).eval()
    ours = np.asarray(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))
    with torch.no_grad():
        theirs = reference(**{k: torch.tensor(v) for k, v in batch.items()}).last_hidden_state.numpy()
    real = batch["attention_mask"].astype(bool)
    assert np.abs(ours - theirs).max() <= ATOL_PADDED
    assert np.abs(ours[real] - theirs[real]).max() <= ATOL_REAL


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32(tmp_path):
    torch_reference("bert", jm.TOKEN_CLASSIFICATION, tmp_path)
    ids, mask, types = padded_batch("bert")
    full = jax_outputs(jm.from_pretrained(tmp_path, task=jm.TOKEN_CLASSIFICATION), jm.TOKEN_CLASSIFICATION,
                       ids, mask, types)
    half_model = jm.from_pretrained(tmp_path, task=jm.TOKEN_CLASSIFICATION, dtype="bfloat16")
    half = jax_outputs(half_model, jm.TOKEN_CLASSIFICATION, ids, mask, types)
    assert half.dtype == np.float32  # logits come back in float32 for the loss
    assert {str(v.get_value().dtype) for _, v in jm.hf.param_items(half_model)} == {"float32"}
    real = mask.astype(bool)
    assert 0 < np.abs(half[real] - full[real]).max() < 0.1


def test_dropout_only_in_train_mode(tmp_path):
    torch_reference("bert", jm.TOKEN_CLASSIFICATION, tmp_path)
    ids, mask, types = padded_batch("bert")
    model = jm.from_pretrained(tmp_path, task=jm.TOKEN_CLASSIFICATION)
    first, second = (jax_outputs(model, jm.TOKEN_CLASSIFICATION, ids, mask, types) for _ in range(2))
    np.testing.assert_array_equal(first, second)
    model.train()
    noisy_a, noisy_b = (jax_outputs(model, jm.TOKEN_CLASSIFICATION, ids, mask, types) for _ in range(2))
    assert np.abs(noisy_a - first).max() > 1e-3 and np.abs(noisy_a - noisy_b).max() > 1e-3
    model.eval()
    np.testing.assert_array_equal(jax_outputs(model, jm.TOKEN_CLASSIFICATION, ids, mask, types), first)


def test_parameter_paths_follow_hugging_face_names(tmp_path):
    torch_reference("bert", jm.TOKEN_CLASSIFICATION, tmp_path)
    model = jm.from_pretrained(tmp_path, task=jm.TOKEN_CLASSIFICATION)
    paths = {".".join(map(str, p)) for p, _ in jm.hf.param_items(model)}
    assert "bert.encoder.layer.1.attention.self.query.kernel" in paths
    assert "bert.embeddings.LayerNorm.scale" in paths
    assert "classifier.kernel" in paths
    assert set(jm.to_hf_state_dict(model)) == set(transformers.AutoModelForTokenClassification.from_pretrained(
        tmp_path).state_dict())
