"""Experiment trackers, early stopping and profiling, through the real command line.

Each tracker is read back with its own tools: TensorBoard's EventAccumulator, pandas for
the CSV files, MLflow's client against a real ``mlflow server`` started here on 127.0.0.1,
and W&B's ``wandb leet inspect`` for the offline run files.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from framework.trainer.checkpoint import Checkpointer
from tests.conftest import ROOT, TINY, run_cli

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}
QUICK = ["trainer.limit_batches=3", "trainer.num_threads=1"]  # 3 steps an epoch


# ----------------------------------------------------------------------------- helpers
class MlflowServer:
    """MLflow's tracking server (its app, served by uvicorn as ``mlflow server`` does) on a free
    port of 127.0.0.1, with a SQLite store and artifacts proxied to a folder, in a process group
    of its own. Started without the ``mlflow server`` command: MLflow 3.17's start-up check of
    SQL trace roll-ups needs SQLAlchemy 2, and the locked environment holds 1.4 (pinned by the
    optuna extra); the server itself works with it."""

    def __init__(self, root: Path) -> None:
        from mlflow.server import (
            ARTIFACT_ROOT_ENV_VAR,
            ARTIFACTS_DESTINATION_ENV_VAR,
            BACKEND_STORE_URI_ENV_VAR,
            SERVE_ARTIFACTS_ENV_VAR,
        )

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "server.log", "w")
        env = {**os.environ, BACKEND_STORE_URI_ENV_VAR: f"sqlite:///{root / 'mlflow.db'}", SERVE_ARTIFACTS_ENV_VAR: "true",
               ARTIFACTS_DESTINATION_ENV_VAR: str(root / "artifacts"), ARTIFACT_ROOT_ENV_VAR: "mlflow-artifacts:/"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "mlflow.server.fastapi_app:app", "--host", "127.0.0.1", "--port",
             str(self.port)], env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 240
        while time.time() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError(f"the MLflow server did not answer at {self.url}:\n{(root / 'server.log').read_text()}")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.url)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def tensorboard_steps(folder: Path, tag: str) -> list[int]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def tensorboard_hparams(folder: Path) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.number_value if v.HasField("number_value") else v.string_value for k, v in start.hparams.items()}


def csv_scalars(folder: Path) -> dict[str, dict[int, float]]:
    found: dict[str, dict[int, float]] = {}
    for name in ("train.csv", "epoch.csv", "test.csv"):
        frame = pd.read_csv(folder / name)
        for column in frame.columns.drop("step"):
            rows = frame[["step", column]].dropna()
            found[column] = dict(zip(rows["step"].astype(int), rows[column].astype(float)))
    return found


def wandb_records(run_dir: Path, *flags: str) -> list[dict]:
    (log,) = run_dir.glob("wandb/*run-*/run-*.wandb")
    out = subprocess.run([str(BIN / "wandb"), "leet", "inspect", "--json", *flags, str(log)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "WANDB_MODE": "offline"}, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()] if not flags else [
        json.loads(out.stdout)]


def wandb_history(run_dir: Path) -> dict[str, dict[int, float]]:
    found: dict[str, dict[int, float]] = {}
    for record in wandb_records(run_dir):
        if record["type"] == "history":
            step = int(record["history"]["step"]["num"])
            for key, value in record["history"]["item"].items():
                if not key.startswith("_"):
                    found.setdefault(key, {})[step] = value
    return found


def tiny(data_dir: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [*TINY, f"dataset.root={data_dir}/tones-tiny", f"hydra.run.dir={run_dir}", *QUICK, *overrides]


def error_line(stderr: str) -> str:
    """The one error line a failed command ends with."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr and stderr.strip().endswith(errors[0]), stderr
    return errors[0]


