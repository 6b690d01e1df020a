"""Distillation (jaxft/distill.py): which teacher layers the student keeps, the student folder against PyTorch,
the soft-target maths, the combined loss of every task against a hand computation, unlabelled rows, and a
whole run (export loads in PyTorch, the teacher is neither trained nor checkpointed, the student moves
towards the teacher, resume is bit-identical)."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import TINY_BERT, recipe_config, tiny_ner_config
from jaxft import distill
from jaxft.config import ConfigError, validate, validate_workdir
from jaxft.data.batching import collate
from jaxft.data.ner_encoding import encode_for_training
from jaxft.models import from_pretrained, load_tokenizer, save_pretrained
from jaxft.models.encoder import model_inputs
from jaxft.models.hf import param_items
from jaxft.tasks import registry
from jaxft.tasks.qa import MASKED

TEMPERATURE, WEIGHT = 2.0, 0.3


def tiny_bert(folder: Path, minilm: Path, layers: int, *, seed: int = 0, model_type: str = "bert") -> Path:
    """A random `layers`-layer BERT (or DistilBERT) without dropout, with MiniLM's tokenizer files."""
    import torch
    import transformers

    torch.manual_seed(seed)
    if model_type == "distilbert":
        config = transformers.DistilBertConfig(vocab_size=30522, dim=32, n_layers=layers, n_heads=4, hidden_dim=64,
                                               dropout=0.0, attention_dropout=0.0, max_position_embeddings=128)
        transformers.DistilBertModel(config).save_pretrained(folder)
    else:
        config = transformers.BertConfig(vocab_size=30522, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                         **{**TINY_BERT, "num_hidden_layers": layers})
        transformers.BertModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def base4(tmp_path_factory, minilm_path) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("base4"), minilm_path, 4)


# ---------------------------------------------------------------------------------------------- the student

def test_layer_choices():
    assert distill.layer_indices("every_other", 6, 3) == [0, 2, 4]
    assert distill.layer_indices("first", 6, 3) == [0, 1, 2]
    assert distill.layer_indices("spread", 6, 3) == [0, 3, 5]
    assert distill.layer_indices("spread", 12, 4) == [0, 4, 7, 11]
    assert distill.layer_indices("every_other", 6, 0) == [0, 2, 4]  # 0: half the teacher's
    assert distill.layer_indices("1, 3,5", 6, 0) == [1, 3, 5]
    with pytest.raises(ConfigError, match="at most 3 of the teacher's 6 layers"):
        distill.layer_indices("every_other", 6, 4)
    with pytest.raises(ConfigError, match="increasing indices"):
        distill.layer_indices("2,1", 6)
    with pytest.raises(ConfigError, match="0 to 5"):
        distill.layer_indices("0,6", 6)
    with pytest.raises(ConfigError, match="names 2 layers but distill.student_layers is 3"):
        distill.layer_indices("0,1", 6, 3)


