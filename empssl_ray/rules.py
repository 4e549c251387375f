"""Checks of a composed config that fail in the first second with one line, instead of deep
inside a Ray worker after minutes of start-up: values Ray, PyTorch or the method reject, and
`experiment=` names that match no preset (Hydra skips an optional preset it cannot find)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

from empssl_ray.config import ConfigError, PretrainConfig
from empssl_ray.evaluation.embedding_map import MAP_METHODS, umap_installed
from empssl_ray.presets import PRESET_DIR

CHUNK_FORMS = "off, auto, or the most patches per forward (e.g. 512)"


def parse_chunk(value: str | int) -> int | str:
    """`patches.chunk` as 0 (one pass), a patch count, or "auto"; one line when it is neither."""
    text = str(value).strip().lower()
    if text in ("off", "0", "none"):
        return 0
    if text == "auto":
        return "auto"
    if text.isdigit():
        return int(text)
    raise ConfigError(f"patches.chunk={value!r}: use {CHUNK_FORMS}")


def _parses(parse: Callable[[Any], Any], value: Any) -> bool:
    try:
        parse(value)
    except ConfigError:
        return False
    return True


# One rule per field, on its value alone: what it must be, else Ray, PyTorch or the method rejects
# it later, deep inside a worker, after minutes of start-up. The config checks (`validate`) and a
# sweep's search space (`on_ray.tune.validate_space`) both read this table.
FIELD_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.on_bad_image": (lambda v: v in ("error", "skip"), "'error' (stop) or 'skip' (drop)"),
    "data.train_limit": (lambda v: v is None or v >= 1, "at least 1, or null"),
    "data.test_limit": (lambda v: v is None or v >= 1, "at least 1, or null"),
    "data.num_classes": (lambda v: v is None or v >= 1, "at least 1, or null"),
    "data.image_size": (lambda v: v is None or v >= 1, "at least 1, or null"),
    "patches.num_patches": (
        lambda v: v >= 2,
        ">= 2 (the invariance term compares the patches of one image)",
    ),
    "patches.size": (lambda v: v is None or v >= 1, ">= 1 or null"),
    "patches.crop_scale": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "patches.interpolation": (lambda v: v in ("bilinear", "bicubic"), "bilinear or bicubic"),
    "model.width": (lambda v: v >= 1, ">= 1"),
    "model.proj_dim": (lambda v: v >= 1, ">= 1"),
    "model.hidden_dim": (lambda v: v >= 1, ">= 1"),
    "model.prefeature_dim": (lambda v: v >= 1, ">= 1"),
    "loss.eps": (lambda v: v > 0, "> 0"),
    "loss.invariance_weight": (lambda v: v >= 0, ">= 0"),
    "loss.tcr_weight": (lambda v: v >= 0, ">= 0"),
    "optim.epochs": (lambda v: v >= 1, ">= 1"),
    "optim.batch_size": (lambda v: v >= 2, ">= 2"),
    "optim.lr": (lambda v: v > 0, "> 0"),
    "optim.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.weight_decay": (lambda v: v >= 0, ">= 0"),
    "optim.warmup_steps": (lambda v: v >= 0, ">= 0"),
    "optim.schedule_epochs": (lambda v: v >= 0, ">= 0 (0: optim.epochs)"),
    "optim.max_steps": (lambda v: v >= 0, ">= 0 (0: optim.epochs whole epochs)"),
    "optim.budget_s": (lambda v: v >= 0, ">= 0 seconds (0: no time budget)"),
    "patches.chunk": (lambda v: _parses(parse_chunk, v), CHUNK_FORMS),
    "eval.patches_per_forward": (lambda v: v >= 0, ">= 0 (0: all of a batch at once)"),
    "eval.num_patches": (lambda v: v >= 1, ">= 1"),
    "eval.batch_size": (lambda v: v >= 1, ">= 1"),
    "eval.knn_k": (lambda v: v >= 1, ">= 1"),
    "eval.knn_temperature": (lambda v: v > 0, "> 0"),
    "eval.probe_epochs": (lambda v: v >= 1, ">= 1"),
    "eval.probe_lr": (lambda v: v > 0, "> 0"),
    "eval.probe_batch_size": (lambda v: v >= 1, ">= 1"),
    "eval.label_fractions": (lambda v: all(0 < x < 1 for x in v), "fractions in (0, 1)"),
    "eval.embedding_map": (lambda v: v in MAP_METHODS, " | ".join(MAP_METHODS)),
    "eval.monitor_test": (lambda v: v >= 0, ">= 0 (0 turns the monitor off)"),
    "eval.monitor_train": (lambda v: v >= 0, ">= 0"),
    "eval.monitor_patches": (lambda v: v >= 1, ">= 1"),
    "ray.num_workers": (lambda v: v >= 0, ">= 0 (0: Ray Train's local mode)"),
    "ray.min_workers": (lambda v: v >= 0, ">= 0 (0: a fixed ray.num_workers)"),
    "ray.elastic_check_s": (lambda v: v > 0, "> 0 seconds"),
    "ray.cpus_per_worker": (lambda v: v > 0, "> 0"),
    "ray.aug_min_actors": (
        lambda v: v >= 1,
        ">= 1 (Ray Data keeps at least one actor; idle CPU nodes still scale to zero)",
    ),
    "ray.aug_cpus_per_actor": (lambda v: v > 0, "> 0"),
    "ray.aug_batch_size": (lambda v: v >= 1, ">= 1"),
    "ray.read_cpus": (lambda v: v > 0, "> 0"),
    "ray.trainer_resources": (
        lambda v: all(x > 0 for x in v.values()),
        "a map of resource names to amounts > 0",
    ),
    "ray.aug_resources": (
        lambda v: all(x > 0 for x in v.values()),
        "a map of resource names to amounts > 0",
    ),
    "ray.max_failures": (lambda v: v >= 0, ">= 0"),
    "ray.prefetch_batches": (lambda v: v >= 1, ">= 1"),
    "ray.blocks_per_execution": (lambda v: v >= 1, ">= 1"),
    "run.name": (lambda v: bool(v) and "/" not in v, "a non-empty name without '/'"),
    "run.storage_path": (lambda v: bool(v), "a folder or a URI"),
    "run.log_every_steps": (lambda v: v >= 0, ">= 0 (0: epoch reports only)"),
    "run.checkpoint_every_steps": (lambda v: v >= 0, ">= 0 (0: at epoch ends only)"),
    "run.checkpoint_every_minutes": (lambda v: v >= 0, ">= 0 (0: no time-based checkpoints)"),
    "run.checkpoints_to_keep": (lambda v: v >= 1, ">= 1 (a restart needs one)"),
    "run.storage_retry_s": (lambda v: v >= 0, ">= 0 (0: no retries)"),
    "tracking.backend": (lambda v: v in ("none", "mlflow", "wandb"), "none | mlflow | wandb"),
    "run.collapse_rank": (lambda v: v >= 0, ">= 0 (0: no collapse warning)"),
}


def worker_counts(cfg: PretrainConfig) -> range:
    """Every training-worker count a run may have (one, for a fixed ray.num_workers)."""
    top = max(1, cfg.ray.num_workers)
    low = cfg.ray.min_workers if 0 < cfg.ray.min_workers < top else top
    return range(low, top + 1)


# Rules across fields: (field reported, test on the whole config, what the field must be).
CROSS_RULES: list[tuple[str, Callable[[PretrainConfig], bool], str]] = [
    (
        "optim.batch_size",
        lambda c: c.optim.batch_size >= c.ray.num_workers,
        ">= ray.num_workers (every worker needs images)",
    ),
    (
        "optim.batch_size",
        lambda c: all(c.optim.batch_size % w == 0 for w in worker_counts(c)),
        "a multiple of every worker count the run may have (ray.min_workers..ray.num_workers): "
        "each worker trains optim.batch_size / workers images a step, so the global batch, the "
        "learning rate and the TCR stay the same at any count",
    ),
    (
        "ray.min_workers",
        lambda c: c.ray.min_workers <= c.ray.num_workers,
        "<= ray.num_workers (the most workers an elastic run grows to)",
    ),
    (
        "optim.schedule_epochs",
        lambda c: c.optim.schedule_epochs == 0 or c.optim.schedule_epochs >= c.optim.epochs,
        ">= optim.epochs, or 0 (the schedule spans the run)",
    ),
    (
        "eval.embedding_map",
        lambda c: c.eval.embedding_map != "umap" or umap_installed(),
        "auto, pca or none: umap-learn is not installed (pip install 'empssl-ray[umap]')",
    ),
    (
        "tracking.backend",
        lambda c: (
            c.tracking.backend == "none" or importlib.util.find_spec(c.tracking.backend) is not None
        ),
        "none, or installed: pip install 'empssl-ray[mlflow]' (or [wandb])",
    ),
    (
        "optim.budget_s",
        lambda c: c.optim.budget_s == 0 or c.optim.max_steps == 0,
        "0 when optim.max_steps is set (one length: steps or seconds)",
    ),
    (
        "ray.aug_max_actors",
        lambda c: c.ray.aug_max_actors >= c.ray.aug_min_actors,
        ">= ray.aug_min_actors",
    ),
]


def field_problem(key: str, value: Any) -> str | None:
    """What `value` of dotted field `key` must be, when it breaks that field's rule, else None."""
    rule = FIELD_RULES.get(key)
    if rule is None:
        return None
    ok, need = rule
    try:
        return None if ok(value) else need
    except (TypeError, AttributeError):  # a string where a number goes, and the like
        return need


