"""Optional Weights & Biases logging (train.wandb=True) in offline mode: the same scalars as TensorBoard."""

import json

import pytest

wandb = pytest.importorskip("wandb")


def wandb_records(run_file):
    """The protobuf records of a .wandb file: a 7-byte header, then LevelDB-log blocks of 32 KiB whose chunks
    are (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last) + payload."""
    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    position, pending, block = 7, b"", 32768
    while position + 7 <= len(data):
        if block - position % block < 7:  # block trailer: skip to the next block
            position += block - position % block
            continue
        length = int.from_bytes(data[position + 4:position + 6], "little")
        kind = data[position + 6]
        payload = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            yield pending
            pending = b""


def wandb_history(run_file):
    """{step: {key: value}} from an offline run's .wandb file (the records W&B would upload)."""
    from wandb.proto import wandb_internal_pb2

    history = {}
    for data in wandb_records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") != "history":
            continue
        items = {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in record.history.item}
        history.setdefault(int(items["step"]), {}).update({k: v for k, v in items.items() if not k.startswith("_")})
    return history


def test_offline_wandb_run_logs_the_tensorboard_scalars(tmp_path, monkeypatch, tiny_bert, small_ner_file):
    from conftest import tiny_ner_config
    from jaxft.tasks.run import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tiny_ner_config(tiny_bert, small_ner_file, **{"train.wandb": True, "train.wandb_project": "jaxft-test",
                                                           "train.num_epochs": 1})
    run(config, tmp_path / "run")
    run_files = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    run_id = (tmp_path / "run" / "wandb_run_id.txt").read_text().strip()
    assert run_id in run_files[0].name
    history = wandb_history(run_files[0])
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    expected = {}
    for line in lines:  # what TensorBoard gets: every numeric value as "split/name"
        for name, value in line.items():
            if name not in ("step", "split") and isinstance(value, (int, float)):
                expected.setdefault(line["step"], {})[f"{line['split']}/{name}"] = float(value)
    assert expected and "train/loss" in expected[max(expected)] and "dev/f1" in expected[max(expected)]
    for step, scalars in expected.items():
        for key, value in scalars.items():
            assert history[step][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (step, key)