def test_student_folder_is_the_teacher_with_fewer_layers_in_pytorch(tmp_path, base4):
    """The student folder loads in PyTorch and computes what the teacher's layers 1 and 3 compute."""
    import torch
    import transformers

    student_dir = distill.write_student_folder(base4, [1, 3], tmp_path / "student")
    student = transformers.BertModel.from_pretrained(student_dir).eval()
    teacher = transformers.BertModel.from_pretrained(base4).eval()
    assert student.config.num_hidden_layers == 2
    teacher.encoder.layer = torch.nn.ModuleList([teacher.encoder.layer[1], teacher.encoder.layer[3]])
    ids = torch.tensor([[101, 2198, 2003, 1999, 3000, 102, 0, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        np.testing.assert_allclose(student(ids, attention_mask=mask).last_hidden_state.numpy(),
                                   teacher(ids, attention_mask=mask).last_hidden_state.numpy(), atol=1e-6)
    assert (student_dir / "tokenizer.json").is_file()


def test_student_folder_for_other_key_layouts(tmp_path, minilm_path):
    """DistilBERT ("transformer.layer.N.", n_layers) through the same code, and "layers.N." keys with a
    per-layer config list (ModernBERT-style layer_types) on synthetic tensors."""
    base = tiny_bert(tmp_path / "distil", minilm_path, 3, model_type="distilbert")
    student_dir = distill.write_student_folder(base, [0, 2], tmp_path / "distil-student")
    config = json.loads((student_dir / "config.json").read_text())
    assert config["n_layers"] == 2
    tensors, teacher = load_file(str(student_dir / "model.safetensors")), load_file(str(base / "model.safetensors"))
    assert np.array_equal(tensors["transformer.layer.1.ffn.lin1.weight"],
                          teacher["transformer.layer.2.ffn.lin1.weight"])
    assert not any(k.startswith("transformer.layer.2.") for k in tensors)
    model = from_pretrained(student_dir, task="token-classification", num_labels=3)
    assert model.config.num_layers == 2

    synthetic = {f"model.layers.{i}.attn.Wqkv.weight": np.full((2, 2), i, np.float32) for i in range(4)}
    synthetic["model.embeddings.tok_embeddings.weight"] = np.zeros((5, 2), np.float32)
    kept = distill.student_tensors(synthetic, [1, 3], 4)
    assert sorted(kept) == ["model.embeddings.tok_embeddings.weight", "model.layers.0.attn.Wqkv.weight",
                            "model.layers.1.attn.Wqkv.weight"]
    assert kept["model.layers.1.attn.Wqkv.weight"][0, 0] == 3
    assert distill.student_config({"model_type": "modernbert", "num_hidden_layers": 4,
                                   "layer_types": ["full", "sliding", "sliding", "full"]}, [1, 3]) == {
        "model_type": "modernbert", "num_hidden_layers": 2, "layer_types": ["sliding", "full"]}
    with pytest.raises(ConfigError, match="layer indices in its keys"):
        distill.student_tensors(synthetic, [0], 6)


# ---------------------------------------------------------------------------------------------- soft targets

def test_kl_terms_match_the_definition_and_their_gradient():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(3, 5)), rng.normal(size=(3, 5)) * 3

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax(teacher / TEMPERATURE), softmax(student / TEMPERATURE)
    expected = TEMPERATURE ** 2 * np.sum(p * np.log(p / q), -1)
    np.testing.assert_allclose(distill.kl_terms(jnp.asarray(student), jnp.asarray(teacher), TEMPERATURE), expected,
                               rtol=1e-5)
    assert np.allclose(distill.kl_terms(jnp.asarray(teacher), jnp.asarray(teacher), TEMPERATURE), 0, atol=1e-6)
    # d/ds of T^2 KL = T (softmax(s / T) - softmax(t / T)): the gradient scale Hinton et al. keep with T^2
    grad = jax.grad(lambda s: distill.kl_terms(s, jnp.asarray(teacher), TEMPERATURE).sum())(jnp.asarray(student))
    np.testing.assert_allclose(grad, TEMPERATURE * (q - p), atol=1e-5)

    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    a, b = sigmoid(teacher / TEMPERATURE), sigmoid(student / TEMPERATURE)
    binary = TEMPERATURE ** 2 * np.mean(a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b)), -1)
    np.testing.assert_allclose(distill.binary_kl_terms(jnp.asarray(student), jnp.asarray(teacher), TEMPERATURE),
                               binary, rtol=1e-5)


def write_classification(path: Path, problem: str, n: int = 24) -> Path:
    import csv
    rng = np.random.default_rng(1)
    words = "great awful film plot music actors dull superb long".split()
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(n):
            text = " ".join(rng.choice(words, 6))
            label = {"single_label_classification": ["pos", "neg"][i % 2],
                     "multi_label_classification": ["a", "b", "a,b"][i % 3],
                     "regression": f"{rng.uniform(0, 5):.2f}"}[problem]
            writer.writerow([text, label])
    return path


def task_setup(tmp_path, base4, small_ner_file, case: str):
    """(config, spec, data) of one task on tiny data, with the 4-layer model as a teacher export."""
    from test_mlm import corpus
    from test_qa import make_squad
    if case == "ner":
        config = tiny_ner_config(base4, small_ner_file)
    elif case in ("single_label_classification", "multi_label_classification", "regression"):
        config = recipe_config("sentiment", base4, write_classification(tmp_path / f"{case}.csv", case),
                               **{"data.max_length": 32, "classification.problem_type": case})
    elif case == "qa":
        config = recipe_config("qa", base4, make_squad(tmp_path / "squad.json", 30), **{
            "data.max_length": 48, "qa.doc_stride": 16, "qa.max_query_length": 16})
    else:
        config = recipe_config("mlm", base4, corpus(tmp_path), **{"data.max_length": 32, "mlm.source_split": "all"})
    spec = registry.get(config.task)
    return config, spec, spec.prepare(config)


