"""The Python API: recipes, training with `datasets` objects, evaluation of an export, and pipelines.

    import jaxft
    config = jaxft.recipe("ner", {"train.num_epochs": 3})              # jaxft/recipes/ner.py + overrides
    results = jaxft.train(config, "runs/ner", train_dataset=ds["train"], validation_dataset=ds["validation"])
    metrics = jaxft.evaluate("runs/ner/export", ds["test"])             # or a file, or a hub dataset id
    ner = jaxft.pipeline("runs/ner/export")
    ner("John lives in Paris.")   # [{"entity_group": "LOC", "word": "Paris", "start": 14, "end": 19, ...}]

`train` is the command line's training run (jaxft.tasks.run.run). Datasets objects (Dataset, DatasetDict,
IterableDataset) are written into the workdir with save_to_disk (workdir/datasets/<split>/) and the config's
data keys point at those folders: the run's config.json names real data, and calling `train` again with the
same workdir resumes like the command line. An IterableDataset is streamed into that folder (it is read
once, not held in memory). `evaluate` scores an export on data as the training run scores its test split
(same task code, same batching, the export's own thresholds). `pipeline` answers with the keys of the
transformers pipelines.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import ml_collections

from jaxft import recipes
from jaxft.config import (MASKED_LM, QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, ConfigError,
                          base_config, keys, load_recipe, suggest, validate)
from jaxft.data import hf_objects
from jaxft.data.batching import map_batches
from jaxft.models import load_tokenizer
from jaxft.models.encoder import packed_position_offset
from jaxft.models.hf import resolve_model_dir
from jaxft.peft.export import JAXFT_PEFT_CONFIG, load_with_peft
from jaxft.predict import load_predictor
from jaxft.tasks import registry
from jaxft.tasks.predictor import Predictor, load_model, read_task_file
from jaxft.tasks.run import run
from jaxft.train.batches import plan_batches
from jaxft.train.hooks import NO_HOOKS, Hooks
from jaxft.train.state import split_model
from jaxft.train.step import make_predict_step

ROLES = ("train", "validation", "test")
FILE_KEY = {"train": "train_file", "validation": "validation_file", "test": "test_file"}
DATASETS_FOLDER = "datasets"


# ---------------------------------------------------------------------------------------------- recipes

def recipe(name: str | os.PathLike = "ner", overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """A recipe's config: a name of jaxft/recipes/ (ner, ner_lora, sentiment, qa, mlm) or the path of a recipe
    file (configs/ner.py), with dotted-key overrides ({"train.num_epochs": 3}); an unknown key is refused
    with the nearest known one."""
    text = str(name)
    config = load_recipe(text) if text.endswith(".py") or os.path.sep in text else recipes.get(text)
    for dotted, value in (overrides or {}).items():
        set_key(config, dotted, value)
    return config


def set_key(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    """config[dotted] = value for a schema key ("optim.learning_rate"); others are refused with a suggestion."""
    known = dict(keys())
    if dotted not in known:
        raise ConfigError(f"unknown config key {dotted!r}" + suggest(dotted, known))
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value


def _as_config(config) -> ml_collections.ConfigDict:
    if isinstance(config, ml_collections.ConfigDict):
        return copy.deepcopy(config)  # the caller's config is left as it was
    if isinstance(config, (str, os.PathLike)):
        return recipe(config)
    raise ConfigError(f"config must be a ConfigDict (jaxft.recipe(...)) or a recipe name or file, got "
                      f"{type(config).__name__}")


# ---------------------------------------------------------------------------------------------- train

def train(config, workdir: str | os.PathLike | None = None, *, train_dataset=None, validation_dataset=None,
          test_dataset=None, hooks: Hooks = NO_HOOKS) -> dict:
    """Train, evaluate and export like `python -m jaxft.main --config ...`; returns the run's results
    (results.json: dev/test metrics, steps, ...) plus "workdir" and "export_path" (and "adapter_path" for
    LoRA/DoRA).

    config: a ConfigDict (jaxft.recipe(...)), a recipe name or a recipe file; it is not modified.
    workdir: default runs/<recipe name> for a recipe name, else runs/<task>.
    train_dataset / validation_dataset / test_dataset: a datasets Dataset, IterableDataset or save_to_disk
    folder (or any data file path); a DatasetDict as train_dataset gives all three by the config's split names
    (data.train_split, ...). They replace the config's data files; with only a train set, dev and test are
    its next 15% + 15% (the split policy of files). Integer tags / labels are named by their ClassLabel
    feature, or by data.label_names."""
    name = Path(config).stem if isinstance(config, (str, os.PathLike)) else None
    config = _as_config(config)
    workdir = Path(workdir if workdir is not None else Path("runs") / (name or config.task))
    given = _split_sources(config, train_dataset, validation_dataset, test_dataset)
    if given:
        use_datasets(config, workdir, given)
    results = run(config, workdir, hooks=hooks)
    if "exports" not in results:  # train.stop_after_step: nothing exported yet
        return {**results, "workdir": str(workdir)}
    paths = {"export_path": str(workdir / "export")}
    if "export_adapter" in results["exports"]:
        paths["adapter_path"] = str(workdir / "export_adapter")
    return {**results, "workdir": str(workdir), **paths}


def _split_sources(config, train_dataset, validation_dataset, test_dataset) -> dict[str, Any]:
    """{role: source} of what was passed; a DatasetDict as train_dataset is opened into its splits."""
    given = {role: source for role, source in zip(ROLES, (train_dataset, validation_dataset, test_dataset))
             if source is not None}
    for role in ("validation", "test"):
        if role in given and hf_objects.is_dict_like(given[role]):
            raise ConfigError(f"{role}_dataset is a DatasetDict: pass one of its splits, or the DatasetDict as "
                              "train_dataset (its splits are then used by name)")
    if "train" in given and hf_objects.is_dict_like(given["train"]):
        splits = dict(zip(ROLES, (config.data.train_split, config.data.validation_split, config.data.test_split)))
        whole = given.pop("train")
        if hf_objects.is_saved_dataset(whole):
            whole = _load_dict(whole)
        for role, split in splits.items():
            if split and split in whole:
                if role in given:
                    raise ConfigError(f"train_dataset is a DatasetDict with a {split!r} split and {role}_dataset "
                                      "is given too: pass one of them")
                given[role] = whole[split]
        if "train" not in given:
            raise ConfigError(f"train_dataset is a DatasetDict without the split data.train_split="
                              f"{config.data.train_split!r}; it has: {', '.join(whole.keys())}")
    return given


def _load_dict(folder):
    import datasets  # datasets loads only for its own sources (seconds of start-up otherwise)

    return datasets.load_from_disk(str(folder))


def use_datasets(config, workdir: Path, sources: Mapping[str, Any]) -> None:
    """Point the config's data at the sources ({role: object or path}): objects are saved into
    workdir/datasets/<role>/ (data.label_names applied to integer tags); the hub dataset keys are cleared."""
    if "train" not in sources:
        raise ConfigError("validation_dataset / test_dataset need a train_dataset too")
    data = config.data
    if data.hf_dataset:
        raise ConfigError(f"the config reads data.hf_dataset={data.hf_dataset!r} and datasets were passed too: "
                          "set data.hf_dataset=None, or pass none")
    folders = {role: _materialized(config, source, Path(workdir) / DATASETS_FOLDER / role)
               for role, source in sources.items()}
    data.label_names = None  # applied: the saved datasets carry them as ClassLabel names
    if config.task == MASKED_LM:  # the masked-LM reader takes text files or a hub dataset: a DatasetDict folder
        if set(folders) != {"train"}:
            raise ConfigError("masked-lm takes a train_dataset only (its held-out lines are the train data's tail)")
        data.hf_dataset = str(_as_dataset_dict(folders["train"], Path(workdir) / DATASETS_FOLDER / "mlm"))
        data.train_file, data.train_split = "", "train"
        return
    for role, path in folders.items():  # a split not passed keeps the config's file (None: the split policy)
        data[FILE_KEY[role]] = path


def _materialized(config, source, folder: Path) -> str:
    """A data path for `source`: a path as given, an object saved (atomically) into `folder`."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if not hf_objects.is_dataset_object(source):
        raise ConfigError(f"a dataset must be a datasets Dataset / IterableDataset or a path, got "
                          f"{type(source).__name__}")
    save_dataset(with_label_names(source, config), folder)
    return str(folder)


