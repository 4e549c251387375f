"""The job layer's Hydra glue: composing configs, the typed config, one-line user errors.

Every `jobs/*.py` entrypoint is `run_job(main, cfg, Schema)` around a plain `main(typed_cfg)`
(which tests and other jobs call directly); `compose` gives the same typed config from Python.
Hydra lives here and in `jobs/` only: the core takes dataclasses.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from empssl_ray.config import PretrainConfig
from empssl_ray.errors import user_error_line
from empssl_ray.job_config import (
    EvaluateConfig,
    ExportJobConfig,
    PrepareJobConfig,
    ReproduceJobConfig,
    TuneJobConfig,
)

CONF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")
# Each job's primary config (empssl_ray/conf/<name>.yaml) and the dataclass it composes into.
SCHEMAS: dict[str, type] = {
    "pretrain": PretrainConfig,
    "evaluate": EvaluateConfig,
    "tune": TuneJobConfig,
    "prepare": PrepareJobConfig,
    "reproduce": ReproduceJobConfig,
    "export": ExportJobConfig,
}


def register_configs() -> None:
    """Registers the schemas with Hydra's ConfigStore (each job calls it before composing)."""
    from hydra.core.config_store import ConfigStore

    for name, schema in SCHEMAS.items():
        ConfigStore.instance().store(name=f"{name}_schema", node=schema)


def to_dataclass(cfg: Any, cls: type) -> Any:
    """Turns a composed DictConfig into a typed dataclass instance (real types, not nodes)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), cfg))


def compose(
    config_name: str,
    overrides: list[str],
    config_dir: str | None = None,
    schema: type | None = None,
) -> Any:
    """The typed config a job would get from `python jobs/<job>.py <overrides>`.

    Args:
        config_name: the primary config, e.g. "pretrain" (a job's, in `empssl_ray/conf`) or
            "best" (a sweep's best.yaml, in `config_dir`).
        overrides: Hydra overrides, e.g. ["experiment=smoke", "optim.epochs=2"].
        config_dir: a folder of configs to compose from instead of `empssl_ray/conf`.
        schema: the dataclass to build; default: the job's (`SCHEMAS[config_name]`).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    schema = schema or SCHEMAS[config_name]
    register_configs()
    # A job that composes (jobs/reproduce.py) runs inside Hydra's own app: keep its state.
    if config_dir is None and GlobalHydra.instance().is_initialized():
        return to_dataclass(hydra_compose(config_name, overrides=overrides), schema)
    with initialize_config_dir(config_dir=config_dir or CONF_DIR, version_base=None):
        return to_dataclass(hydra_compose(config_name, overrides=overrides), schema)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turns user-caused errors into one line on stderr and exit code 2."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - deliberately broad: we re-raise what isn't ours
        line = user_error_line(exc)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


def run_job(main: Callable[[Any], Any], cfg: Any, schema: type) -> None:
    """The body of every job's Hydra entrypoint: preset check, typed config, one-line errors."""
    from hydra.core.hydra_config import HydraConfig

    from empssl_ray.rules import check_preset, validate

    with user_errors():
        check_preset(HydraConfig.get().runtime.choices.get("experiment"))
        typed = to_dataclass(cfg, schema)
        if isinstance(typed, PretrainConfig):  # before Ray starts: a typo costs a second
            validate(typed)
        main(typed)


def start(config_name: str, schema: type, main: Callable[[Any], Any]) -> None:
    """A job's `if __name__ == "__main__"`: Hydra parses the command line into `schema` from
    `empssl_ray/conf/<config_name>.yaml`, then `main` runs under `run_job`."""
    import hydra

    register_configs()

    @hydra.main(config_path=CONF_DIR, config_name=config_name, version_base=None)
    def cli(cfg: Any) -> None:
        run_job(main, cfg, schema)

    cli()