def teacher_export(folder: Path, base: Path, spec, config, data, seed: int = 3) -> Path:
    """`base` with a task head for the data's labels, its weights perturbed so that it differs from the
    student, saved as an export."""
    model = from_pretrained(base, task=spec.name, seed=seed, **spec.model_options(config, data))
    rng = np.random.default_rng(seed)
    for _, variable in param_items(model):
        value = np.asarray(variable.get_value())
        variable.set_value(jnp.asarray(value + rng.normal(0, 0.05, value.shape), jnp.float32))
    save_pretrained(model, folder, tokenizer=load_tokenizer(base))
    return folder


def distilled_task(tmp_path, config, spec, data, teacher_dir, layers: str):
    config.distill.teacher = str(teacher_dir)
    config.distill.layer_choice = layers
    config.distill.temperature, config.distill.soft_weight = TEMPERATURE, WEIGHT
    distiller = distill.for_config(config, spec.name, tmp_path / "run")
    tokenizer = load_tokenizer(distiller.student_folder)
    student = from_pretrained(distiller.student_folder, task=spec.name, **spec.model_options(config, data))
    task = spec.build(config, tokenizer, student, data)
    hard = task.loss
    task = distiller.wrap(task, tokenizer)
    distiller.attach(student, None, jnp.float32)
    rows = task.train_rows[:8]
    width = max(len(r["input_ids"]) for r in rows)
    batch = {k: jnp.asarray(v) for k, v in collate(rows, 8, [width], task.pad_values).items()}
    return task, hard, student, batch


CASES = ["ner", "single_label_classification", "multi_label_classification", "regression", "qa"]


@pytest.mark.parametrize("case", CASES)
def test_combined_loss_equals_a_hand_computation(case, tmp_path, base4, small_ner_file):
    """w * soft + (1 - w) * the task's own loss, with the soft term recomputed here from both models' logits
    over the targets the task's loss counts."""
    config, spec, data = task_setup(tmp_path, base4, small_ner_file, case)
    teacher_dir = teacher_export(tmp_path / "teacher", base4, spec, config, data)
    task, hard, student, batch = distilled_task(tmp_path, config, spec, data, teacher_dir, "every_other")
    total, count = task.loss(student, batch)
    hard_sum, hard_count = hard(student, batch)
    s = student(**model_inputs(batch))
    t = getattr(student, distill.TEACHER_ATTRIBUTE)(**model_inputs(batch))
    kl = lambda a, b: np.asarray(distill.kl_terms(a, b, TEMPERATURE))  # noqa: E731 (checked above)
    if case == "ner":
        valid = np.asarray(batch["labels"]) >= 0
        soft = kl(s, t)[valid].sum()
    elif case == "qa":
        valid = np.asarray(batch["attention_mask"]) > 0
        cut = lambda x: jnp.where(valid, x, MASKED)  # noqa: E731
        soft = ((kl(cut(s[0]), cut(t[0])) + kl(cut(s[1]), cut(t[1]))) / 2)[valid[:, 0]].sum()
    else:
        real = np.asarray(batch["attention_mask"])[:, 0] > 0
        if case == "single_label_classification":
            terms = kl(s, t)
        elif case == "multi_label_classification":
            terms = np.asarray(distill.binary_kl_terms(s, t, TEMPERATURE))
        else:
            terms = np.square(np.asarray(s)[:, 0] - np.asarray(t)[:, 0])
        soft = terms[real].sum()
    assert int(count) == int(hard_count) > 0
    assert soft > 0
    np.testing.assert_allclose(float(total), WEIGHT * soft + (1 - WEIGHT) * float(hard_sum), rtol=1e-5)


def test_masked_lm_soft_targets_sit_on_the_masked_tokens(tmp_path, base4, small_ner_file):
    """The soft term counts exactly the positions the MLM loss scores (the same masks, drawn once), and it
    vanishes for a student that is its teacher (all four layers kept)."""
    config, spec, data = task_setup(tmp_path, base4, small_ner_file, "mlm")
    teacher_dir = teacher_export(tmp_path / "teacher", base4, spec, config, data)
    for layers, differs in (("every_other", True), ("0,1,2,3", False)):
        task, hard, student, batch = distilled_task(tmp_path, config, spec, data, teacher_dir, layers)
        recorder = distill._Recorder(student, getattr(student, distill.TEACHER_ATTRIBUTE), batch["input_ids"])
        _, count = hard(recorder, batch)
        (s, t), = recorder.calls
        soft_sum, soft_count = distill.soft_loss(spec.name, task, s, t, batch, recorder.keys, TEMPERATURE)
        assert len(recorder.keys) == 1 and int(soft_count) == int(count) > 0
        assert (float(soft_sum) > 0.01) if differs else (abs(float(soft_sum)) < 1e-4)


