"""Experiment presets read without Hydra: the tiny-run preset (`experiment=smoke`) is written
once, in `conf/experiment/smoke.yaml`, and applied from here by everything that wants a run
small enough for a CPU (`jobs/reproduce.py reproduce.quick=true`, the bench scripts)."""

from __future__ import annotations

import os
from typing import Any

import yaml

from empssl_ray.config import PretrainConfig

PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf", "experiment")
TINY = "smoke"  # the tiny-run preset


def preset_values(name: str) -> dict[str, dict[str, Any]]:
    """A preset's sections, e.g. {"model": {"width": 8, ...}, ...} (its `defaults` left out)."""
    with open(os.path.join(PRESET_DIR, f"{name}.yaml")) as f:
        values = yaml.safe_load(f) or {}
    values.pop("defaults", None)
    return values


def apply_preset(cfg: PretrainConfig, name: str, sections: tuple[str, ...] = ()) -> PretrainConfig:
    """Sets the fields preset `name` sets (only those of `sections`, when given) on `cfg`.

    Raises:
        KeyError: the preset names a field the config does not have.
    """
    for section, fields in preset_values(name).items():
        if sections and section not in sections:
            continue
        target = getattr(cfg, section)
        for key, value in fields.items():
            if not hasattr(target, key):
                raise KeyError(f"preset {name}: {section}.{key} is not a config field")
            setattr(target, key, value)
    return cfg