def save_dataset(dataset, folder: Path) -> Path:
    """dataset.save_to_disk(folder), atomically: a temporary sibling folder replaces `folder` once complete.
    An IterableDataset is first streamed into an Arrow dataset (Dataset.from_generator, a private cache)."""
    import datasets  # datasets loads only for its own sources (seconds of start-up otherwise)

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.tmp-") as tmp:
        if isinstance(dataset, datasets.IterableDataset):
            dataset = datasets.Dataset.from_generator(_rows_of, gen_kwargs={"dataset": dataset},
                                                      features=dataset.features, cache_dir=str(Path(tmp) / "cache"))
        dataset.save_to_disk(str(Path(tmp) / "saved"))
        old = Path(tmp) / "old"
        if folder.exists():
            os.replace(folder, old)
        os.replace(Path(tmp) / "saved", folder)
    return folder


def _rows_of(dataset):
    yield from dataset


def _as_dataset_dict(folder: str, target: Path) -> Path:
    import datasets  # datasets loads only for its own sources (seconds of start-up otherwise)

    source = datasets.load_from_disk(folder)
    if not isinstance(source, datasets.DatasetDict):
        source = datasets.DatasetDict({"train": source})
    if Path(folder).resolve() == target.resolve():
        return target
    save_dataset(source, target)
    return target