def test_unlabelled_rows_take_the_teachers_predictions(tmp_path, base4, small_ner_file):
    config, spec, data = task_setup(tmp_path, base4, small_ner_file, "ner")
    teacher_dir = teacher_export(tmp_path / "teacher", base4, spec, config, data)
    unlabelled = tmp_path / "more.txt"
    unlabelled.write_text("john\nlives\nin\nparis\n\nberlin\nis\nbig\n", encoding="utf-8")  # CoNLL, no tags
    config.distill.unlabelled_file = str(unlabelled)
    task, hard, student, _ = distilled_task(tmp_path, config, spec, data, teacher_dir, "every_other")
    extra = [row for row in task.train_rows if row[distill.UNLABELLED_KEY] == 1]
    assert len(extra) == 2 and len(task.train_rows) == len(data.train) + 2
    rows = task.train_rows[:2] + extra
    batch = {k: jnp.asarray(v) for k, v in collate(rows, 4, [64], task.pad_values).items()}
    teacher = getattr(student, distill.TEACHER_ATTRIBUTE)
    logits = teacher(**model_inputs(batch))
    patched = distill.with_teacher_labels(spec.name, task, batch, logits)
    labels, new = np.asarray(batch["labels"]), np.asarray(patched["labels"])
    assert np.array_equal(new[:2], labels[:2])  # labelled rows keep their tags
    words = labels[2:] >= 0
    assert words.sum() == 4 + 3  # one target per word (first sub-token)
    assert np.array_equal(new[2:][words], np.asarray(logits).argmax(-1)[2:][words])
    assert np.all(new[2:][~words] == labels[2:][~words])


