"""Masked-LM pretraining: head parity with PyTorch (BERT, RoBERTa, DistilBERT, ELECTRA generator), masking
statistics, exact resume, and an export that loads in AutoModelForMaskedLM and in the fine-tuning recipes."""

import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import jaxft.models as jm
from test_model_parity import FAMILY_CONFIGS, padded_batch, perturb

REPO = Path(__file__).parent.parent
MLM_FAMILIES = ["bert", "roberta", "distilbert", "electra"]


def torch_mlm(family: str, folder: Path, seed: int = 0, **overrides):
    config = FAMILY_CONFIGS[family]()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = transformers.AutoModelForMaskedLM.from_config(config).eval()
    perturb(model, seed)  # ties survive: the perturbed embedding is the decoder
    model.save_pretrained(folder)
    return model


def torch_logits(model, ids, mask, types):
    kwargs = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        kwargs["token_type_ids"] = torch.tensor(types)
    with torch.no_grad():
        return model(**kwargs).logits.numpy()


def jax_logits(model, ids, mask, types, **kwargs):
    return np.asarray(model(ids.astype(np.int32), mask.astype(np.int32), types.astype(np.int32), **kwargs))


@pytest.mark.parametrize("family", MLM_FAMILIES)
def test_masked_lm_logits_match_torch(family, tmp_path):
    reference = torch_mlm(family, tmp_path)
    model, report = jm.from_pretrained(tmp_path, task=jm.MASKED_LM, output_loading_info=True)
    assert report.missing == [] and report.unexpected == [] and not report.new_head
    ids, mask, types = padded_batch(family)
    ours, theirs = jax_logits(model, ids, mask, types), torch_logits(reference, ids, mask, types)
    assert ours.shape == theirs.shape == (*ids.shape, 99)
    assert np.abs(ours - theirs).max() <= 1e-4
    # logits at chosen positions only (what the training loss uses) are the same numbers
    positions = np.array([[0, 3, 5], [1, 2, 6], [0, 1, 2]], np.int32)
    gathered = jax_logits(model, ids, mask, types, masked_positions=positions)
    np.testing.assert_allclose(gathered, np.take_along_axis(ours, positions[..., None], axis=1), atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_masked_lm_saves_in_hf_layout(family, tmp_path):
    torch_mlm(family, tmp_path / "ref")
    model = jm.from_pretrained(tmp_path / "ref", task=jm.MASKED_LM)
    jm.save_pretrained(model, tmp_path / "out")
    reloaded, info = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"] and not info["unexpected_keys"]
    ids, mask, types = padded_batch(family, seed=1)
    assert np.abs(jax_logits(model, ids, mask, types) - torch_logits(reloaded.eval(), ids, mask, types)).max() <= 1e-4
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"][0].endswith("ForMaskedLM")


def test_untied_decoder_round_trips(tmp_path):
    reference = torch_mlm("bert", tmp_path / "ref", tie_word_embeddings=False)
    model, report = jm.from_pretrained(tmp_path / "ref", task=jm.MASKED_LM, output_loading_info=True)
    assert not report.missing and not model.tied
    ids, mask, types = padded_batch("bert")
    assert np.abs(jax_logits(model, ids, mask, types) - torch_logits(reference, ids, mask, types)).max() <= 1e-4
    jm.save_pretrained(model, tmp_path / "out")
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "out").eval()
    assert np.abs(jax_logits(model, ids, mask, types) - torch_logits(reloaded, ids, mask, types)).max() <= 1e-4


