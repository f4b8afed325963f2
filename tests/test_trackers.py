"""W&B (offline) and MLflow (a local file store) through the real libraries, never the network: the
scalars of metrics.jsonl, the resolved config, the probe figures, the same tracker run after a resume,
and one line when a tracker's package is missing."""

import json
import struct
import sys
from collections import Counter

import pytest

from conftest import tiny_overrides
from vslm.config import load_config
from vslm.errors import ConfigError
from vslm.train import figures, trackers
from vslm.train.run_folder import read_run_config
from vslm.train.trainer import Trainer


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)


def run(path, tracker, steps=6, **extra):
    overrides = dict(train__steps=steps, train__eval_every=3, train__checkpoint_every=2,
                     logging__tensorboard="false", logging__trackers=f'["{tracker}"]') | extra
    cfg = load_config("tiny", tiny_overrides(**overrides))
    Trainer(cfg, path, resume=(path / "config.toml").exists()).fit()
    return cfg


def logged(path, key):
    lines = [json.loads(ln) for ln in (path / "metrics.jsonl").read_text().splitlines()]
    return {ln["step"]: ln[key] for ln in lines if key in ln}


def wandb_records(path):
    """The records of a W&B offline run file (its LevelDB-style log of wandb's protobuf Records: 32 KiB
    blocks, each record a 7-byte header of CRC, length and kind), parsed with wandb's own Record."""
    from wandb.proto import wandb_internal_pb2

    data, records, pending, pos = path.read_bytes(), [], b"", 7  # the file's header: ":W&B", magic, version
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending = (b"" if kind in (1, 2) else pending) + data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or the last piece
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_history(run_file):
    rows = {}
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows.setdefault(row["_step"], {}).update(row)
    return rows


def test_wandb_offline_run_holds_the_metrics_the_config_and_the_heatmap(tmp_path):
    pytest.importorskip("wandb")
    run(tmp_path / "r", "wandb")
    run_id = json.loads((tmp_path / "r" / trackers.TRACKERS).read_text())["wandb"]
    [run_file] = (tmp_path / "r" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    history = wandb_history(run_file)
    kinds = Counter(record.WhichOneof("record_type") for record in wandb_records(run_file))
    assert {s: row["loss"] for s, row in history.items() if "loss" in row} == logged(tmp_path / "r", "loss"), \
        f"{run_file.stat().st_size} bytes, records {dict(kinds)}"
    assert {s: row["val_loss"] for s, row in history.items() if "val_loss" in row} == logged(tmp_path / "r", "val_loss")
    probes = [json.loads(ln) for ln in (tmp_path / "r" / "probes.jsonl").read_text().splitlines()]
    assert {s: row["probe/M1"] for s, row in history.items() if "probe/M1" in row} == \
        {p["step"]: p["distribution"]["M1"] for p in probes}
    images = {s: row for s, row in history.items() if "probe/position_loss_heatmap/_type" in row}
    assert sorted(images) == [p["step"] for p in probes] == [0, 1, 2, 4, 6]
    assert images[6]["probe/position_loss_heatmap/height"] == 5 * figures.ROW_PIXELS
    assert (run_file.parent / "files" / images[6]["probe/position_loss_heatmap/path"]).is_file()
    config = {}  # the run record's config, then each config record's update
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):
            items = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in items})
    resolved = read_run_config(tmp_path / "r").model_dump(mode="json")  # vocab_size from the tokenizer
    assert {k: config[k] for k in resolved} == resolved and config["logging"]["trackers"] == ["wandb"]


