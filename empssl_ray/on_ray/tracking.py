"""Experiment tracking in MLflow or Weights & Biases, through Ray's integrations
(`ray.air.integrations.mlflow.setup_mlflow`, `.wandb.setup_wandb`).

One tracked run per empssl-ray run (per run dir): its id is kept in every checkpoint, and a
start without one finds it again (MLflow: by the run dir's tag; W&B: an id derived from the run
dir), so a resume or a restart continues the same tracked run. Only rank 0 tracks. Metrics reach
the tracker when the checkpoint holding their steps has been saved: a restart trains the steps
after its checkpoint again, and each step is logged once. A sweep's trials are runs of one
experiment (the sweep's name), each with its own parameters.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from empssl_ray.config import ConfigError, PretrainConfig
from empssl_ray.data import storage
from empssl_ray.errors import UserError

RUN_DIR_TAG = "empssl_ray.run_dir"  # MLflow: the tag that finds a run's tracked run again
EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}


def flat_params(cfg: PretrainConfig) -> dict[str, Any]:
    """The config as tracker parameters: {"optim.lr": 0.1, "patches.num_patches": 20, ...}."""
    flat: dict[str, Any] = {}
    for section, values in asdict(cfg).items():
        if not isinstance(values, dict):
            flat[section] = values
            continue
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, int | float | str) else str(value)
    return flat


def wandb_run_id(run_dir: str) -> str:
    """A W&B run id that is the same at every start of the run in `run_dir`."""
    return hashlib.sha1(run_dir.encode()).hexdigest()[:16]


def numeric(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a report (booleans and text left out), keys prefixed."""
    return {
        f"{prefix}{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("step", "kind")
    }


def mlflow_uri(cfg: PretrainConfig) -> str | None:
    """Where MLflow tracks, the same for the driver and every worker: MLflow's default store
    (and a relative sqlite path) lives in each process's working directory, which Ray's
    workers do not share with the driver. Without tracking.uri (nor MLFLOW_TRACKING_URI): one
    SQLite file beside the run's local storage.

    Raises:
        ConfigError: a file:// store (MLflow 3 refuses it), or no URI for a run on object
            storage (a SQLite file cannot live there): one line saying what to pass.
    """
    t = cfg.tracking
    if t.backend != "mlflow":
        return t.uri
    uri = t.uri or os.environ.get("MLFLOW_TRACKING_URI")
    runs = storage.resolve(cfg.run.storage_path)
    if uri is None and storage.is_uri(runs):
        raise ConfigError(
            f"tracking.backend=mlflow with run.storage_path={runs} needs tracking.uri: an "
            "MLflow server (http://host:5000), databricks, or sqlite:////a/path/every/node/"
            "sees/mlflow.db"
        )
    if uri is None:
        return f"sqlite:///{os.path.join(runs, 'mlflow.db')}"
    if uri.startswith("file:") or "://" not in uri:
        raise ConfigError(
            f"tracking.uri={uri}: MLflow 3 refuses a file store; pass tracking.uri=sqlite:///"
            f"{os.path.join(runs, 'mlflow.db')} (one file), or an MLflow server (http://host:5000)"
        )
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):  # relative
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
    return uri


def _require(backend: str) -> Any:
    try:
        return __import__(EXTRAS[backend])
    except ImportError:
        raise UserError(
            f"tracking.backend={backend} needs {EXTRAS[backend]}: pip install "
            f"'empssl-ray[{backend}]' (or tracking.backend=none)"
        ) from None