def test_config_errors(tmp_path, base4, small_ner_file):
    def config(**overrides):
        return tiny_ner_config(base4, small_ner_file, **overrides)

    for overrides, message in [
        ({"distill.soft_weight": 1.5}, r"distill.soft_weight must be in \[0, 1\]"),
        ({"distill.temperature": 0.0}, "'distill.temperature' must be > 0"),
        ({"distill.layer_choice": "odd"}, "distill.layer_choice must be one of every_other, first, spread"),
        ({"distill.teacher": str(tmp_path / "none")}, "is not an export folder"),
        ({"distill.unlabelled_file": str(small_ner_file)}, "distill.teacher is not"),
        ({"distill.teacher": str(base4), "ner.crf": True, "data.packing": False}, "does not go with ner.crf"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate(config(**overrides))
    qa = recipe_config("qa", base4, small_ner_file, **{"distill.teacher": str(base4),
                                                       "distill.unlabelled_file": str(small_ner_file)})
    with pytest.raises(ConfigError, match="for token and sequence classification, not question-answering"):
        validate(qa)
    inside = tmp_path / "runs" / "export"
    shutil.copytree(base4, inside)
    with pytest.raises(ConfigError, match="'distill.teacher'.*lies inside"):  # the run would overwrite its teacher
        validate_workdir(config(**{"distill.teacher": str(inside)}), tmp_path / "runs")
    with pytest.raises(Exception, match="bare encoder"):  # a base model, not an export with a task head
        distill.for_config(config(**{"distill.teacher": str(base4)}), "token-classification", tmp_path)


# ---------------------------------------------------------------------------------------------- a whole run

@pytest.fixture(scope="module")
def ner_teacher(tmp_path_factory, base4, small_ner_file):
    folder = tmp_path_factory.mktemp("ner-teacher")
    config, spec, data = task_setup(folder, base4, small_ner_file, "ner")
    return teacher_export(folder / "export", base4, spec, config, data)


def run_config(base4, small_ner_file, teacher, **overrides):
    return tiny_ner_config(base4, small_ner_file, **{
        "distill.teacher": str(teacher), "distill.student_layers": 2, "distill.soft_weight": 1.0,
        "data.max_length": 32, "data.bucket_multiple": 32, "train.max_steps": 8, "train.eval_every": 8,
        "optim.learning_rate": 2e-3, "optim.warmup_ratio": 0.0, **overrides})


def dev_kl(model_dir, teacher_dir, rows) -> float:
    """Mean KL(teacher || model) over the trained sub-tokens of `rows`, at T = 1."""
    model = from_pretrained(model_dir, task="token-classification")
    teacher = from_pretrained(teacher_dir, task="token-classification")
    width = max(len(r["input_ids"]) for r in rows)
    batch = collate(rows, len(rows), [width], {"input_ids": 0, "labels": -100})
    valid = batch["labels"] >= 0
    terms = distill.kl_terms(model(batch["input_ids"], batch["attention_mask"]),
                             teacher(batch["input_ids"], batch["attention_mask"]), 1.0)
    return float(np.asarray(terms)[valid].mean())


@pytest.fixture(scope="module")
def student_run(tmp_path_factory, base4, small_ner_file, ner_teacher):
    from jaxft.tasks.run import run
    workdir = tmp_path_factory.mktemp("student")
    return workdir, run(run_config(base4, small_ner_file, ner_teacher), workdir)


def test_run_exports_a_smaller_student_that_pytorch_loads(student_run, ner_teacher):
    import torch
    import transformers

    workdir, results = student_run
    export = workdir / "export"
    assert results["distill"]["layers_kept"] == [0, 2] and results["distill"]["teacher_layers"] == 4
    tensors = load_file(str(export / "model.safetensors"))
    assert not any("teacher" in k for k in tensors)
    assert results["trainable_params"] == results["total_params"] == sum(v.size for v in tensors.values())
    assert sum(v.size for v in load_file(str(ner_teacher / "model.safetensors")).values()) > results["total_params"]
    torch_model = transformers.AutoModelForTokenClassification.from_pretrained(export).eval()
    assert torch_model.config.num_hidden_layers == 2
    ids = np.array([[101, 2198, 2003, 1999, 3000, 102]])
    with torch.no_grad():
        expected = torch_model(torch.tensor(ids), attention_mask=torch.ones_like(torch.tensor(ids))).logits.numpy()
    ours = from_pretrained(export, task="token-classification")(ids, np.ones_like(ids))
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-4)


def test_teacher_is_frozen_and_not_checkpointed(student_run):
    import orbax.checkpoint as ocp
    workdir, _ = student_run
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    restored = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(steps[-1]) / "state")
    assert restored["params"] and not any(k.startswith(distill.TEACHER_ATTRIBUTE) for k in restored["params"])
    optimizer_keys = {str(path) for path, _ in jax.tree_util.tree_leaves_with_path(restored["opt_state"])}
    assert not any(distill.TEACHER_ATTRIBUTE in key for key in optimizer_keys)


def test_student_moves_towards_the_teacher(student_run, ner_teacher, small_ner_file, base4):
    """With soft_weight 1 the training signal is the teacher alone: 8 steps bring the student's token
    distributions closer to the teacher's on held-out (dev) sentences."""
    workdir, _ = student_run
    config, spec, data = task_setup(workdir, base4, small_ner_file, "ner")
    labels = spec.model_options(config, data)["id2label"]
    encoded, _ = encode_for_training(load_tokenizer(base4), data.dev[:40], {l: i for i, l in enumerate(labels)}, 32)
    dev_rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    before = dev_kl(workdir / distill.STUDENT_FOLDER, ner_teacher, dev_rows)
    after = dev_kl(workdir / "export", ner_teacher, dev_rows)
    assert after < 0.7 * before, (before, after)


def test_resume_after_stop_equals_uninterrupted(student_run, tmp_path, base4, small_ner_file, ner_teacher):
    from jaxft.tasks.run import run
    workdir, _ = student_run
    config = run_config(base4, small_ner_file, ner_teacher, **{"train.stop_after_step": 4})
    assert run(config, tmp_path / "resumed") == {"stopped_at_step": 4}
    run(run_config(base4, small_ner_file, ner_teacher), tmp_path / "resumed")
    resumed = load_file(str(tmp_path / "resumed" / "export" / "model.safetensors"))
    uninterrupted = load_file(str(workdir / "export" / "model.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    assert all(np.array_equal(resumed[k], uninterrupted[k]) for k in resumed)