def test_mlflow_file_store_holds_the_metrics_params_and_probe_figures(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    cfg = run(tmp_path / "r", "mlflow")
    run_id = json.loads((tmp_path / "r" / trackers.TRACKERS).read_text())["mlflow"]
    client = MlflowClient((tmp_path / "r" / trackers.MLFLOW).as_uri())
    losses = client.get_metric_history(run_id, "loss")
    assert {m.step: m.value for m in losses} == logged(tmp_path / "r", "loss") and len(losses) == 6
    val = client.get_metric_history(run_id, "val_loss")
    assert {m.step: m.value for m in val} == logged(tmp_path / "r", "val_loss")
    mlflow_run = client.get_run(run_id)
    params = mlflow_run.data.params
    assert params["model.width"] == str(cfg.model.width) and params["train.steps"] == "6"
    assert params["logging.trackers"] == '["mlflow"]' and mlflow_run.info.status == "FINISHED"
    figures = [a.path for a in client.list_artifacts(run_id, "probes")]
    assert figures == [f"probes/position_loss_heatmap_step_{s:08d}.png" for s in (0, 1, 2, 4, 6)]
    assert "config.json" in [a.path for a in client.list_artifacts(run_id)]


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_resume_continues_the_same_tracker_run(tmp_path, tracker):
    pytest.importorskip(tracker)
    run(tmp_path / "r", tracker, steps=4)
    first = json.loads((tmp_path / "r" / trackers.TRACKERS).read_text())[tracker]
    run(tmp_path / "r", tracker, steps=6)  # --resume, extended
    assert json.loads((tmp_path / "r" / trackers.TRACKERS).read_text())[tracker] == first
    if tracker == "mlflow":
        from mlflow.tracking import MlflowClient

        client = MlflowClient((tmp_path / "r" / trackers.MLFLOW).as_uri())
        steps = [m.step for m in client.get_metric_history(first, "loss")]
        assert sorted(steps) == [1, 2, 3, 4, 5, 6]
        assert client.get_run(first).data.params["train.steps"] == "4"  # an MLflow param never changes
    else:
        # each session of the run is a folder of its own (offline-run-TIME-ID, then -ID-1 in the same second)
        files = sorted((tmp_path / "r" / "wandb").glob(f"offline-run-*-{first}*/run-{first}.wandb"),
                       key=lambda f: f.stat().st_mtime)
        assert len(files) == 2 and set(wandb_history(files[0])) == {0, 1, 2, 3, 4}
        assert {s: row["loss"] for s, row in wandb_history(files[1]).items() if "loss" in row} == \
            {s: v for s, v in logged(tmp_path / "r", "loss").items() if s > 4}


@pytest.mark.parametrize("tracker", ["wandb", "mlflow", "tensorboard"])
def test_a_tracker_without_its_package_is_one_line_before_the_run_folder(tmp_path, monkeypatch, tracker):
    monkeypatch.setitem(sys.modules, tracker, None)  # `import wandb` fails as if it were not installed
    cfg = load_config("tiny", tiny_overrides(train__steps=2, logging__trackers=f'["{tracker}"]'))
    with pytest.raises(ConfigError, match=rf"^logging.trackers has '{tracker}' but the {tracker} package is not "
                                          rf"installed: pip install 'vslm\[{tracker}\]'$"):
        Trainer(cfg, tmp_path / "r").fit()
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value, message", [
    ('["wandb", "wandb"]', "trackers lists wandb more than once"),
    ('["neptune"]', "logging.trackers.0: Input should be 'tensorboard', 'wandb' or 'mlflow', got 'neptune'"),
])
def test_bad_trackers_are_one_line(value, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [f"logging.trackers={value}"])
    with pytest.raises(ConfigError, match="trackers has 'tensorboard' but tensorboard = false"):
        load_config("tiny", ['logging.trackers=["tensorboard"]', "logging.tensorboard=false"])


def test_mlflow_params_are_flat_and_cut_to_the_limit():
    params = trackers.flat_params({"model": {"width": 64, "blocks": [{"w": 1}], "name": "x" * 50}}, limit=20)
    assert params == {"model.width": "64", "model.blocks": '[{"w": 1}]', "model.name": "x" * 17 + "..."}
