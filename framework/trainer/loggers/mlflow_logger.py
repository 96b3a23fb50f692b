"""MLflow: metrics, parameters, files and the run's status, sent through MLflow's client."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from framework.trainer.loggers.base import MissingExtra, Tracker, save_run_id, saved_run_id
from framework.trainer.loggers.sender import BackgroundSender
from framework.trainer.stopping import StopRequested

log = logging.getLogger(__name__)
BATCH = 100  # MLflow takes at most 100 parameters (and 1000 metrics) per request


class MLflowLogger(Tracker):
    """One MLflow run per run directory, in ``experiment_name`` (default: the sweep
    directory's name for the jobs of a sweep, else MLflow's Default experiment). A resumed
    run and ``framework.evaluate`` continue the same MLflow run (its id is kept in
    ``trackers.json``). Requests go out on a thread of their own with bounded timeouts and
    retries: a server that stops answering costs one warning and a count of what it lacks at
    the end, never training time. ``tracking_uri`` null: ``MLFLOW_TRACKING_URI``, else MLflow's default."""

    def __init__(self, run_dir: str | Path, name: str | None = None, group: str | None = None,
                 tracking_uri: str | None = None, experiment_name: str | None = None,
                 tags: dict[str, str] | None = None, request_timeout_s: int = 10, max_retries: int = 2,
                 close_timeout_s: float = 60.0) -> None:
        super().__init__(run_dir, name, group)
        try:
            import mlflow
            from mlflow.entities import Metric, Param
        except ImportError:
            raise MissingExtra("mlflow", "mlflow", "logger=mlflow (loggers.mlflow)") from None
        # MLflow's HTTP client reads these for every request; its defaults retry for minutes
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(request_timeout_s)
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
        os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        self.client = mlflow.MlflowClient(self.tracking_uri)
        self.experiment_name = experiment_name or group or "Default"
        self.tags = {**(tags or {}), "run_dir": str(self.run_dir.resolve()), **({"sweep": group} if group else {})}
        self._metric, self._param = Metric, Param
        self.sender = BackgroundSender("mlflow", close_timeout_s=close_timeout_s)
        self.run_id: str | None = None
        self.owns_status = False  # this process started the MLflow run (or resumed its training)
        self.step = 0

    # everything below ``_open`` runs on the sender's thread
    def _open(self) -> str:
        if self.run_id is not None:
            return self.run_id
        saved = saved_run_id(self.run_dir, "mlflow")
        if saved and saved.get("tracking_uri") == self.tracking_uri:
            self.run_id = saved["run_id"]
            return self.run_id
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(self.experiment_name)
            except Exception:  # another job of the sweep created it first
                experiment = self.client.get_experiment_by_name(self.experiment_name)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        else:
            experiment_id = experiment.experiment_id
        self.run_id = self.client.create_run(experiment_id, run_name=self.name, tags=self.tags).info.run_id
        self.owns_status = True
        save_run_id(self.run_dir, "mlflow", {"tracking_uri": self.tracking_uri, "run_id": self.run_id})
        return self.run_id

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(k, float(v), now, step) for k, v in values.items()]
        run_id = self._open()
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + BATCH])

    def _log_params(self, params: dict[str, str]) -> None:
        run_id = self._open()
        if not self.owns_status:  # a resumed run: MLflow refuses to change a parameter's value
            self.client.update_run(run_id, status="RUNNING")
            self.owns_status = True
            known = self.client.get_run(run_id).data.params
            changed = sorted(k for k, v in params.items() if k in known and known[k] != v)
            if changed:
                log.info("mlflow: parameters keep the values the run started with; changed since: %s",
                         ", ".join(changed))
            params = {k: v for k, v in params.items() if k not in known}
        items = [self._param(k, v) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(run_id, params=items[i:i + BATCH])

    # events: queued, never waited for
    def scalars(self, values: dict[str, float], step: int) -> None:
        values = dict(values)
        self.sender.submit(lambda: self._log_metrics(values, step), step, values=len(values))
        self.step = max(self.step, step)  # the final metrics go at the last training step

    def text(self, tag: str, text: str, step: int) -> None:
        self.sender.submit(lambda: self.client.log_text(self._open(), text, f"text/{tag}/step-{step:09d}.txt"),
                           step, files=1)

    def hyperparams(self, params: dict[str, Any]) -> None:
        strings = {k: str(v) for k, v in params.items()}
        self.sender.submit(lambda: self._log_params(strings), self.step, values=len(strings))

    def artifact(self, path: Path) -> None:
        self.sender.submit(lambda: self.client.log_artifact(self._open(), str(path)), self.step, files=1)

    def finish(self, metrics: dict[str, float], best_checkpoint: Path | None) -> None:
        self.scalars(metrics, self.step)
        if best_checkpoint is not None:
            self.sender.submit(lambda: self.client.set_tag(self._open(), "best_checkpoint", str(best_checkpoint)),
                               self.step, values=1)

    def close(self, error: BaseException | None = None) -> str | None:
        if error is None:
            status = "FINISHED"
        else:
            status = "KILLED" if isinstance(error, (StopRequested, KeyboardInterrupt)) else "FAILED"

        def end() -> None:
            if self.owns_status:  # an evaluation of a finished run leaves its status alone
                self.client.set_terminated(self._open(), status)

        if self.sender.submitted:  # a process that recorded nothing has no MLflow run to end
            self.sender.submit(end, self.step)
        return self.sender.close()
