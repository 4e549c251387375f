"""The core imports no Ray and no Hydra, not even inside a function: only the Ray adapters
(`empssl_ray/on_ray/`) and the job layer's Hydra glue (`empssl_ray/launch.py`) may. A Ray worker,
a test and a bare GPU box (bench/gpu_headline.py) all run the core."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "empssl_ray"
FORBIDDEN = ("ray", "hydra", "omegaconf")
ADAPTERS = ("on_ray", "launch")  # where Ray and Hydra may be imported


def _module_name(path: Path) -> str:
    """empssl_ray/method/loss.py -> "method.loss", empssl_ray/data/__init__.py -> "data"."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _core_files() -> dict[str, Path]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: p for name, p in files.items() if name and name.split(".")[0] not in ADAPTERS}


def forbidden_imports(source: str) -> list[str]:
    """Every `import ray...` / `from hydra... import` anywhere in a module's code, with its line
    (module level, inside functions, under TYPE_CHECKING alike), and every `x.remote(...)` call
    (an actor or task handed in from outside: Ray all the same)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "remote"
        ):
            found.append(f"line {node.lineno}: .remote()")
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"line {node.lineno}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def test_the_scan_sees_imports_inside_functions() -> None:
    source = "def f():\n    import ray.data\n    from omegaconf import OmegaConf\nimport torch\n"
    assert forbidden_imports(source) == ["line 2: ray.data", "line 3: omegaconf"]
    assert forbidden_imports("def f(counter):\n    counter.add.remote(1)\n") == [
        "line 2: .remote()"
    ]


def test_no_core_module_imports_ray_or_hydra_anywhere() -> None:
    core = _core_files()
    assert {"method.loss", "method.training", "data.storage", "evaluation.shards", "rules"} <= set(
        core
    )
    offenders = {
        name: hits for name, p in core.items() if (hits := forbidden_imports(p.read_text()))
    }
    assert not offenders, f"the core must not import Ray or Hydra: {offenders}"


def test_every_core_module_imports_with_ray_and_hydra_blocked() -> None:
    """And at run time: nothing the core imports pulls them in either."""
    core = sorted(_core_files())
    script = (
        "import sys\n"
        "sys.modules.update(ray=None, hydra=None, omegaconf=None)  # any import of them fails\n"
        "import importlib\n"
        f"for name in {core!r}:\n"
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


def test_read_tasks_import_no_torch() -> None:
    """Ray Data's read tasks run `on_ray.read` over the dataset modules: pixels as numpy, no
    torch (seconds of import in every read worker, and torch imported from two threads at once
    can meet itself half-initialised)."""
    code = (
        "import sys; import empssl_ray.on_ray.read, empssl_ray.data.prepare; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent).returncode == 0
