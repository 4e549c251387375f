"""The core imports no Ray and no Hydra: every module without the `ray_` prefix loads with both
blocked, so a Ray worker, a test and a bare GPU box all run it (the rule holds by itself)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "empssl_ray"


def _module_name(path: Path) -> str:
    """empssl_ray/loss.py -> "loss", empssl_ray/datasets/__init__.py -> "datasets"."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


CORE = sorted(
    name
    for name in map(_module_name, PACKAGE.rglob("*.py"))
    if name and not name.startswith(("ray_", "_"))
)


def test_every_core_module_imports_with_ray_and_hydra_blocked() -> None:
    assert {
        "loss",
        "models",
        "augment",
        "engine",
        "storage",
        "read_plan",
        "datasets",
        "datasets.parquet",
    } <= set(CORE)
    script = (
        "import sys\n"
        "sys.modules.update(ray=None, hydra=None, omegaconf=None)  # any import of them fails\n"
        "import importlib\n"
        f"for name in {CORE!r}:\n"
        "    importlib.import_module('empssl_ray.' + name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'hydra', "
        "'omegaconf') and sys.modules[m] is not None)\n"
        "assert not loaded, loaded\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=PACKAGE.parent,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
