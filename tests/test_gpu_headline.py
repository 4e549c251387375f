"""bench/gpu_headline.py: a quick CPU run of every stage on the shared CIFAR-10 Parquet, and the
promise that it runs on a bare box (no Ray, no Hydra in its import chain)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_CIFAR

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_headline.py"
needs_data = pytest.mark.usefixtures("shared_cifar")  # skipped where absent, failed in CI

# Makes `import ray` (and hydra/omegaconf, absent on a bare GPU box) fail in the child.
BLOCK = "import sys; sys.modules.update(ray=None, hydra=None, omegaconf=None)\n"


def run_python(code: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    # One thread: the CPU is shared, and oversubscribed OpenMP threads are many times slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    return subprocess.run(
        [sys.executable, "-c", BLOCK + code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_imports_without_ray_or_hydra(tmp_path: Path) -> None:
    code = (
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import bench.gpu_headline\n"
        "loaded = [m for m, v in sys.modules.items() if v is not None\n"
        "          and m.split('.')[0] in ('ray', 'hydra', 'omegaconf')]\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    proc = run_python(code, tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_spread_chunks_keeps_a_balanced_head_of_every_chunk() -> None:
    from empssl_ray.data.datasets import Chunk
    from empssl_ray.data.datasets import _limit_chunks as spread_chunks

    chunks = [Chunk("f", s, s + 1000) for s in range(0, 10_000, 1000)]
    out = spread_chunks(chunks, 256)
    assert sum(c.stop - c.start for c in out) == 256
    assert [c.start for c in out] == [c.start for c in chunks]  # a head of every chunk
    assert {c.stop - c.start for c in out} <= {25, 26}
    assert spread_chunks(chunks, None) == chunks
    assert spread_chunks(chunks, 10_000) == chunks
    assert sum(c.stop - c.start for c in spread_chunks(chunks, 3)) == 3


@needs_data
def test_parallel_decode_matches_serial() -> None:
    from bench.gpu_headline import load_split_parallel
    from empssl_ray.config import DataConfig

    cfg = DataConfig(name="parquet", root=str(SHARED_CIFAR), test_limit=40)
    serial = load_split_parallel(cfg, "test", workers=1)
    pooled = load_split_parallel(cfg, "test", workers=2)
    assert serial[2] == 1 and pooled[2] == 2
    assert serial[0].shape == (40, 3, 32, 32) and serial[0].dtype == np.uint8
    np.testing.assert_array_equal(serial[0], pooled[0])
    np.testing.assert_array_equal(serial[1], pooled[1])
    assert len(np.unique(serial[1])) == 10  # the test file is in class order: spread, not head


@needs_data
def test_quick_run_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    argv = ["--quick", "--device", "cpu", "--data", str(SHARED_CIFAR), "--workers", "2"]
    argv += ["--no-progress", "--json-out", str(out)]
    code = (
        "import runpy\n"
        f"sys.argv = [{str(SCRIPT)!r}, *{argv!r}]\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    proc = run_python(code, tmp_path, timeout=300)  # cwd outside the repo: the script finds it
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert json.loads(out.read_text()) == result
    assert result["quick"] is True and result["device"] == "cpu"
    assert (result["num_train"], result["num_test"], result["num_test_classes"]) == (512, 256, 10)
    stages = result["stages"]
    assert list(stages) == [
        "decode train",
        "decode test",
        "upload",
        "warm-up",
        "train epoch 1",
        "embed train",
        "embed test",
        "probe + knn",
    ]
    assert stages["train epoch 1"]["items"] == (512 // 64) * 64 * 2  # steps x batch x patches
    assert stages["embed test"]["items"] == 256 * 2
    assert all(s["seconds"] > 0 for s in stages.values())
    assert stages["warm-up"]["items"] == 1 == result["warmup_steps"]
    # Steady state: reports every 2 of the 8 steps, rate between the first and the last.
    assert result["train_steady_patches_per_s"] > 0
    assert math.isfinite(result["train_loss"]) and result["train_loss"] < 0  # -TCR - 200 * inv
    for key in ("probe_acc", "probe_train_acc", "knn_acc"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["config"]["model"]["backbone"] == "resnet-narrow"
    assert result["config"]["patches"]["num_patches"] == 2
    text = proc.stdout
    assert "[train epoch 1]" in text and "linear probe" in text and "total" in text


def test_steady_rate_counts_only_between_the_first_and_last_report() -> None:
    from bench.gpu_headline import steady_rate

    # Start-up before the first report (t=0 -> 5 s) is left out: 20 steps x 100 in 2 s.
    assert steady_rate([(5.0, 10), (6.0, 20), (7.0, 30)], 100) == 20 * 100 / 2
    assert steady_rate([(5.0, 10)], 100) is None
