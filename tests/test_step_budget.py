"""A budget in seconds becomes steps from a measured step time, once per run (no Ray)."""

from __future__ import annotations

import json

import pytest
import torch

from empssl_ray.config import ConfigError, PretrainConfig
from empssl_ray.method import step_budget
from empssl_ray.presets import TINY, apply_preset
from empssl_ray.rules import validate


def tiny_config(budget_s: float) -> PretrainConfig:
    cfg = apply_preset(PretrainConfig(), TINY, sections=("model", "patches"))
    cfg.optim.batch_size, cfg.optim.budget_s = 16, budget_s
    cfg.ray.num_workers, cfg.ray.patches_on_trainer = 2, True
    return cfg


def test_a_step_is_timed_on_the_runs_own_model_without_touching_its_random_state() -> None:
    torch.manual_seed(7)
    before = torch.get_rng_state()
    seconds = step_budget.measure_step_seconds(tiny_config(1.0), 1, 28, batch=8, steps=2)
    assert 0 < seconds < 10
    assert torch.equal(torch.get_rng_state(), before)


def test_the_budget_is_divided_by_the_step_time_and_kept_for_a_resume(tmp_path, monkeypatch):
    timed = []

    def fake_measure(cfg, channels, size, batch, **_):
        timed.append(batch)
        return 0.25 if len(timed) == 1 else 5.0  # a second measurement would disagree

    monkeypatch.setattr(step_budget, "measure_step_seconds", fake_measure)
    cfg = tiny_config(30.0)
    planned, line = step_budget.plan_steps(cfg, 1, 28, str(tmp_path))
    assert planned.optim.max_steps == 120 and cfg.optim.max_steps == 0  # 30 s / 0.25 s
    assert timed == [8]  # the batch of one of the 2 workers
    assert line is not None and "0.250 s" in line and "120 steps" in line
    assert json.loads((tmp_path / step_budget.PLAN_FILE).read_text())["steps"] == 120
    # A restarted run keeps its schedule: the plan is read back, not measured again.
    again, line = step_budget.plan_steps(cfg, 1, 28, str(tmp_path))
    assert again.optim.max_steps == 120 and timed == [8]
    assert line is not None and "first plan" in line


def test_without_a_budget_nothing_is_measured(tmp_path) -> None:
    cfg = tiny_config(0.0)
    assert step_budget.plan_steps(cfg, 1, 28, str(tmp_path)) == (cfg, None)
    assert not (tmp_path / step_budget.PLAN_FILE).exists()


def test_a_run_has_one_length_steps_or_seconds() -> None:
    cfg = tiny_config(60.0)
    cfg.optim.max_steps = 10
    with pytest.raises(ConfigError, match="optim.budget_s=60.0 cannot work"):
        validate(cfg)
