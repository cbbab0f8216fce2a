"""train_log.jsonl and the optional trackers receive the same records."""

import json
import sys

import pytest

from tuneloop.errors import UserError
from tuneloop.train.tracking import open_log

RECORDS = [{"step": 1, "epoch": 0, "loss": 2.5, "lr": 1e-4, "tokens_per_s": 100.0},
           {"step": 2, "epoch": 0, "loss": 2.0, "lr": 2e-4, "tokens_per_s": 110.0},
           {"step": 2, "val_loss": 2.2, "early_stopped": True}]


def _write(tmp_path, report_to):
    log = open_log(tmp_path / "train_log.jsonl", [], report_to, params={"lr": 2e-4, "batch_size": 8})
    for rec in RECORDS:
        log.record(rec)
    log.close()
    return [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]


def test_jsonl_restarts_from_history(tmp_path):
    log = open_log(tmp_path / "train_log.jsonl", RECORDS[:1], [])
    log.record(RECORDS[1])
    log.close()
    assert [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()] == RECORDS[:2]


def test_tensorboard_gets_numeric_fields_per_step(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert _write(tmp_path, ["tensorboard"]) == RECORDS
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    loss = [(e.step, round(e.value, 6)) for e in events.Scalars("train/loss")]
    assert loss == [(1, 2.5), (2, 2.0)]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("train/val_loss")] == [(2, 2.2)]
    assert "train/early_stopped" not in events.Tags()["scalars"]  # booleans are not metrics


def test_mlflow_run_has_params_and_metric_history(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _write(tmp_path, ["mlflow"])
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("tuneloop")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["batch_size"] == "8"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "lr")] == [(1, 1e-4), (2, 2e-4)]


def test_unknown_tracker_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown tracker 'wandb'"):
        open_log(tmp_path / "train_log.jsonl", [], ["wandb"])
    assert not (tmp_path / "train_log.jsonl").exists()  # failed before touching the run folder


@pytest.mark.parametrize("tracker,module,package", [("mlflow", "mlflow", "mlflow-skinny"),
                                                    ("tensorboard", "torch.utils.tensorboard", "tensorboard")])
def test_a_missing_tracker_package_is_a_user_error_naming_it(tmp_path, monkeypatch, tracker, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # `import` of a None entry raises ImportError
    with pytest.raises(UserError, match=f"pip install {package}$"):
        open_log(tmp_path / "train_log.jsonl", [], [tracker], {})