class Tracker:
    """The tracked run of one empssl-ray run, opened (or reopened) on the process that logs.

    Args:
        cfg: the run's config (its `tracking` section says where).
        run_dir: the run's folder or URI: the tracked run's identity.
        run_id: the tracked run's id from the checkpoint resumed, or None.
    """

    def __init__(self, cfg: PretrainConfig, run_dir: str, run_id: str | None = None) -> None:
        t = cfg.tracking
        self.backend = t.backend
        self.experiment = t.experiment or "empssl-ray"
        if self.backend == "mlflow":
            self.mlflow = _require("mlflow")
            logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "View run" lines
            self.mlflow.set_tracking_uri(t.uri)
            run_id = run_id or self._find(run_dir)
            if run_id is None:
                from ray.air.integrations.mlflow import setup_mlflow

                setup_mlflow(
                    flat_params(cfg),
                    tracking_uri=t.uri,
                    experiment_name=self.experiment,
                    run_name=cfg.run.name,
                    create_experiment_if_not_exists=True,
                    tags={RUN_DIR_TAG: run_dir},
                    rank_zero_only=False,  # the caller is rank 0 (or the driver)
                )
                run_id = self.mlflow.active_run().info.run_id
            else:
                self.mlflow.start_run(run_id=run_id)
        else:
            _require("wandb")
            from ray.air.integrations.wandb import setup_wandb

            run_id = run_id or wandb_run_id(run_dir)
            self.run = setup_wandb(
                flat_params(cfg),
                rank_zero_only=False,
                project=self.experiment,
                trial_id=run_id,
                trial_name=cfg.run.name,
                group=None,
                resume="allow",
                dir=t.wandb_dir,
            )
        self.run_id: str = run_id

    def _find(self, run_dir: str) -> str | None:
        """The MLflow run tagged with this run dir, newest first, or None."""
        experiment = self.mlflow.get_experiment_by_name(self.experiment)
        if experiment is None:
            return None
        found = self.mlflow.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{RUN_DIR_TAG}` = '{run_dir}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
            output_format="list",
        )
        return found[0].info.run_id if found else None

    def log(self, rows: Iterable[tuple[int, dict[str, float]]]) -> None:
        """Logs metric rows, each at its step (steps of rows in order, as W&B requires)."""
        merged: dict[int, dict[str, float]] = {}
        for step, metrics in rows:
            merged.setdefault(step, {}).update(metrics)
        for step, metrics in sorted(merged.items()):
            if self.backend == "mlflow":
                self.mlflow.log_metrics(metrics, step=step)
            else:
                self.run.log(metrics, step=step)

    def log_files(self, files: dict[str, bytes]) -> None:
        """Artifacts: file name -> its bytes (read from any storage by the caller)."""
        if not files:
            return
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for name, blob in files.items():
                paths.append(os.path.join(tmp, name))
                with open(paths[-1], "wb") as f:
                    f.write(blob)
            if self.backend == "mlflow":
                for path in paths:
                    self.mlflow.log_artifact(path)
                return
            import wandb

            artifact = wandb.Artifact(f"outputs-{self.run_id}", type="run-outputs")
            for path in paths:
                artifact.add_file(path, policy="mutable")  # copied: the folder goes
            self.run.log_artifact(artifact)

    def close(self) -> None:
        if self.backend == "mlflow":
            self.mlflow.end_run()
        else:
            self.run.finish()


def track_outcome(
    cfg: PretrainConfig, run_dir: str, checkpoint: str | None, step: int, evaluation: dict | None
) -> None:
    """The driver's end of a run, in its tracked run: the evaluation's figures (eval/<encoder>/
    <metric>) and, as artifacts, eval.json, curves.png, the embeddings' pictures and the encoder
    (TorchScript, with export.json) of `checkpoint` (None: a run that keeps none, e.g.
    ray.num_workers=0)."""
    from empssl_ray.data import storage
    from empssl_ray.evaluation.export import write_export
    from empssl_ray.runs.checkpoints import load_checkpoint

    run_id = load_checkpoint(checkpoint).get("tracking_run_id") if checkpoint else None
    files = {
        e.name: storage.read_bytes(e.location)
        for e in storage.list_dir(run_dir)
        if e.name in ("eval.json", "curves.png")
        or (e.name.startswith("embeddings-") and e.name.endswith(".png"))
    }
    with tempfile.TemporaryDirectory() as tmp:
        exported = write_export(checkpoint, tmp, "torchscript") if checkpoint else {}
        for name, location in exported.items():
            with open(location, "rb") as f:
                files[name] = f.read()
    tracker = Tracker(cfg, run_dir, run_id)
    try:
        rows = [
            numeric(metrics, f"eval/{name.replace(' ', '_')}/")
            for name, metrics in (evaluation or {}).items()
            if isinstance(metrics, dict)
        ]
        tracker.log([(step, row) for row in rows])
        tracker.log_files(files)
    finally:
        tracker.close()
