"""Training log and experiment tracking: train_log.jsonl always, TensorBoard and MLflow when configured.

    log = open_log(Path("runs/x/train_log.jsonl"), history=[], report_to=["tensorboard"], params={...})
    log.record({"step": 5, "loss": 0.41, "lr": 2e-4, "tokens_per_s": 190.0})
    log.close()

    tensorboard --logdir runs/x/tensorboard
    mlflow ui --backend-store-uri runs/x/mlruns          # unless MLFLOW_TRACKING_URI points elsewhere

Every record goes to the JSONL file; its numeric fields (except `step` and `epoch`) go to each tracker as
`train/<name>` at that step. The packages are optional (`pip install tensorboard mlflow-skinny`); naming a
tracker whose package is missing fails before training starts, not after an hour.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from tuneloop.errors import UserError


def _require(module: str, tracker: str, package: str):
    """The tracker's module, or a UserError naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"train.report_to has {tracker} but the package is missing: pip install {package}") from e


class TensorBoardSink:
    def __init__(self, run_dir: Path, params: dict):
        tensorboard = _require("torch.utils.tensorboard", "tensorboard", "tensorboard")
        self.writer = tensorboard.SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(params, indent=2, default=str) + "\n```")

    def log(self, step: int, values: dict) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"train/{k}", v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowSink:
    def __init__(self, run_dir: Path, params: dict):
        self.mlflow = mlflow = _require("mlflow", "mlflow", "mlflow-skinny")
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # A file store inside the run folder: works with the light `mlflow-skinny` (a SQLite store needs the
            # full mlflow), and MLflow 3 keeps it behind this opt-in. Point MLFLOW_TRACKING_URI at a server
            # to share runs.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "tuneloop"))
        self.run = mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})  # MLflow caps a value at 500 chars

    def log(self, step: int, values: dict) -> None:
        self.mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


SINKS = {"tensorboard": TensorBoardSink, "mlflow": MlflowSink}


class RunLog:
    """The JSONL log plus the configured trackers; `record` writes one entry to all of them."""

    def __init__(self, path: Path, history: list, sinks: list):
        # Restart the file from the (possibly restored) history, so a resumed run has no duplicate lines;
        # trackers already hold those points from before the interruption.
        self.file = open(path, "w", encoding="utf-8")
        for rec in history:
            self.file.write(json.dumps(rec) + "\n")
        self.sinks = sinks

    def record(self, rec: dict) -> None:
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        values = {k: float(v) for k, v in rec.items()
                  if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for sink in self.sinks:
            sink.log(int(rec.get("step", 0)), values)

    def close(self) -> None:
        self.file.close()
        for sink in self.sinks:
            sink.close()


def open_log(path: Path | None, history: list, report_to: list = (), params: dict | None = None) -> RunLog | None:
    """A RunLog writing to `path` (None = no log, e.g. on ranks other than 0) and the named trackers."""
    if path is None:
        return None
    unknown = [name for name in report_to if name not in SINKS]
    if unknown:
        raise UserError(f"train.report_to: unknown tracker {unknown[0]!r} (valid: {', '.join(SINKS)})")
    sinks = [SINKS[name](Path(path).parent, params or {}) for name in report_to]
    return RunLog(Path(path), history, sinks)
