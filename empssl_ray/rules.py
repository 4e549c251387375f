"""Checks of a composed config that fail in the first second with one line, instead of deep
inside a Ray worker after minutes of start-up: values Ray, PyTorch or the method reject, and
`experiment=` names that match no preset (Hydra skips an optional preset it cannot find)."""

from __future__ import annotations

import os
from collections.abc import Callable

from empssl_ray.config import ConfigError, PretrainConfig

PRESET_DIR = os.path.join(os.path.dirname(__file__), "conf", "experiment")

# (field, test on the whole config, what the field must be): each is a value Ray, PyTorch or the
# method would reject later, deep inside a worker, after minutes of start-up.
_RULES: list[tuple[str, Callable[[PretrainConfig], bool], str]] = [
    ("data.on_bad_image", lambda c: c.data.on_bad_image in ("error", "skip"), "error or skip"),
    (
        "data.train_limit",
        lambda c: c.data.train_limit is None or c.data.train_limit >= 1,
        ">= 1 or null",
    ),
    (
        "data.test_limit",
        lambda c: c.data.test_limit is None or c.data.test_limit >= 1,
        ">= 1 or null",
    ),
    (
        "patches.num_patches",
        lambda c: c.patches.num_patches >= 2,
        ">= 2 (the invariance term compares the patches of one image)",
    ),
    ("patches.size", lambda c: c.patches.size is None or c.patches.size >= 1, ">= 1 or null"),
    ("patches.crop_scale", lambda c: 0 < c.patches.crop_scale <= 1, "in (0, 1]"),
    (
        "patches.interpolation",
        lambda c: c.patches.interpolation in ("bilinear", "bicubic"),
        "bilinear or bicubic",
    ),
    ("model.width", lambda c: c.model.width >= 1, ">= 1"),
    (
        "model.proj_dim",
        lambda c: min(c.model.proj_dim, c.model.hidden_dim, c.model.prefeature_dim) >= 1,
        ">= 1, as are model.hidden_dim and model.prefeature_dim",
    ),
    ("loss.eps", lambda c: c.loss.eps > 0, "> 0"),
    ("loss.invariance_weight", lambda c: c.loss.invariance_weight >= 0, ">= 0"),
    ("loss.tcr_weight", lambda c: c.loss.tcr_weight >= 0, ">= 0"),
    ("optim.epochs", lambda c: c.optim.epochs >= 1, ">= 1"),
    (
        "optim.batch_size",
        lambda c: c.optim.batch_size >= max(2, c.ray.num_workers),
        ">= 2 and >= ray.num_workers (every worker needs images)",
    ),
    ("optim.lr", lambda c: c.optim.lr > 0, "> 0"),
    ("optim.momentum", lambda c: 0 <= c.optim.momentum < 1, "in [0, 1)"),
    ("optim.weight_decay", lambda c: c.optim.weight_decay >= 0, ">= 0"),
    ("optim.warmup_steps", lambda c: c.optim.warmup_steps >= 0, ">= 0"),
    ("eval.num_patches", lambda c: c.eval.num_patches >= 1, ">= 1"),
    ("eval.batch_size", lambda c: c.eval.batch_size >= 1, ">= 1"),
    ("eval.knn_k", lambda c: c.eval.knn_k >= 1, ">= 1"),
    ("eval.knn_temperature", lambda c: c.eval.knn_temperature > 0, "> 0"),
    ("eval.probe_epochs", lambda c: c.eval.probe_epochs >= 1, ">= 1"),
    ("eval.probe_lr", lambda c: c.eval.probe_lr > 0, "> 0"),
    ("eval.probe_batch_size", lambda c: c.eval.probe_batch_size >= 1, ">= 1"),
    (
        "eval.monitor_test",
        lambda c: c.eval.monitor_test >= 0 and c.eval.monitor_train >= 0,
        ">= 0, as is eval.monitor_train (0 turns the monitor off)",
    ),
    ("eval.monitor_patches", lambda c: c.eval.monitor_patches >= 1, ">= 1"),
    ("ray.num_workers", lambda c: c.ray.num_workers >= 0, ">= 0 (0: Ray Train's local mode)"),
    ("ray.cpus_per_worker", lambda c: c.ray.cpus_per_worker > 0, "> 0"),
    (
        "ray.aug_min_actors",
        lambda c: c.ray.aug_min_actors >= 1,
        ">= 1 (Ray Data keeps at least one actor; idle CPU nodes still scale to zero)",
    ),
    (
        "ray.aug_max_actors",
        lambda c: c.ray.aug_max_actors >= c.ray.aug_min_actors,
        ">= ray.aug_min_actors",
    ),
    ("ray.aug_cpus_per_actor", lambda c: c.ray.aug_cpus_per_actor > 0, "> 0"),
    ("ray.aug_batch_size", lambda c: c.ray.aug_batch_size >= 1, ">= 1"),
    ("ray.read_cpus", lambda c: c.ray.read_cpus > 0, "> 0"),
    (
        "ray.trainer_resources",
        lambda c: all(v > 0 for v in c.ray.trainer_resources.values()),
        "a map of resource names to amounts > 0",
    ),
    (
        "ray.aug_resources",
        lambda c: all(v > 0 for v in c.ray.aug_resources.values()),
        "a map of resource names to amounts > 0",
    ),
    ("ray.max_failures", lambda c: c.ray.max_failures >= 0, ">= 0"),
    ("ray.prefetch_batches", lambda c: c.ray.prefetch_batches >= 1, ">= 1"),
    (
        "run.name",
        lambda c: bool(c.run.name) and "/" not in c.run.name,
        "a non-empty name without '/'",
    ),
    ("run.storage_path", lambda c: bool(c.run.storage_path), "a folder or a URI"),
    ("run.log_every_steps", lambda c: c.run.log_every_steps >= 0, ">= 0 (0: epoch reports only)"),
]


def validate(cfg: PretrainConfig) -> None:
    """Raises ConfigError (one line: the field, its value, what it must be) for the first field
    that cannot work."""
    for key, ok, need in _RULES:
        if not ok(cfg):
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            raise ConfigError(f"{key}={value!r} cannot work: it must be {need}")


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


def check_capacity(cfg: PretrainConfig, cluster_cpus: float, can_grow: bool) -> str | None:
    """Refuses (or, on a cluster that may grow, notes) a run whose trainers and stream cannot
    all hold their CPUs at once: Ray would wait for them without a word, for ever.

    Args:
        cluster_cpus: the CPUs the cluster has now (logical, as Ray counts them).
        can_grow: nodes may still join (a cluster the job joined, not one it started).

    Returns:
        None when the run fits, else a one-line note (can_grow only).
    """
    r = cfg.ray
    stream = r.read_cpus + (
        0.0 if r.patches_on_trainer else r.aug_min_actors * r.aug_cpus_per_actor
    )
    need = r.num_workers * r.cpus_per_worker + stream
    if need <= cluster_cpus + 1e-9:
        return None
    text = (
        f"the run needs {need:g} CPUs at once (ray.num_workers x ray.cpus_per_worker + "
        f"ray.read_cpus + ray.aug_min_actors x ray.aug_cpus_per_actor) and the cluster has "
        f"{cluster_cpus:g}"
    )
    if can_grow:
        return f"{text}: it waits until nodes join"
    raise ConfigError(
        f"{text}: lower those shares (they are logical, e.g. experiment=demo's 0.25..0.5) "
        "or run on a larger cluster"
    )