def _value(cfg: PretrainConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def validate(cfg: PretrainConfig) -> None:
    """Raises ConfigError (one line: the field, its value, what it must be) for the first field
    that cannot work."""
    for key in FIELD_RULES:
        need = field_problem(key, _value(cfg, key))
        if need is not None:
            raise ConfigError(f"{key}={_value(cfg, key)!r} cannot work: it must be {need}")
    for key, ok, need in CROSS_RULES:
        if not ok(cfg):
            raise ConfigError(f"{key}={_value(cfg, key)!r} cannot work: it must be {need}")


def experiment_presets() -> list[str]:
    """Names `experiment=` accepts: YAML files under conf/experiment, sub-folders as `a/b`."""
    names = []
    for folder, _, files in os.walk(PRESET_DIR):
        rel = os.path.relpath(folder, PRESET_DIR)
        names += [
            os.path.normpath(os.path.join(rel, f[:-5])).replace(os.sep, "/")
            for f in files
            if f.endswith(".yaml")
        ]
    return sorted(names)


def check_preset(choice: str | None) -> None:
    """Raises ConfigError when `experiment=` names no preset (Hydra would skip it silently)."""
    if choice is not None and choice not in experiment_presets():
        raise ConfigError(
            f"experiment={choice} is not a preset: use one of "
            f"{', '.join(experiment_presets())} (empssl_ray/conf/experiment)"
        )


def check_locations(
    cfg: PretrainConfig, nodes: int, under_job: bool, outputs: dict[str, str] | None = None
) -> None:
    """Refuses locations other nodes cannot reach, before any task starts.

    Args:
        cfg: the run's config (data.root, run.storage_path, run.shared_filesystem).
        nodes: alive nodes in the cluster the job runs on.
        under_job: the job runs under `ray job submit`, in a temporary copy of the working dir.
        outputs: where the job writes, by config key; default {"run.storage_path": ...}.
    """
    from empssl_ray.data.storage import is_uri  # lazy: keeps this module free of pyarrow

    if nodes <= 1 and not under_job:
        return
    where = "under `ray job submit`" if under_job else f"on a cluster of {nodes} nodes"
    outputs = outputs or {"run.storage_path": cfg.run.storage_path}
    for key, location in outputs.items():
        if under_job and not is_uri(location) and not os.path.isabs(os.path.expanduser(location)):
            raise ConfigError(
                f"{key}={location} is relative: {where} it lands in a temporary copy of the "
                "working dir that changes with the code, so reruns would not find (or resume) it: "
                "pass an s3:// or gs:// URI, or an absolute path on a shared filesystem with "
                "run.shared_filesystem=true"
            )
    if cfg.run.shared_filesystem:
        return
    data_root = cfg.data.root or f"(the default local folder of {cfg.data.name})"
    for key, location in {**outputs, "data.root": data_root}.items():
        if not is_uri(location):
            fix = (
                f"`python jobs/prepare.py data={cfg.data.name} out=s3://BUCKET/"
                f"{cfg.data.name}`, then pass data=parquet data.root=s3://BUCKET/{cfg.data.name}"
                if key == "data.root" and cfg.data.name != "parquet"
                else "pass an s3:// or gs:// URI"
            )
            raise ConfigError(
                f"{key}={location} is on this machine's disk, which other nodes cannot read "
                f"{where}: {fix}, or set run.shared_filesystem=true if every node mounts it"
            )


def check_capacity(
    cfg: PretrainConfig, cluster_cpus: float, can_grow: bool, cluster_gpus: float | None = None
) -> str | None:
    """Refuses (or, on a cluster that may grow, notes) a run whose trainers and stream cannot
    all hold their CPUs (and, with ray.use_gpu, their GPUs) at once: Ray would wait for them
    without a word, for ever.

    Args:
        cluster_cpus: the CPUs the cluster has now (logical, as Ray counts them).
        can_grow: nodes may still join (a cluster the job joined, not one it started).
        cluster_gpus: the GPUs it has now (None: not checked).

    Returns:
        None when the run fits, else a one-line note (can_grow only).
    """
    r = cfg.ray
    stream = r.read_cpus + (
        0.0 if r.patches_on_trainer else r.aug_min_actors * r.aug_cpus_per_actor
    )
    workers = min(r.num_workers, worker_counts(cfg)[0])
    need = workers * r.cpus_per_worker + stream
    texts = []
    if need > cluster_cpus + 1e-9:
        texts.append(
            f"the run needs {need:g} CPUs at once (ray.num_workers x ray.cpus_per_worker + "
            f"ray.read_cpus + ray.aug_min_actors x ray.aug_cpus_per_actor) and the cluster has "
            f"{cluster_cpus:g}"
        )
    if r.use_gpu and cluster_gpus is not None and max(1, workers) > cluster_gpus + 1e-9:
        texts.append(
            f"the run needs {max(1, workers)} GPUs at once (one a training worker, "
            f"ray.use_gpu=true) and the cluster has {cluster_gpus:g}"
        )
    if not texts:
        return None
    text = "; ".join(texts)
    if can_grow:
        return f"{text}: it waits until nodes join"
    raise ConfigError(
        f"{text}: lower those shares (they are logical, e.g. experiment=demo's 0.25..0.5), "
        "lower ray.num_workers, or run on a larger cluster"
    )


def check_split_sizes(
    cfg: PretrainConfig, train_rows: int, test_rows: int, trains: bool = True
) -> None:
    """Refuses, in the first seconds, values the dataset's split sizes rule out: found only
    after training otherwise (the probe's batch), or deep in a worker (a step's batch).

    Args:
        train_rows, test_rows: images in each split, after data.*_limit.
        trains: the job trains (else it only evaluates).
    """
    needs = [("eval.probe_batch_size", cfg.eval.probe_batch_size, "training images evaluated")]
    if trains:
        needs.insert(0, ("optim.batch_size", cfg.optim.batch_size, "training images"))
    for key, value, what in needs:
        rows = train_rows
        if value > rows:
            raise ConfigError(
                f"{key}={value} exceeds the {rows} {what}: lower {key}, or raise data.train_limit"
            )
    if test_rows < 1:
        raise ConfigError("the test split holds no images: raise data.test_limit")