def label_names(config) -> list[str] | None:
    names = [name.strip() for name in (config.data.label_names or "").split(",") if name.strip()]
    return names or None


def with_label_names(dataset, config):
    """The dataset with data.label_names as the ClassLabel names of its integer tags (NER) / labels; a column
    that has ClassLabel names already must have these same names."""
    names = label_names(config)
    if names is None or config.task not in (TOKEN_CLASSIFICATION, SEQUENCE_CLASSIFICATION):
        return dataset
    import datasets  # datasets loads only for its own sources (seconds of start-up otherwise)

    column = config.data.tags_column if config.task == TOKEN_CLASSIFICATION else config.data.label_column
    feature = hf_objects.feature_of(dataset, column)
    existing = hf_objects.class_label_names(feature)
    if existing is not None:
        if existing != names:
            raise ConfigError(f"data.label_names {names} differ from the ClassLabel names {existing} of column "
                              f"{column!r}: drop data.label_names")
        return dataset
    inner = getattr(feature, "feature", feature)
    if not (isinstance(inner, datasets.Value) and inner.dtype.startswith(("int", "uint"))):
        return dataset  # strings (or anything not integer) are names already
    label = datasets.ClassLabel(names=names)
    target = datasets.List(label) if feature is not inner else label
    return dataset.cast_column(column, target)


# ---------------------------------------------------------------------------------------------- evaluate

def evaluate(model: str | os.PathLike, data, *, split: str = "test", batch_size: int | None = None,
             config: ml_collections.ConfigDict | None = None) -> dict:
    """Metrics of an exported model on `data`, computed as a training run computes its test split.

    model: an export folder (or a hub id). data: a data file, a save_to_disk folder, a datasets Dataset /
    DatasetDict (its `split`) / IterableDataset, or a hub dataset id (its `split`). batch_size: rows per
    prediction batch (default: as the training run, 2 x train.batch_size). config: the settings to read the
    data with (columns, tag scheme, ...); default: the training run's config.json next to the export when
    there is one, else the task's defaults; max_length and tuned thresholds come from the export."""
    folder = _local_folder(model)
    spec = registry.for_folder(folder)
    config = _evaluation_config(folder, spec.name, config)
    with tempfile.TemporaryDirectory(prefix="jaxft-evaluate-") as tmp:
        _point_at(config, data, split, Path(tmp))
        config.data.label_names = None  # applied to an object (saved with ClassLabel names); files carry theirs
        validate(config)
        splits = spec.prepare(config)
        loaded = _load_export(folder, spec.name)
        task = spec.build(config, load_tokenizer(folder), loaded, splits)
        _restore_export_parts(folder, spec.name, loaded)
        return task.evaluate("test", _predict_batches(config, loaded, task, batch_size))


def _local_folder(model) -> Path:
    folder = Path(model).expanduser()
    return folder if folder.is_dir() else resolve_model_dir(str(model))


