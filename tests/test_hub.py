"""Hub-ready exports: portable base names, config.json's transformers version and _name_or_path, the model card
(rendered back with huggingface_hub's ModelCard), the peft adapter's portable base and its labels in PyTorch, and
the upload: train.push_to_hub and `push` build huggingface_hub's commit operations, recorded offline in place of
the two HTTP calls (create_repo, create_commit) that no machine here can make.
"""

import ast
import hashlib
import json
import os
import re
import types

import numpy as np
import pytest
from huggingface_hub import HfApi, ModelCard

from conftest import tiny_ner_config
from jaxft.hub import HubError, portable_name, push
from jaxft.main import main

IDS = [[101, 2198, 3268, 1999, 3000, 1012, 102]]  # [CLS] john lives in paris . [SEP]


class RecordingHub:
    """The create_repo / create_commit calls an upload makes, recorded instead of sent."""

    def __init__(self, fail: Exception | None = None):
        self.calls, self.fail = [], fail

    def create_repo(self, repo_id, **options):
        self.calls.append(("create_repo", repo_id, options))
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, **options):
        if self.fail is not None:
            raise self.fail
        self.calls.append(("create_commit", repo_id, {"operations": list(operations), **options}))
        return types.SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")

    def install(self, monkeypatch):
        monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: self.create_repo(repo_id, **kw))
        monkeypatch.setattr(HfApi, "create_commit", lambda api, repo_id, operations, **kw:
                            self.create_commit(repo_id, operations, **kw))


def test_portable_names(tmp_path, minilm_path):
    assert portable_name("packaged:all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert portable_name(minilm_path) == "sentence-transformers/all-MiniLM-L6-v2"  # the packaged folder itself
    snapshot = tmp_path / "hub" / "models--someone--tiny-bert" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    assert portable_name(snapshot) == "someone/tiny-bert"
    (tmp_path / "my-bert").mkdir()
    assert portable_name(tmp_path / "my-bert") == "my-bert"
    assert portable_name("bert-base-cased") == "bert-base-cased"


def test_config_json_has_the_installed_transformers_version_and_the_runs_name(tiny_bert, tmp_path):
    import transformers

    from jaxft.models import from_pretrained, save_pretrained

    model = from_pretrained(tiny_bert, task="token-classification", num_labels=3)
    saved = json.loads((save_pretrained(model, tmp_path / "plain") / "config.json").read_text())
    assert saved["transformers_version"] == transformers.__version__ and "_name_or_path" not in saved
    model.name_or_path = "someone/tiny-bert"
    saved = json.loads((save_pretrained(model, tmp_path / "named") / "config.json").read_text())
    assert saved["_name_or_path"] == "someone/tiny-bert"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert, small_ner_file):
    """A LoRA run with train.push_to_hub, its two HTTP calls recorded."""
    from jaxft.tasks.run import run

    hub = RecordingHub()
    workdir = tmp_path_factory.mktemp("hub") / "lora"
    config = tiny_ner_config(tiny_bert, small_ner_file, **{
        "train.num_epochs": 0, "train.max_steps": 4, "train.log_every": 2, "peft.method": "lora", "peft.rank": 4,
        "train.push_to_hub": "someone/tiny-ner"})
    with pytest.MonkeyPatch.context() as monkeypatch:
        hub.install(monkeypatch)
        results = run(config, workdir)
    return workdir, results, hub


def test_every_export_has_a_model_card_that_renders_with_the_metrics(lora_run):
    workdir, results, _ = lora_run
    card = ModelCard.load(workdir / "export" / "README.md")
    assert (card.data.library_name, card.data.pipeline_tag) == ("transformers", "token-classification")
    listed = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    for split, name in (("dev", "validation"), ("test", "test")):
        for metric in ("f1", "precision", "recall", "accuracy"):
            assert listed[(name, metric)] == pytest.approx(results[split][metric]), (split, metric)
    assert f"| test | f1 | {results['test']['f1']:.4f} |" in card.text
    assert "`B-person`" in card.text and "`small.conll`" in card.text
    assert 'pipeline("token-classification", model=model_id, aggregation_strategy="first")' in card.text
    adapter = ModelCard.load(workdir / "export_adapter" / "README.md")
    assert adapter.data.library_name == "peft" and "lora" in adapter.data.tags
    assert adapter.data.base_model is None  # a local folder is no hub id


