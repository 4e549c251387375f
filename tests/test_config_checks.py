"""Misconfigurations fail in the first seconds with one line: values Ray or PyTorch would reject
deep inside a worker, and preset names that match no file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from empssl_ray.config import ConfigError, PretrainConfig
from empssl_ray.launch import compose
from empssl_ray.rules import (
    check_capacity,
    check_locations,
    check_preset,
    experiment_presets,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "override,field",
    [
        ("ray.aug_min_actors=0", "ray.aug_min_actors"),
        ("ray.aug_max_actors=0", "ray.aug_max_actors"),
        ("ray.num_workers=-1", "ray.num_workers"),
        ("ray.cpus_per_worker=0", "ray.cpus_per_worker"),
        ("ray.read_cpus=0", "ray.read_cpus"),
        ("patches.num_patches=1", "patches.num_patches"),
        ("patches.crop_scale=1.5", "patches.crop_scale"),
        ("patches.interpolation=nearest", "patches.interpolation"),
        ("loss.eps=0", "loss.eps"),
        ("optim.lr=0", "optim.lr"),
        ("optim.epochs=0", "optim.epochs"),
        ("optim.batch_size=1", "optim.batch_size"),
        ("eval.knn_k=0", "eval.knn_k"),
        ("eval.label_fractions=[0.1,1.0]", "eval.label_fractions"),
        ("data.on_bad_image=ignore", "data.on_bad_image"),
        ("run.name=a/b", "run.name"),
        ("++ray.aug_resources={augment: 0}", "ray.aug_resources"),
    ],
)
def test_values_that_cannot_work_are_refused_naming_the_field(override: str, field: str) -> None:
    cfg = compose("pretrain", [override])
    with pytest.raises(ConfigError, match=rf"^{field}=.* cannot work: it must be "):
        validate(cfg)


def test_every_preset_is_valid() -> None:
    assert {"smoke", "demo", "tune-demo", "cifar10-cpu"} <= set(experiment_presets())
    for name in experiment_presets():
        validate(compose("tune", [f"experiment={name}"]))  # tune's schema takes every preset


def test_locations_pass_on_one_node_and_with_a_shared_filesystem() -> None:
    cfg = PretrainConfig()
    check_locations(cfg, nodes=1, under_job=False)  # a laptop: local paths are fine
    cfg.run.storage_path, cfg.run.shared_filesystem = "/mnt/nfs/runs", True
    check_locations(cfg, nodes=4, under_job=True)
    with pytest.raises(ConfigError, match="on a cluster of 4 nodes"):
        cfg.run.shared_filesystem = False
        check_locations(cfg, nodes=4, under_job=False)


def test_a_run_that_cannot_hold_its_cpus_at_once_is_refused_or_noted() -> None:
    """Trainers, a read task and the smallest actor pool all hold CPUs at once; the laptop
    presets fit 2 CPUs, the defaults (4: two trainers, a read task, one actor) do not."""
    for name in ("smoke", "demo", "tune-demo", "cifar10-cpu"):
        assert check_capacity(compose("tune", [f"experiment={name}"]), 2, can_grow=False) is None
    cfg = PretrainConfig()
    assert check_capacity(cfg, 4, can_grow=False) is None
    with pytest.raises(ConfigError, match=r"^the run needs 4 CPUs at once .* the cluster has 2: "):
        check_capacity(cfg, 2, can_grow=False)
    assert "it waits until nodes join" in str(check_capacity(cfg, 2, can_grow=True))
    cfg.ray.patches_on_trainer = True  # no actor pool: 3
    assert check_capacity(cfg, 3, can_grow=False) is None


def test_a_gpu_run_on_a_cluster_without_its_gpus_is_refused_or_noted() -> None:
    """Two GPU workers on a cluster of one GPU would wait for ever, like missing CPUs; an
    elastic run needs its fewest."""
    cfg = compose("pretrain", ["ray.use_gpu=true"])
    assert check_capacity(cfg, 8, can_grow=False, cluster_gpus=2) is None
    with pytest.raises(ConfigError, match=r"^the run needs 2 GPUs at once .* has 1: "):
        check_capacity(cfg, 8, can_grow=False, cluster_gpus=1)
    assert "waits until nodes join" in str(check_capacity(cfg, 8, True, cluster_gpus=0))
    elastic = compose("pretrain", ["ray.use_gpu=true", "ray.num_workers=4", "ray.min_workers=2"])
    assert check_capacity(elastic, 8, can_grow=False, cluster_gpus=2) is None


def test_unknown_preset_is_refused_listing_the_presets() -> None:
    check_preset(None)
    check_preset("smoke")
    with pytest.raises(
        ConfigError, match="experiment=cifar10cpu is not a preset: use one of .*cifar10-cpu"
    ):
        check_preset("cifar10cpu")


@pytest.mark.parametrize(
    "job,args,expected",
    [
        (
            "pretrain",
            ["experiment=cifar10cpu"],
            "error: ConfigError: experiment=cifar10cpu is not a",
        ),
        ("tune", ["experiment=paper/anything"], "error: ConfigError: experiment=paper/anything is"),
        ("pretrain", ["ray.aug_min_actors=0"], "error: ConfigError: ray.aug_min_actors=0 cannot"),
        ("prepare", ["data=cifar10"], "error: ConfigError: out is not set"),
        (
            "pretrain",
            ["experiment=smoke", "ray.cpus_per_worker=64"],
            "error: ConfigError: the run needs 128.75 CPUs at once",
        ),
    ],
)
def test_jobs_print_one_line_and_exit_2(job: str, args: list[str], expected: str) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / f"{job}.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]  # one line
    assert out.stderr.startswith(expected), out.stderr


def test_split_sizes_refuse_what_would_fail_after_training() -> None:
    from empssl_ray.config import PretrainConfig
    from empssl_ray.rules import check_split_sizes

    cfg = PretrainConfig()  # probe batches of 100, steps of 100 images
    check_split_sizes(cfg, 100, 10)
    with pytest.raises(ConfigError, match=r"^optim.batch_size=100 exceeds the 64 training"):
        check_split_sizes(cfg, 64, 10)
    cfg.optim.batch_size = 32
    with pytest.raises(ConfigError, match=r"^eval.probe_batch_size=100 exceeds the 64"):
        check_split_sizes(cfg, 64, 10)
    check_split_sizes(cfg, 100, 10, trains=False)