def _evaluation_config(folder: Path, task: str, config) -> ml_collections.ConfigDict:
    if config is not None:
        config = copy.deepcopy(config)
    else:
        config = base_config()
        run_config = folder.parent / "config.json"  # the training run's resolved config, in its workdir
        if run_config.is_file():
            saved = json.loads(run_config.read_text())
            if saved.get("task") == task:
                _update_from(config, saved)
    config.task = task
    info = read_task_file(folder)
    if info.get("max_length"):
        config.data.max_length = int(info["max_length"])
    config.augment.methods = ""
    config.mlm.source_split = "all"
    thresholds = {"classification.threshold": info.get("threshold"), "classification.tune_threshold": False,
                  "qa.null_score_diff_threshold": info.get("null_threshold"), "qa.tune_null_threshold": False}
    if "ner.crf" in dict(keys()):
        thresholds["ner.crf"] = bool(info.get("crf", False))
    for dotted, value in thresholds.items():
        if value is not None:
            set_key(config, dotted, value)
    return config


def _update_from(config, saved: dict) -> None:
    """A saved config.json's values onto a fresh config (keys this jaxft does not know are skipped)."""
    known = dict(keys())
    for group, values in saved.items():
        items = values.items() if isinstance(values, dict) else [(None, values)]
        for key, value in items:
            dotted = f"{group}.{key}" if key is not None else group
            if dotted in known:
                set_key(config, dotted, value)


def _point_at(config, data, split: str, tmp: Path) -> None:
    """The config's three splits all read `data` (evaluation reads its test split)."""
    if hf_objects.is_dataset_object(data) and hf_objects.is_dict_like(data):
        data = hf_objects.load_split(data, split)
    is_path = isinstance(data, (str, os.PathLike)) and Path(data).expanduser().exists()
    if isinstance(data, (str, os.PathLike)) and not is_path:  # a hub dataset id
        config.data.hf_dataset, config.data.train_file = str(data), ""
        config.data.validation_file = config.data.test_file = None
        config.data.train_split = config.data.validation_split = config.data.test_split = split
        return
    if hf_objects.is_saved_dataset_dict(data):
        config.data.hf_dataset, config.data.train_file = str(data), ""
        config.data.train_split = config.data.validation_split = config.data.test_split = split
        return
    if not is_path:
        data = _materialized(config, data, tmp / "data")
    config.data.hf_dataset = None
    config.data.train_file = config.data.validation_file = config.data.test_file = str(data)


def _load_export(folder: Path, task: str):
    if (folder / JAXFT_PEFT_CONFIG).is_file():  # bottleneck adapters / prefixes: base + jaxft_peft.*
        return load_with_peft(folder, task=task)
    return load_model(folder, task)


def _restore_export_parts(folder: Path, task: str, model) -> None:
    """What an export keeps beside its HF files and the task's build made fresh: a NER CRF's potentials."""
    if task != TOKEN_CLASSIFICATION or not read_task_file(folder).get("crf"):
        return
    from jaxft.tasks import ner  # (start-up cost: only for CRF exports)

    setattr(model, ner.CRF_MODULE, ner.read_crf_file(folder, model.labels))


def _predict_batches(config, model, task, batch_size: int | None):
    """rows -> the task's predictions, batched as the Trainer batches evaluation (its batch plan: length-sorted
    rows in length buckets, or packed rows with data.packing); batch_size: rows a padded batch holds."""
    parts, params, frozen, rng = split_model(model)
    step = make_predict_step(parts, task.predict)
    per_token = getattr(task, "per_token_outputs", True)

    def fn(batch):
        return step(params, frozen, rng, batch)

    plan = plan_batches(task.train_rows, config.data, config.train, task.pad_values,
                        packed_position_offset(model.config), 1)  # the Trainer's own batch plan
    if batch_size is None or plan.packed:
        return lambda rows: plan.predict(fn, rows, per_token)
    return lambda rows: map_batches(fn, rows, batch_size, plan.buckets, task.pad_values, per_token=per_token)


# ---------------------------------------------------------------------------------------------- pipeline

