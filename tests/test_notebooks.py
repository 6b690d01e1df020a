"""The Colab notebooks (colab/*.ipynb), executed top to bottom with nbclient on CPU in smoke mode.

JAXFT_NOTEBOOK_SMOKE=1 makes each notebook build a random 2-layer BERT (MiniLM's tokenizer), take a slice
of the packaged data and train one short epoch; JAXFT_NOTEBOOK_INSTALL=0 forbids it to pip-install
anything (jaxft and the packaged data must already be importable by this Python, which the kernel runs).
Any cell that raises fails the test (nbclient's CellExecutionError). The last cell prints one line
"JAXFT_NOTEBOOK_SUMMARY {json}", checked here together with the files the run left.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

import jaxft.models as jm  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COLAB = REPO / "colab"
MARKER = "JAXFT_NOTEBOOK_SUMMARY "


KERNEL = "jaxft-test-python"


def kernelspec_dir(root: Path) -> Path:
    """A kernelspec that runs this very Python (not whatever 'python3' a user-level kernelspec points at)."""
    folder = root / "kernels" / KERNEL
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jaxft test", "language": "python"}))
    return root


def execute(nb, workdir: Path, monkeypatch):
    """Run a notebook in a fresh kernel of this Python, cwd colab/; returns it with outputs."""
    jupyter_path = kernelspec_dir(workdir.parent / "jupyter")
    for key, value in {"JUPYTER_PATH": str(jupyter_path), "JAXFT_NOTEBOOK_SMOKE": "1", "JAXFT_NOTEBOOK_INSTALL": "0",
                       "JAXFT_NOTEBOOK_WORKDIR": str(workdir), "JAXFT_SOURCE": str(REPO),
                       "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
                       }.items():
        monkeypatch.setenv(key, value)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(COLAB)}})
    client.execute()
    return nb


def summary_of(nb) -> dict:
    for cell in reversed(nb.cells):
        for output in cell.get("outputs", []):
            for line in output.get("text", "").splitlines():
                if line.startswith(MARKER):
                    return json.loads(line[len(MARKER):])
    raise AssertionError("the notebook printed no summary line")


def check_common(summary: dict, workdir: Path, task: str) -> None:
    assert summary["smoke"] is True and summary["backend"] == "cpu"
    assert math.prod(summary["mesh"].values()) == summary["devices"]
    assert summary["steps"] > 0
    assert (workdir / "results.json").is_file() and (workdir / "metrics.jsonl").is_file()
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any(row["split"] == "train" and math.isfinite(row["loss"]) for row in rows)
    export = Path(summary["export"])
    assert export == (workdir / "export").resolve()
    model = jm.from_pretrained(export, task=task)  # the export folder loads, with the labels the notebook saw
    assert list(model.labels) == summary["export_labels"]
    assert len(summary["predictions"]) == 2
    assert summary["model_card"] is True and (export / "README.md").read_text().startswith("---\n")


def check_ner(summary: dict) -> None:
    for split in ("dev", "test"):
        assert 0.0 <= summary[split]["f1"] <= 1.0
    assert "O" in summary["export_labels"] and any(l.startswith("B-") for l in summary["export_labels"])
    for entities in summary["predictions"]:  # jaxft.pipeline: the transformers pipeline's keys
        assert isinstance(entities, list)
        assert all(set(entity) == {"entity_group", "word", "start", "end", "score"} for entity in entities)
    assert summary["evaluate_matches"] is True  # jaxft.evaluate on the test rows = the run's test metrics


@pytest.mark.parametrize("name", ["ner_tpu", "lora_gpu", "sentiment"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    nb = execute(nbformat.read(COLAB / f"{name}.ipynb", as_version=4), workdir, monkeypatch)
    summary = summary_of(nb)
    if name == "sentiment":
        check_common(summary, workdir, jm.SEQUENCE_CLASSIFICATION)
        for split in ("dev", "test"):
            assert 0.0 <= summary[split]["accuracy"] <= 1.0 and "macro_f1" in summary[split]
        assert sorted(summary["export_labels"]) == ["fresh", "rotten"]
        assert [set(p) for p in summary["predictions"]] == [{"label", "score"}] * 2
        assert [p["label"] in ("fresh", "rotten") for p in summary["predictions"]] == [True, True]
        assert math.isfinite(summary["explain_relative_gap"])
        return
    check_common(summary, workdir, jm.TOKEN_CLASSIFICATION)
    check_ner(summary)
    if name == "lora_gpu":
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(summary["adapter_files"])
        assert 0 < summary["trainable_params"] < summary["total_params"]
        assert (workdir / "export_adapter").is_dir()


def test_a_failing_cell_fails(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys; print(sys.executable)"),
                nbformat.v4.new_code_cell("raise RuntimeError('boom')")]
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="boom"):
        execute(nb, tmp_path / "run", monkeypatch)
    assert nb.cells[0].outputs[0]["text"].strip() == sys.executable  # the kernel runs this Python


def test_notebooks_match_their_generator():
    result = subprocess.run([sys.executable, str(COLAB / "build_notebooks.py"), "--check"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_parameters_cell_is_tagged():
    for path in sorted(COLAB.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [cell for cell in nb.cells if cell.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), path.name
        assert "JAXFT_NOTEBOOK_SMOKE" in code[0].source and "JAXFT_SOURCE" in code[0].source
        assert all(not cell.get("outputs") for cell in code), f"{path.name}: committed with outputs"


def test_a_missing_source_stops_the_install_cell_with_a_message(tmp_path, monkeypatch):
    """Outside a checkout and without JAXFT_SOURCE the install cell says what to set (no placeholder URL)."""
    nb = nbformat.read(COLAB / "ner_tpu.ipynb", as_version=4)
    nb.cells = [cell for cell in nb.cells if cell.cell_type == "code"][:2]  # parameters, install
    jupyter_path = kernelspec_dir(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    monkeypatch.setenv("JAXFT_SOURCE", "")
    outside = tmp_path / "outside" / "notebooks"
    outside.mkdir(parents=True)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name=KERNEL, resources={"metadata": {"path": str(outside)}})
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="set JAXFT_SOURCE in the first cell"):
        client.execute()
    assert "YOUR_ORG" not in (COLAB / "ner_tpu.ipynb").read_text()
    printed = "".join(output.get("text", "") for output in nb.cells[1].get("outputs", []))
    assert "runtime: CPU" in printed
