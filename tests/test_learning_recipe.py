"""The CPU learning recipe end to end (opt-in: `pytest -m slow`, about 12 minutes on 2 cores).

CIFAR-10 from the shared Parquet directory, a narrow ResNet pretrained on a 10,000-image subset,
then the bag-of-features linear probe on the full test set: the pretrained encoder must beat a
random-init one on the same protocol by at least 10 points.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from empssl_ray.launch import compose
from tests.conftest import SHARED_CIFAR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("shared_cifar"),  # skipped where absent, failed in CI
    pytest.mark.usefixtures("ray_session"),
]


def test_cifar10_cpu_recipe_beats_random_init_by_10_points(tmp_path: Path) -> None:
    from jobs.pretrain import main

    cfg = compose(
        "pretrain",
        [
            "experiment=cifar10-cpu",
            f"data.root={SHARED_CIFAR}",
            f"run.storage_path={tmp_path}",
            "run.name=recipe",
            "run.progress=false",
        ],
    )
    summary = main(cfg)
    pretrained, random_init = summary["eval"]["pretrained"], summary["eval"]["random init"]
    assert pretrained["num_test"] == 10_000 == random_init["num_test"]
    print(f"probe {pretrained['probe_acc']:.3f} vs random init {random_init['probe_acc']:.3f}")
    assert pretrained["probe_acc"] >= random_init["probe_acc"] + 0.10


# The tuned recipe's linear probe on the full test set as docs/benchmarks.md reports it (one
# run, seed 1): a rerun must stay within a few points of it.
TUNED_PROBE_ACC = 0.6053


@pytest.mark.timeout(1800)  # about 15 minutes, evaluation of all 60,000 images included
def test_cifar10_cpu_tuned_recipe_holds_its_documented_figure(tmp_path: Path) -> None:
    import time

    from jobs.pretrain import main

    cfg = compose(
        "pretrain",
        [
            "experiment=cifar10-cpu-tuned",
            f"data.root={SHARED_CIFAR}",
            f"run.storage_path={tmp_path}",
            "run.name=tuned",
            "run.progress=false",
        ],
    )
    start = time.monotonic()
    summary = main(cfg)
    wall = time.monotonic() - start
    pretrained = summary["eval"]["pretrained"]
    print(
        f"tuned recipe: probe {pretrained['probe_acc']:.4f}, kNN {pretrained['knn_acc']:.4f}, "
        f"{pretrained['num_test']} test images, {wall:.0f} s"
    )
    assert pretrained["num_test"] == 10_000
    assert abs(pretrained["probe_acc"] - TUNED_PROBE_ACC) <= 0.03
