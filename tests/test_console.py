"""The console: what a person running a job sees, with and without Ray's own logs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from empssl_ray.console import Console, metrics_text, verbose_wanted

ROOT = Path(__file__).resolve().parents[1]

# Ray internals that a default run printed before the console was ours.
RAY_NOISE = (
    "Reporting training result",
    "core_worker.cc",
    "Execution plan",
    "Full logs are in",
    "Progress bars disabled",
    "PYTHON worker processes",
    "RayDeprecationWarning",
    "(raylet)",
    "Token authentication",
)
MAX_LINES = 40  # smoke: 2 epochs x 4 step reports + epoch lines + evaluation + table


def test_plain_lines_one_per_report() -> None:
    out = io.StringIO()
    console = Console(out, bars=False)
    console({"kind": "start", "epochs": 2, "steps_per_epoch": 8, "start_epoch": 1})
    console(
        {
            "kind": "step",
            "epoch": 1,
            "step": 12,
            "loss": -3.5,
            "tcr": 2.0,
            "invariance": 0.5,
            "patches_per_s": 1234.0,
            "data_wait_frac": 0.25,
        }
    )
    console(
        {"kind": "epoch", "epoch": 2, "step": 16, "loss": -3.6, "epoch_time_s": 4.0, "knn_acc": 0.5}
    )
    console({"kind": "note", "text": "a node left: 127.0.0.1 (1 CPUs, 0 GPUs)"})
    lines = out.getvalue().splitlines()
    assert lines[0] == "resuming at epoch 2/2"
    assert lines[1].startswith("epoch 2/2 step 4/8 | loss -3.500 | tcr 2.00 | inv 0.500")
    assert "1,234 patches/s" in lines[1] and "data wait 25%" in lines[1]
    assert lines[2].startswith("epoch 2/2 done in 4.0 s | loss -3.600")
    assert lines[2].endswith("kNN 50.0%")
    assert lines[3] == "a node left: 127.0.0.1 (1 CPUs, 0 GPUs)"


def test_stage_line_once_when_done_whatever_the_row_events() -> None:
    out = io.StringIO()
    console = Console(out, bars=False)
    console({"kind": "stage", "name": "embed train (pretrained)", "total": 10})
    for rows in (6, 4, 4):  # a retried batch reports its rows twice
        console({"kind": "rows", "name": "embed train (pretrained)", "rows": rows})
    assert out.getvalue() == ""
    console({"kind": "done", "name": "embed train (pretrained)", "rows": 10})
    assert out.getvalue().startswith("embed train (pretrained): 10 images in ")
    assert out.getvalue().count("\n") == 1


def test_a_finished_run_says_so() -> None:
    out = io.StringIO()
    Console(out, bars=False)({"kind": "start", "epochs": 2, "steps_per_epoch": 8, "start_epoch": 2})
    assert out.getvalue() == "already trained: 2/2 epochs\n"


def test_bars_keep_lines_above_them() -> None:
    out = io.StringIO()
    console = Console(out, bars=True)
    console({"kind": "start", "epochs": 1, "steps_per_epoch": 4})
    console({"kind": "step", "epoch": 0, "step": 2, "loss": -1.0})
    assert console.bar is not None and console.bar.n == 2
    console({"kind": "epoch", "epoch": 1, "step": 4, "loss": -1.5})
    assert console.bar is None
    assert "epoch 1/1 done" in out.getvalue()


def test_missing_figures_show_as_dashes() -> None:
    assert metrics_text({}).startswith("loss - | tcr - | inv -")


def test_verbose_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMPSSL_VERBOSE", raising=False)
    assert not verbose_wanted(False) and verbose_wanted(True)
    monkeypatch.setenv("EMPSSL_VERBOSE", "1")
    assert verbose_wanted(False)


def run_smoke(tmp_path: Path, *overrides: str) -> list[str]:
    """The smoke pretraining job as a user runs it (no terminal): its combined output."""
    # What this test process's own jobs set (silence_driver) must not reach the user's run.
    env = {k: v for k, v in os.environ.items() if k not in ("EMPSSL_VERBOSE", "RAY_DATA_LOG_LEVEL")}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "pretrain.py"),
            "experiment=smoke",
            f"run.storage_path={tmp_path}",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return (out.stdout + out.stderr).splitlines()


def test_smoke_console_is_ours_alone(tmp_path: Path) -> None:
    lines = run_smoke(tmp_path, "run.name=quiet")
    text = "\n".join(lines)
    assert [noise for noise in RAY_NOISE if noise in text] == [], text
    assert len(lines) <= MAX_LINES, text
    for epoch in (1, 2):
        assert any(
            line.startswith(f"epoch {epoch}/2 done in ") and "kNN" in line for line in lines
        ), text
    assert any(line.startswith("epoch 1/2 step ") for line in lines), text
    assert any(line.startswith("embed test (pretrained): ") for line in lines), text
    assert any(line.startswith("pretrained ") and "%" in line for line in lines), text


def test_verbose_brings_ray_logs_back(tmp_path: Path) -> None:
    lines = run_smoke(
        tmp_path, "run.name=verbose", "run.verbose=true", "optim.epochs=1", "run.evaluate=false"
    )
    text = "\n".join(lines)
    assert any(noise in text for noise in RAY_NOISE), text
    assert any(line.startswith("epoch 1/1 done in ") for line in lines), text