def test_base_checkpoint_gets_a_fresh_head_and_keeps_its_pooler(tmp_path):
    base = transformers.BertModel(FAMILY_CONFIGS["bert"]())
    base.save_pretrained(tmp_path / "base")
    model, report = jm.from_pretrained(tmp_path / "base", task=jm.MASKED_LM, output_loading_info=True)
    assert report.new_head and all(k.startswith("cls.predictions.") for k in report.missing)
    assert report.unexpected == []  # the pooler is kept (and exported), not dropped
    jm.save_pretrained(model, tmp_path / "out")
    classifier, info = jm.from_pretrained(tmp_path / "out", task=jm.SEQUENCE_CLASSIFICATION, num_labels=2,
                                          output_loading_info=True)
    assert [k for k in info.missing if "pooler" in k] == []  # fine-tuning starts from the base's pooler
    assert all(k.startswith("cls.predictions.") for k in info.unexpected)  # the MLM head is dropped


# ---------------------------------------------------------------------------------------------- masking

from jaxft.data import masking  # noqa: E402


def random_rows(rows=256, length=128, seed=0):
    """Token ids away from the special ids, [CLS] first, [SEP] + padding at the end, ~1.6 tokens a word."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, (rows, length)).astype(np.int32)
    special = np.zeros((rows, length), np.int32)
    ends = rng.integers(length // 2, length, rows)
    for r, end in enumerate(ends):
        ids[r, 0], ids[r, end] = 101, 102
        ids[r, end + 1:] = 0
        special[r, 0] = 1
        special[r, end:] = 1
    word_start = (rng.random((rows, length)) < 0.6).astype(np.int32)
    word_start[special == 1] = 1
    word_start[:, 1] = 1
    return ids, special, word_start


def binomial_ok(successes, trials, p, sigmas=5.0):
    return abs(successes / trials - p) <= sigmas * math.sqrt(p * (1 - p) / trials)


REPLACEMENTS = np.arange(999, 30522, dtype=np.int32)  # stands in for the non-special vocabulary


def run_mask(ids, special, word_start, seed=0, **kwargs):
    import jax
    out = masking.mask_tokens(jax.random.key(seed), ids, special, word_start, mask_id=103,
                              replacement_ids=REPLACEMENTS, **kwargs)
    return np.asarray(out.input_ids), np.asarray(out.labels)


def test_masking_rates_follow_bert():
    ids, special, word_start = random_rows()
    corrupted, labels = run_mask(ids, special, word_start)
    selected = labels >= 0
    maskable = int((special == 0).sum())
    assert not selected[special == 1].any()                       # specials and padding never selected
    np.testing.assert_array_equal(labels[selected], ids[selected])  # targets are the original tokens
    np.testing.assert_array_equal(corrupted[~selected], ids[~selected])  # nothing else changes
    n = int(selected.sum())
    assert binomial_ok(n, maskable, 0.15)
    to_mask = int((corrupted[selected] == 103).sum())
    kept = int((corrupted[selected] == ids[selected]).sum())
    randomised = n - to_mask - kept
    assert binomial_ok(to_mask, n, 0.8) and binomial_ok(randomised, n, 0.1) and binomial_ok(kept, n, 0.1, 5.5)
    assert np.isin(corrupted[selected & (corrupted != 103) & (corrupted != ids)], REPLACEMENTS).all()


def test_masking_is_a_function_of_the_key():
    ids, special, word_start = random_rows(rows=8)
    first, again, other = (run_mask(ids, special, word_start, seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert (first[1] != other[1]).any()


def test_whole_word_masking_takes_every_sub_token_of_a_word():
    ids, special, word_start = random_rows()
    corrupted, labels = run_mask(ids, special, word_start, whole_word=True)
    selected = labels >= 0
    words_seen = words_selected = 0
    for r in range(ids.shape[0]):
        word = np.cumsum(word_start[r])
        for w in np.unique(word[special[r] == 0]):
            members = (word == w) & (special[r] == 0)
            assert selected[r, members].all() or not selected[r, members].any()
            words_seen += 1
            words_selected += int(selected[r, members].all())
    assert binomial_ok(words_selected, words_seen, 0.15)
    assert not selected[special == 1].any()


@pytest.mark.parametrize("whole_word", [False, True])
def test_cap_keeps_at_most_that_many_whole_words(whole_word):
    ids, special, word_start = random_rows(rows=64)
    _, labels = run_mask(ids, special, word_start, probability=0.5, whole_word=whole_word, cap=7)
    selected = labels >= 0
    assert selected.sum(-1).max() <= 7 and selected.sum(-1).min() >= 4
    if whole_word:
        for r in range(ids.shape[0]):
            word = np.cumsum(word_start[r])
            for w in np.unique(word[selected[r]]):
                members = (word == w) & (special[r] == 0)
                assert selected[r, members].all()


def test_prediction_slots_hold_every_target_in_order():
    labels = np.full((2, 10), -100, np.int32)
    labels[0, [1, 4, 9]] = [7, 8, 9]
    positions, targets = (np.asarray(x) for x in masking.prediction_slots(labels, 4))
    assert positions[0, :3].tolist() == [1, 4, 9] and targets[0].tolist() == [7, 8, 9, -100]
    assert (targets[1] == -100).all() and len(set(positions[1].tolist())) == 4


def test_encoded_lines_mark_specials_and_word_starts(tiny_bert):
    from jaxft.tasks.mlm import encode_lines
    tokenizer = jm.load_tokenizer(tiny_bert)
    rows = encode_lines(tokenizer, ["Unbelievably good movie", "short"], max_length=6)
    pieces = [tokenizer.convert_ids_to_tokens(r["input_ids"].tolist()) for r in rows]
    assert pieces[0] == ["[CLS]", "un", "##bel", "##ie", "##va", "[SEP]"]  # long lines continue, not cut
    assert pieces[1][0] == "[CLS]" and pieces[-1] == ["[CLS]", "short", "[SEP]"]
    assert rows[0]["special_mask"].tolist() == [1, 0, 0, 0, 0, 1]
    assert rows[0]["word_start"].tolist() == [1, 1, 0, 0, 0, 1]


# ---------------------------------------------------------------------------------------------- runs

def corpus(folder: Path) -> Path:
    words = ("the film is a quiet triumph of unexpectedly graceful storytelling , though its second act "
             "drags and the dialogue rarely rises above serviceable").split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, rng.integers(4, 30))) for _ in range(80)]
    path = folder / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def mlm_config(model, text, **overrides):
    from conftest import recipe_config
    defaults = {"data.max_length": 32, "train.batch_size": 8, "train.num_epochs": 2, "optim.learning_rate": 1e-3,
                "mlm.source_split": "all", "mlm.heldout_fraction": 0.1, "train.checkpoint_every": 3}
    return recipe_config("mlm", model, text, **{**defaults, **overrides})


def checkpoint_params(workdir: Path) -> dict:
    import orbax.checkpoint as ocp
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    restored = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(steps[-1]) / "state")
    return {k: np.asarray(v) for k, v in restored["params"].items()}, steps[-1]


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory, tiny_bert):
    from jaxft.tasks.run import run
    folder = tmp_path_factory.mktemp("mlm")
    results = run(mlm_config(tiny_bert, corpus(folder)), folder / "run")
    return folder, results


def test_pretraining_lowers_held_out_perplexity(mlm_run):
    folder, results = mlm_run
    assert results["perplexity_after"] < results["perplexity_before"]
    assert results["dev"]["masked_tokens"] > 0 and results["heldout_lines"] == 8
    lines = [json.loads(l) for l in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    dev = [l for l in lines if l["split"] == "dev"]
    assert dev[0]["step"] == 0 and dev[0]["perplexity"] == results["perplexity_before"]
    best = min(dev[1:], key=lambda l: l["perplexity"])  # the export is the lowest-perplexity checkpoint
    assert best["step"] == results["best_step"] and best["perplexity"] == pytest.approx(results["perplexity_after"])


def test_resume_after_stop_equals_uninterrupted(mlm_run, tiny_bert, tmp_path):
    from jaxft.tasks.run import run
    folder, results = mlm_run
    text = folder / "corpus.txt"
    stopped = run(mlm_config(tiny_bert, text, **{"train.stop_after_step": 5}), tmp_path / "run")
    assert stopped == {"stopped_at_step": 5}
    resumed = run(mlm_config(tiny_bert, text, **{"train.stop_after_step": 5}), tmp_path / "run")
    ours, step = checkpoint_params(tmp_path / "run")
    reference, reference_step = checkpoint_params(folder / "run")
    assert step == reference_step
    for key in reference:  # masks, dropout and data order all replayed: bit-identical parameters
        np.testing.assert_array_equal(ours[key], reference[key], err_msg=key)
    assert resumed["perplexity_after"] == results["perplexity_after"]
    assert resumed["perplexity_before"] == results["perplexity_before"]


def test_export_loads_in_torch_and_in_fine_tuning(mlm_run):
    folder, _ = mlm_run
    export = folder / "run" / "export"
    ours = jm.from_pretrained(export, task=jm.MASKED_LM)
    theirs, info = transformers.AutoModelForMaskedLM.from_pretrained(export, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    tokenizer = jm.load_tokenizer(export)
    batch = tokenizer(["the film is a [MASK] triumph", "drags"], padding=True, return_tensors="np")
    our_logits = np.asarray(ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))
    with torch.no_grad():
        their_logits = theirs.eval()(**{k: torch.tensor(v) for k, v in batch.items()}).logits.numpy()
    assert np.abs(our_logits - their_logits).max() <= 1e-4
    classifier, report = jm.from_pretrained(export, task=jm.SEQUENCE_CLASSIFICATION, num_labels=2,
                                            output_loading_info=True)
    assert all(k.startswith("classifier.") for k in report.missing)  # encoder and pooler came from the export
    assert report.unexpected and all(k.startswith("cls.predictions.") for k in report.unexpected)
    base = jm.from_pretrained(export)  # the bare encoder equals the pretrained one
    np.testing.assert_array_equal(np.asarray(base.embeddings.word_embeddings.embedding.get_value()),
                                  np.asarray(ours.bert.embeddings.word_embeddings.embedding.get_value()))


def test_predict_on_a_masked_lm_export_fills_masks_not_entities(mlm_run):
    """predict on a masked-LM export gives fill-mask candidates (transformers' fill-mask keys), not NER output."""
    folder, _ = mlm_run
    export = folder / "run" / "export"
    done = subprocess.run([sys.executable, "-m", "jaxft.main", "predict", "--model", str(export)],
                          input="the film is a [MASK] triumph\n", capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-2000:]
    (result,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert "entities" not in result and result["text"] == "the film is a [MASK] triumph"
    (candidates,) = result["predictions"]  # one mask
    assert len(candidates) == 5 and set(candidates[0]) == {"score", "token", "token_str", "sequence"}
    scores = [c["score"] for c in candidates]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    tokenizer = jm.load_tokenizer(export)
    assert candidates[0]["token_str"] == tokenizer.decode([candidates[0]["token"]]).strip()
    assert candidates[0]["sequence"].startswith("the film is a ")
    # the same top token as the model's own logits at the mask
    model = jm.from_pretrained(export, task=jm.MASKED_LM)
    batch = tokenizer(["the film is a [MASK] triumph"], return_tensors="np")
    logits = np.asarray(model(batch["input_ids"], batch["attention_mask"]))[0]
    position = int(np.flatnonzero(batch["input_ids"][0] == tokenizer.mask_token_id)[0])
    assert candidates[0]["token"] == int(logits[position].argmax())


def test_predict_on_a_bare_encoder_is_one_clear_error(tiny_bert):
    done = subprocess.run([sys.executable, "-m", "jaxft.main", "predict", "--model", str(tiny_bert)],
                          input="a text\n", capture_output=True, text=True, cwd=Path(__file__).parent.parent,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {tiny_bert / 'config.json'}: BertModel is a bare encoder without a task head; predict, serve and "
        "explain need an export of a fine-tuned model (*ForTokenClassification, *ForSequenceClassification, "
        "*ForQuestionAnswering, *ForMaskedLM)")