class Pipeline:
    """A callable over one input or a list, answering with the keys of the transformers pipeline of the
    export's task (see __call__). `predictor` is the jaxft predictor underneath (tasks/*.py)."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.task = predictor.task

    def __call__(self, inputs=None, *, aggregation_strategy: str = "first", top_k: int = 1, **kwargs):
        """token-classification: text(s) -> [{entity_group, score, word, start, end}] per text (words from the
        tokenizer's pre-tokenizer; aggregation_strategy first | average | max over a word's sub-tokens).
        text-classification: text(s), or {"text", "text_pair"} -> top_k=1 (default): [{label, score}] for one
        text, one dict per text for a list; other top_k (None: all labels): a list of the best per text.
        question-answering: question=, context= (or {"question", "context"} dicts) -> {answer, score, start,
        end}. fill-mask: text(s) with the mask token -> [{score, token, token_str, sequence}] (a list per mask
        when a text has several)."""
        if self.task == QUESTION_ANSWERING:
            return self._answer(inputs, **kwargs)
        if kwargs:
            raise TypeError(f"unexpected keyword arguments for a {self.task} pipeline: {', '.join(kwargs)}")
        single = isinstance(inputs, (str, dict))
        items = [inputs] if single else list(inputs)
        if self.task == TOKEN_CLASSIFICATION:
            outputs = self._entities(items, aggregation_strategy)
        elif self.task == SEQUENCE_CLASSIFICATION:
            outputs = self._labels(items, top_k)
            if single and top_k == 1:  # transformers: [{"label", "score"}] for one text
                return outputs
        else:
            outputs = self._fill(items)
        return outputs[0] if single else outputs

    def _entities(self, texts: list[str], aggregation: str) -> list[list[dict]]:
        predict = self.predictor.predict_texts
        if "aggregation" in inspect.signature(predict).parameters:
            results = predict(texts, aggregation=aggregation)
        elif aggregation != "first":
            raise ValueError("this predictor aggregates sub-tokens only as 'first'")
        else:
            results = predict(texts)
        return [[{"entity_group": e["type"], "score": e["score"], "word": e["text"], "start": e["start"],
                  "end": e["end"]} for e in result["entities"]] for result in results]

    def _labels(self, items: list, top_k: int | None) -> list:
        if self.predictor.pairs:
            pairs = [(item["text"], item["text_pair"]) if isinstance(item, dict) else tuple(item) for item in items]
            results = self.predictor.predict([p[0] for p in pairs], [p[1] for p in pairs])
        else:
            results = self.predictor.predict([item["text"] if isinstance(item, dict) else item for item in items])
        outputs = []
        for result in results:
            if "value" in result:  # regression: transformers gives the raw value as the score
                ranked = [{"label": self.predictor.labels[0], "score": result["value"]}]
            else:
                ranked = sorted(({"label": k, "score": v} for k, v in result["probabilities"].items()),
                                key=lambda entry: -entry["score"])
            outputs.append(ranked[0] if top_k == 1 else ranked[:top_k])
        return outputs

    def _answer(self, inputs=None, *, question=None, context=None, **kwargs):
        if kwargs:
            raise TypeError(f"unexpected keyword arguments for a question-answering pipeline: {', '.join(kwargs)}")
        if question is not None:
            single = isinstance(question, str)
            questions = [question] if single else list(question)
            contexts = [context] * len(questions) if isinstance(context, str) else list(context)
            items = [{"question": q, "context": c} for q, c in zip(questions, contexts)]
        else:
            single = isinstance(inputs, dict)
            items = [inputs] if single else list(inputs)
        results = self.predictor.predict_items(items)
        outputs = [{"score": r["score"], "start": r["start"], "end": r["end"], "answer": r["answer"]}
                   for r in results]
        return outputs[0] if single else outputs

    def _fill(self, texts: list[str]) -> list:
        outputs = []
        for result in self.predictor.predict_items(texts):
            per_mask = result["predictions"]
            outputs.append(per_mask[0] if len(per_mask) == 1 else per_mask)
        return outputs


def pipeline(model: str | os.PathLike | Sequence[str | os.PathLike], **options) -> Pipeline:
    """A pipeline over an export folder (or a hub id, downloaded first; or a list of folders: an ensemble).
    options: those of the predictor (max_length, batch_size, batch_sizes, length_buckets, dtype)."""
    folders = [model] if isinstance(model, (str, os.PathLike)) else list(model)
    return Pipeline(load_predictor([str(_local_folder(folder)) for folder in folders], **options))