def test_config_json_and_adapter_config_name_the_base_portably(lora_run, tiny_bert):
    import transformers

    workdir, _, _ = lora_run
    config = json.loads((workdir / "export" / "config.json").read_text())
    assert (config["_name_or_path"], config["transformers_version"]) == (tiny_bert.name, transformers.__version__)
    adapter = json.loads((workdir / "export_adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == tiny_bert.name  # not this machine's path
    assert json.loads((workdir / "export_adapter" / "jaxft_base.json").read_text()) == {
        "base_model_name_or_path": str(tiny_bert)}
    from jaxft.peft.export import from_peft_pretrained  # jaxft finds the base through its sidecar

    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    assert list(from_peft_pretrained(workdir / "export_adapter").labels) == labels


def test_the_adapter_cards_snippet_loads_the_labels_in_pytorch(lora_run, tiny_bert, monkeypatch):
    import torch
    import transformers
    peft = pytest.importorskip("peft")

    workdir, _, _ = lora_run
    text = (workdir / "export_adapter" / "README.md").read_text()
    maps = re.search(r"from_pretrained\(model_id, id2label=(\{.*?\}), label2id=(\{.*?\})\)", text)
    id2label, label2id = ast.literal_eval(maps.group(1)), ast.literal_eval(maps.group(2))
    monkeypatch.chdir(tiny_bert.parent)  # the adapter names its base by folder name, as a hub id would be
    adapted = peft.AutoPeftModelForTokenClassification.from_pretrained(
        str(workdir / "export_adapter"), id2label=id2label, label2id=label2id).eval()
    merged = transformers.AutoModelForTokenClassification.from_pretrained(workdir / "export").eval()
    assert adapted.config.id2label == merged.config.id2label and "LABEL_0" not in adapted.config.id2label.values()
    with torch.no_grad():
        a, b = adapted(input_ids=torch.tensor(IDS)).logits.numpy(), merged(input_ids=torch.tensor(IDS)).logits.numpy()
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_push_to_hub_sends_one_commit_of_both_exports(lora_run):
    workdir, _, hub = lora_run
    (create_repo, repo, repo_options), (create_commit, commit_repo, commit) = hub.calls
    assert (create_repo, repo, repo_options["exist_ok"]) == ("create_repo", "someone/tiny-ner", True)
    assert (create_commit, commit_repo) == ("create_commit", "someone/tiny-ner")
    sent = {op.path_in_repo: op for op in commit["operations"]}
    expected = {p.name for p in (workdir / "export").iterdir()} | \
        {f"adapter/{p.name}" for p in (workdir / "export_adapter").iterdir() if p.name != "jaxft_base.json"}
    assert set(sent) == expected and "adapter/adapter_config.json" in sent and "model.safetensors" in sent
    weights = (workdir / "export" / "model.safetensors").read_bytes()
    assert sent["model.safetensors"].upload_info.size == len(weights)
    assert sent["model.safetensors"].upload_info.sha256.hex() == hashlib.sha256(weights).hexdigest()
    card = sent["README.md"].path_or_fileobj
    assert b'model_id = "someone/tiny-ner"' in card and b"path/to/this/folder" not in card


def test_push_command_and_its_errors(lora_run, tmp_path, monkeypatch, capsys):
    workdir, _, _ = lora_run
    hub = RecordingHub()
    hub.install(monkeypatch)
    assert main(["jaxft", "push", "--model", str(workdir / "export_adapter"), "--repo-id", "someone/adapter"]) == 0
    assert capsys.readouterr().out.strip() == "https://huggingface.co/someone/adapter/commit/abc"
    assert "adapter_model.safetensors" in {op.path_in_repo for op in hub.calls[1][2]["operations"]}
    assert main(["jaxft", "push", "--model", str(tmp_path), "--repo-id", "someone/x"]) == 2
    assert "not an exported model folder" in capsys.readouterr().err
    assert main(["jaxft", "push", "--model", str(workdir / "export"), "--repo-id", "not a repo"]) == 2
    assert "is not a hub repo id" in capsys.readouterr().err
    with pytest.raises(HubError, match=r"upload to someone/x failed \(ConnectionError: no network\); the folders are "
                                       r"unchanged on disk; retry with: python -m jaxft.main push --model .*export "
                                       r"--repo-id someone/x"):
        push({"": workdir / "export"}, "someone/x", api=RecordingHub(fail=ConnectionError("no network")))
    assert (workdir / "results.json").is_file() and os.listdir(workdir / "export")