# --------------------------------------------------------------------------- trackers
def test_one_run_gives_the_same_values_to_tensorboard_csv_mlflow_and_wandb(tmp_path, data_dir, mlflow_server):
    run_dir = tmp_path / "run"
    run_cli("framework.train", tiny(data_dir, run_dir, "logger=many", f"loggers.mlflow.tracking_uri={mlflow_server.url}",
                                    "loggers.wandb.mode=offline"), cwd=tmp_path)
    result = json.loads((run_dir / "metrics.json").read_text())
    steps = result["history"][-1]["step"]

    tb = tensorboard_scalars(run_dir / "tensorboard")
    table = csv_scalars(run_dir / "csv")
    wandb = wandb_history(run_dir)
    ids = json.loads((run_dir / "trackers.json").read_text())
    client = mlflow_server.client()
    run = client.get_run(ids["mlflow"]["run_id"])
    tags = ["train/loss", "train/lr", "train/grad_norm", "epoch/train_loss", "epoch/valid_loss", "epoch/valid_cer"]
    for tag in tags:
        mlflow = {m.step: m.value for m in client.get_metric_history(run.info.run_id, tag)}
        assert sorted(table[tag]) == sorted(mlflow) == sorted(wandb[tag]) == sorted(tb[tag]), tag
        for step, value in table[tag].items():
            assert mlflow[step] == wandb[tag][step] == pytest.approx(value, rel=1e-12), (tag, step)
            assert tb[tag][step] == pytest.approx(value, rel=1e-6), (tag, step)  # TensorBoard keeps float32
    assert sorted(table["train/loss"]) == list(range(1, steps + 1))  # every step (logger.log_every_n_steps=1)
    assert [table["epoch/valid_cer"][h["step"]] for h in result["history"]] == [h["valid_cer"] for h in
                                                                                result["history"]]
    # the test metrics, at the step of the checkpoint they were computed with
    assert table["test_cer"] == {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_cer")}

    # the resolved config as flat hyperparameters
    assert run.data.params["trainer.max_epochs"] == "2" and run.data.params["model.hidden_size"] == "32"
    hparams = pd.read_csv(run_dir / "csv" / "hparams.csv").set_index("key")["value"]
    assert hparams["model.hidden_size"] == "32"
    assert tensorboard_hparams(run_dir / "tensorboard")["model.hidden_size"] == 32
    (summary,) = wandb_records(run_dir, "--summary")
    assert summary["config"]["model.hidden_size"] == 32 and summary["state"] == "finished"

    # the final metrics, the result files and the best checkpoint
    final = result["metrics"]
    best = Checkpointer(run_dir / "checkpoints", monitor="cer", mode="min").best()
    assert run.info.status == "FINISHED" and run.data.tags["best_checkpoint"] == str(best)
    assert run.data.metrics["final/test_cer"] == summary["summary"]["final/test_cer"] == final["test_cer"]
    assert pd.read_csv(run_dir / "csv" / "final.csv")["final/test_cer"].tolist() == [final["test_cer"]]
    assert tb["final/test_cer"][steps] == pytest.approx(final["test_cer"])
    kept = {"config.yaml", "metrics.json", "test_transcripts.tsv"}
    assert kept <= {a.path for a in client.list_artifacts(run.info.run_id)}
    (files,) = run_dir.glob("wandb/*run-*/files")
    assert kept <= {p.name for p in files.iterdir()}
    local = tmp_path / "download"
    client.download_artifacts(run.info.run_id, "metrics.json", str(local))
    assert (local / "metrics.json").read_text() == (run_dir / "metrics.json").read_text()


@pytest.mark.slow  # 15-30 s: `make test-slow` runs it
def test_a_sweep_is_one_experiment_and_one_group_with_a_run_per_job_and_the_summary(tmp_path, data_dir,
                                                                                       mlflow_server):
    sweep = tmp_path / "lr-sweep"
    run_cli("framework.train", ["-m", *TINY, f"dataset.root={data_dir}/tones-tiny", *QUICK, "trainer.max_epochs=1",
                                "optimizer.lr=1e-3,3e-3", "logger=many", "loggers.wandb.mode=offline",
                                f"loggers.mlflow.tracking_uri={mlflow_server.url}", f"hydra.sweep.dir={sweep}"],
            cwd=tmp_path)
    client = mlflow_server.client()
    experiment = client.get_experiment_by_name("lr-sweep")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["0", "1", "summary"]
    assert [runs[j].data.params["optimizer.lr"] for j in "01"] == ["0.001", "0.003"]
    assert all(runs[j].data.tags["sweep"] == "lr-sweep" and runs[j].info.status == "FINISHED" for j in "01")
    for job in "01":
        cer = json.loads((sweep / job / "metrics.json").read_text())["metrics"]["valid_cer"]
        assert runs[job].data.metrics["final/valid_cer"] == cer
    assert {"summary.md", "summary.csv", "summary.png"} <= {a.path for a in
                                                          client.list_artifacts(runs["summary"].info.run_id)}
    # TensorBoard's HParams view: each job's own event folder holds its hyperparameters
    assert [tensorboard_hparams(sweep / j / "tensorboard")["optimizer.lr"] for j in "01"] == [1e-3, 3e-3]
    for job in "01":
        (summary,) = wandb_records(sweep / job, "--summary")
        assert summary["config"]["optimizer.lr"] == float(runs[job].data.params["optimizer.lr"])
        run = next(r for r in wandb_records(sweep / job) if r["type"] == "run")
        assert run["run"]["run_group"] == "lr-sweep"


@pytest.mark.slow  # its own server and a run long enough to kill the server in the middle, ~1 min
def test_killing_the_mlflow_server_mid_run_costs_one_warning_and_no_training(tmp_path, data_dir):
    server = MlflowServer(tmp_path)
    run_dir = tmp_path / "run"
    epochs = 6
    cmd = [sys.executable, "-m", "framework.train",
           *tiny(data_dir, run_dir, f"trainer.max_epochs={epochs}", "logger=many", "~loggers.wandb",
                 f"loggers.mlflow.tracking_uri={server.url}")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = server.client()
        deadline = time.time() + 300
        history = []
        while not history and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            ids = run_dir / "trackers.json"
            if ids.is_file():
                history = client.get_metric_history(json.loads(ids.read_text())["mlflow"]["run_id"], "epoch/valid_cer")
        assert history and proc.poll() is None, "the first epoch's metrics never reached the server in time"
        server.kill()
        _, stderr = proc.communicate(timeout=600)
    finally:
        server.stop()
    assert proc.returncode == 0, stderr
    failures = [line for line in stderr.splitlines() if "mlflow: sending failed since step" in line]
    assert len(failures) == 1, stderr  # warned once
    unsent = [line for line in stderr.splitlines() if line.startswith("mlflow: ") and " not sent (" in line]
    assert len(unsent) == 1 and "sending failed since step" in unsent[0], stderr
    assert int(unsent[0].split()[1]) > 0
    # the local logs are complete
    result = json.loads((run_dir / "metrics.json").read_text())
    steps = result["history"][-1]["step"]
    assert len(result["history"]) == epochs
    assert pd.read_csv(run_dir / "csv" / "train.csv")["step"].tolist() == list(range(1, steps + 1))
    assert len(pd.read_csv(run_dir / "csv" / "epoch.csv")) == epochs
    assert tensorboard_steps(run_dir / "tensorboard", "train/loss") == list(range(1, steps + 1))


@pytest.mark.slow  # two processes, ~1 min
def test_under_torchrun_only_rank_0_records(tmp_path, data_dir, monkeypatch):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "framework.train",
           *tiny(data_dir, run_dir, "trainer.device=cpu", "logger=many", "~loggers.wandb",
                 f"loggers.mlflow.tracking_uri=file:{tmp_path / 'mlruns'}")]
    env = {**ENV, "MLFLOW_ALLOW_FILE_STORE": "true", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(f"file:{tmp_path / 'mlruns'}")
    (run,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    steps = json.loads((run_dir / "metrics.json").read_text())["history"][-1]["step"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, steps + 1))
    assert pd.read_csv(run_dir / "csv" / "train.csv")["step"].tolist() == list(range(1, steps + 1))
    assert tensorboard_steps(run_dir / "tensorboard", "train/loss") == list(range(1, steps + 1))


def test_a_tracker_whose_extra_is_missing_is_named_in_one_line(tmp_path, data_dir):
    stub = tmp_path / "stub" / "mlflow"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('No module named mlflow')\n")
    proc = run_cli("framework.train", tiny(data_dir, tmp_path / "run", "logger=mlflow"), cwd=tmp_path, check=False,
                   env={"PYTHONPATH": f"{stub.parent}:{ROOT}"})
    assert proc.returncode == 2
    assert error_line(proc.stderr) == ("error: logger=mlflow (loggers.mlflow) needs the mlflow package: pip install -e "
                                     ".[mlflow] (or choose another logger, e.g. logger=tensorboard)")


def test_a_typo_in_a_tracker_is_named_before_anything_runs(tmp_path):
    proc = run_cli("framework.train", ["logger=many", "+loggers.mlflow.request_timout_s=3",
                                       f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    assert error_line(proc.stderr) == ("error: loggers.mlflow.request_timout_s: unknown key; did you mean "
                                     "loggers.mlflow.request_timeout_s?")


def test_a_tracker_of_your_own_receives_every_event(tmp_path, data_dir):
    (tmp_path / "my_tracker.py").write_text(
        "import json\n"
        "from framework.trainer.loggers import Tracker\n\n"
        "class Recorder(Tracker):\n"
        "    def __init__(self, run_dir, name=None, group=None, path='events.jsonl'):\n"
        "        super().__init__(run_dir, name, group)\n"
        "        self.file = open(self.run_dir / path, 'a')\n\n"
        "    def scalars(self, values, step):\n"
        "        self.file.write(json.dumps(['scalars', step, values]) + '\\n')\n\n"
        "    def hyperparams(self, params):\n"
        "        self.file.write(json.dumps(['hyperparams', params]) + '\\n')\n\n"
        "    def finish(self, metrics, best_checkpoint):\n"
        "        self.file.write(json.dumps(['finish', metrics, str(best_checkpoint)]) + '\\n')\n\n"
        "    def close(self, error=None):\n"
        "        self.file.close()\n")
    run_dir = tmp_path / "run"
    run_cli("framework.train", tiny(data_dir, run_dir, "trainer.max_epochs=1", "logger=csv",
                                    "+loggers.mine._target_=my_tracker.Recorder"), cwd=tmp_path,
            env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[0][0] == "hyperparams" and events[0][1]["loggers.mine._target_"] == "my_tracker.Recorder"
    steps = json.loads((run_dir / "metrics.json").read_text())["history"][-1]["step"]
    assert [e[1] for e in events if e[0] == "scalars" and "train/loss" in e[2]] == list(range(1, steps + 1))
    assert events[-1][0] == "finish" and events[-1][1]["final/test_cer"] > 0
    assert pd.read_csv(run_dir / "csv" / "train.csv")["step"].tolist() == list(range(1, steps + 1))


class _Service(http.server.BaseHTTPRequestHandler):
    delay_s = 0.0
    received: list[bytes] = []

    def do_POST(self) -> None:
        time.sleep(self.delay_s)
        self.received.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def service():
    """A real HTTP service on 127.0.0.1 that records what is posted to it."""
    handler = type("Handler", (_Service,), {"received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, handler, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


def post(url: str, body: bytes) -> None:
    urllib.request.urlopen(url, data=body, timeout=2).read()


def test_a_service_that_goes_away_costs_one_warning_and_a_count_of_what_it_lacks(service, caplog):
    from framework.trainer.loggers.sender import BackgroundSender

    server, handler, url = service
    sender = BackgroundSender("svc", close_timeout_s=30)
    for step in (1, 2):
        sender.submit(lambda step=step: post(url, b"%d" % step), step, values=3)
    deadline = time.time() + 30
    while len(handler.received) < 2 and time.time() < deadline:
        time.sleep(0.01)
    server.shutdown()
    server.server_close()
    for step in (3, 4, 5):
        sender.submit(lambda step=step: post(url, b"%d" % step), step, values=3)
    sender.submit(lambda: post(url, b"file"), 5, files=1)
    assert sender.close() == "svc: 9 values and 1 file not sent (sending failed since step 3)"
    assert handler.received == [b"1", b"2"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("svc: sending failed since step 3 (URLError")


def test_a_slow_service_never_holds_training_up(service):
    from framework.trainer.loggers.sender import BackgroundSender

    _, handler, url = service
    handler.delay_s = 1.0
    sender = BackgroundSender("svc", close_timeout_s=1.5)
    start = time.perf_counter()
    for step in range(1, 6):
        sender.submit(lambda step=step: post(url, b"%d" % step), step, values=2)
    assert time.perf_counter() - start < 0.5  # queued, not sent, while training goes on
    line = sender.close()
    assert time.perf_counter() - start < 3.0  # closing waits a bounded time
    # the request being sent at the end is not known to arrive: it counts as not sent
    assert line in {f"svc: {n} values not sent (not sent within 1.5 s at the end of the run)" for n in (8, 10)}


def test_csv_files_of_a_resumed_run_keep_one_row_per_step(tmp_path):
    from framework.trainer.loggers import CSVLogger

    first = CSVLogger(tmp_path)
    for step in range(1, 6):
        first.scalars({"train/loss": float(step)}, step)
    first.close()  # stopped after step 5; its newest checkpoint holds step 3
    resumed = CSVLogger(tmp_path)
    for step in range(4, 7):
        resumed.scalars({"train/loss": 10.0 * step, "train/grad_norm": 1.0}, step)
    resumed.close()
    frame = pd.read_csv(tmp_path / "csv" / "train.csv")
    assert frame["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert frame["train/loss"].tolist() == [1, 2, 3, 40, 50, 60]
    assert frame["train/grad_norm"].isna().tolist() == [True] * 3 + [False] * 3  # a column first seen on resume


# ---------------------------------------------------------------------- early stopping
def test_early_stopping_counts_validations_without_improvement_and_resumes_its_count():
    from framework.trainer.early_stopping import EarlyStopping

    stopper = EarlyStopping(patience=2, min_delta=0.01, mode="min", monitor="cer")
    assert [stopper.update(v) for v in (0.5, 0.495, 0.4)] == [False, False, False]  # 0.495: not by more than 0.01
    assert stopper.update(0.399) is False
    resumed = EarlyStopping(patience=2, min_delta=0.01, mode="min", monitor="cer")
    resumed.load_state_dict(stopper.state_dict())
    assert resumed.update(0.41) is True and resumed.stopped
    assert EarlyStopping(None).update(1.0) is False  # off


def newest_state(run_dir: Path) -> dict:
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    return torch.load(run_dir / "checkpoints" / max(index, key=lambda e: e["step"])["file"], weights_only=True)


# the weights barely move (only batch-norm statistics do): the validation loss stays within min_delta
PLATEAU = ["scheduler=constant", "optimizer.lr=1e-12", "trainer.max_epochs=8", "trainer.checkpoint.monitor=loss",
           "trainer.early_stopping.patience=2", "trainer.early_stopping.min_delta=0.5"]


def test_early_stopping_stops_on_a_plateau_with_status_0(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    proc = run_cli("framework.train", tiny(data_dir, run_dir, *PLATEAU, "logger=csv"), cwd=tmp_path)
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]  # the best at epoch 1, then 2 without improvement
    assert all(abs(h["valid_loss"] - history[0]["valid_loss"]) < 0.5 for h in history)
    assert "early stopping: valid_loss has not improved on its best" in proc.stderr
    assert newest_state(run_dir)["early_stopping"] == {"best": history[0]["valid_loss"], "without_improvement": 2,
                                                       "stopped": True}
    assert pd.read_csv(run_dir / "csv" / "test.csv")["test_cer"].notna().all()  # then tested, as any run


@pytest.mark.slow  # three runs and an evaluation, ~1 min
def test_a_run_stopped_by_sigterm_and_resumed_stops_at_the_same_epoch_in_the_same_tracked_run(tmp_path, data_dir,
                                                                                               monkeypatch):
    args = [*PLATEAU, "trainer.checkpoint.every_n_steps=1", "logger=many", "~loggers.wandb",
            f"loggers.mlflow.tracking_uri=file:{tmp_path / 'mlruns'}"]
    env = {"MLFLOW_ALLOW_FILE_STORE": "true"}
    straight = tmp_path / "straight"
    run_cli("framework.train", tiny(data_dir, straight, *args), cwd=tmp_path, env=env)
    history = json.loads((straight / "metrics.json").read_text())["history"]
    steps = history[0]["steps"]

    run_dir = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "framework.train", *tiny(data_dir, run_dir, *args)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**ENV, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    target = run_dir / "checkpoints" / f"ckpt-{2 * steps + 1:09d}.pt"  # a step into epoch 3: one validation to go
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert newest_state(run_dir)["early_stopping"]["without_improvement"] == 1
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(f"file:{tmp_path / 'mlruns'}")
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"

    run_cli("framework.train", tiny(data_dir, run_dir, *args, "trainer.resume=auto"), cwd=tmp_path, env=env)
    resumed = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in resumed] == [1, 2, 3] and resumed[-1]["step"] == history[-1]["step"]
    assert pd.read_csv(run_dir / "csv" / "epoch.csv")["step"].tolist() == [h["step"] for h in history]
    # one MLflow run, each step once, finished; an evaluation adds its test metrics to it
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"] == run_id
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(1, 3 * steps + 1))
    assert client.get_run(run_id).info.status == "FINISHED"
    run_cli("framework.evaluate", [str(run_dir)], cwd=tmp_path, env=env)
    assert len(client.get_metric_history(run_id, "test_cer")) == 2 and client.get_run(run_id).info.status == "FINISHED"


def test_early_stopping_without_a_validation_set_is_refused(tmp_path, data_dir):
    proc = run_cli("framework.train", tiny(data_dir, tmp_path / "run", "dataset.valid=null",
                                           "trainer.early_stopping.patience=2"), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert error_line(proc.stderr) == ("error: trainer.early_stopping.patience=2: the run has no validation set to "
                                     "watch; give one (dataset.valid) or set trainer.early_stopping.patience=null")


# ---------------------------------------------------------------------------- profiling
def test_the_profiler_writes_a_trace_and_a_table_of_operators(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    proc = run_cli("framework.train", tiny(data_dir, run_dir, "trainer.max_epochs=1", "trainer.profile=1"),
                   cwd=tmp_path)
    trace = json.loads((run_dir / "profile" / "trace-rank0.pt.trace.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any(n.startswith("aten::") for n in names) and "ProfilerStep#2" in names  # after 2 warm-up steps
    table = (run_dir / "profile" / "ops-rank0.txt").read_text()
    assert "Self CPU" in table and "aten::" in table
    assert "profile of 1 training steps" in proc.stderr
