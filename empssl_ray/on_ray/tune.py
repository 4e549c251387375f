"""Ray Tune adapter: parallel sweeps over patch counts, loss weights, eps, lr and batch size.

Each trial is a real TorchTrainer run, started from a Tune function (Train V2's interop:
`Tuner(trainer)` is gone) whose metrics reach Tune through `TuneReportCallback`. With
`sweep.budget` every trial spends the same patch-forwards (its steps follow from its batch size
and patch count, its schedule ends at its own last step), so trials compare at equal compute;
ASHA stops weak trials at epoch boundaries on the online kNN accuracy, its rungs fractions of
the budget (else epochs).
"""

from __future__ import annotations

import copy
import math
import os
import posixpath
import sys
from typing import Any

from ray import tune

from empssl_ray.config import ConfigError, PretrainConfig
from empssl_ray.data import storage
from empssl_ray.job_config import SearchParam, SweepConfig, TuneJobConfig
from empssl_ray.on_ray.placement import trial_on_head
from empssl_ray.rules import field_problem
from empssl_ray.runs.metrics import format_table

TUNABLE = (
    "patches.num_patches",
    "patches.size",
    "loss.invariance_weight",
    "loss.tcr_weight",
    "loss.eps",
    "optim.lr",
    "optim.batch_size",
    "model.width",
)
OBJECTIVES = ("knn_acc",)


def budget_steps(budget: float, batch_size: int, num_patches: int) -> int:
    """A trial's steps for a budget of `budget` million patch-forwards: every trial spends the
    budget within half a step's patch-forwards."""
    return max(1, round(budget * 1e6 / (batch_size * num_patches)))


def set_budget(cfg: PretrainConfig, budget: float, budget_s: float) -> None:
    """Gives a trial's config (in place) its share of the sweep's budget: `optim.max_steps` for
    `budget` million patch-forwards, or `optim.budget_s` for `pretrain` to turn into steps from
    the trial's own step time; neither (both 0) leaves `optim.epochs`."""
    if budget > 0:
        cfg.optim.max_steps = budget_steps(budget, cfg.optim.batch_size, cfg.patches.num_patches)
    cfg.optim.budget_s = budget_s


def validate_space(space: dict[str, SearchParam]) -> None:
    """Rejects a search space that cannot work, before any trial starts (ConfigError, one line)."""
    if not space:
        raise ConfigError(
            "sweep.space is empty: add e.g. sweep.space.optim.lr={kind: loguniform, "
            "low: 0.03, high: 1.0}"
        )
    for key, p in space.items():
        if key not in TUNABLE:
            raise ConfigError(
                f"sweep.space has unknown key {key!r}; tunable keys: {', '.join(TUNABLE)}"
            )
        if p.kind in ("choice", "grid"):
            if not p.values:
                raise ConfigError(f"sweep.space.{key}: {p.kind} needs a non-empty `values` list")
            lows = list(p.values)
        elif p.kind in ("uniform", "loguniform"):
            if p.low is None or p.high is None or not p.low < p.high:
                raise ConfigError(
                    f"sweep.space.{key}: {p.kind} needs low < high, got low={p.low}, high={p.high}"
                )
            if p.kind == "loguniform" and p.low <= 0:
                raise ConfigError(f"sweep.space.{key}: loguniform needs low > 0, got {p.low}")
            lows = [p.low, p.high]
        else:
            raise ConfigError(
                f"sweep.space.{key}: unknown kind {p.kind!r}; use choice, grid, "
                "uniform or loguniform"
            )
        # The config's own rule for the field (rules.FIELD_RULES), on every value a trial can get.
        bad = [v for v in lows if not isinstance(v, (int, float)) or field_problem(key, v)]
        if bad:
            need = field_problem(key, bad[0]) or "a number"
            raise ConfigError(
                f"sweep.space.{key}: value(s) {bad} out of range; {key} must be {need}"
            )


def to_tune_space(space: dict[str, SearchParam]) -> dict[str, Any]:
    """Our SearchParam records -> Tune's sampling primitives."""
    out: dict[str, Any] = {}
    for key, p in space.items():
        if p.kind == "choice":
            out[key] = tune.choice(list(p.values or []))
        elif p.kind == "grid":
            out[key] = tune.grid_search(list(p.values or []))
        else:
            assert p.low is not None and p.high is not None  # validate_space checked them
            sample = tune.uniform if p.kind == "uniform" else tune.loguniform
            out[key] = sample(p.low, p.high)
    return out


def apply_overrides(base: PretrainConfig, params: dict[str, Any]) -> PretrainConfig:
    """A copy of `base` with dotted keys (e.g. "optim.lr") set; integers stay integers."""
    cfg = copy.deepcopy(base)
    for key, value in params.items():
        section, name = key.split(".")
        current = getattr(getattr(cfg, section), name)
        setattr(getattr(cfg, section), name, int(value) if isinstance(current, int) else value)
    return cfg


def run_trial(
    config: dict[str, Any],
    base: PretrainConfig,
    trials_dir: str,
    budget: float = 0.0,
    budget_s: float = 0.0,
) -> None:
    """Tune function: one TorchTrainer run with this trial's parameters; metrics go to Tune.

    Args:
        config: the trial's {"params": {dotted key: value}}.
        base: the sweep's run, every trial's starting point.
        trials_dir: where the trials' runs go.
        budget: million patch-forwards each trial spends (`sweep.budget`); 0 = none.
        budget_s: seconds each trial trains (`sweep.budget_s`); 0 = none. Neither: optim.epochs.
    """
    from empssl_ray.on_ray.train import pretrain

    cfg = apply_overrides(base, config["params"])
    cfg.run.name = f"trial-{tune.get_context().get_trial_id()}"
    cfg.run.storage_path = trials_dir
    cfg.run.evaluate = False
    cfg.run.log_every_steps = 0  # Tune sees epoch reports only: every one carries the objective
    cfg.run.checkpoint_every_steps, cfg.run.checkpoint_every_minutes = 0, 0.0  # nor checkpoints
    set_budget(cfg, budget, budget_s)
    pretrain(cfg, callbacks=[objective_reports(OBJECTIVES[0])])


def objective_reports(objective: str) -> Any:
    """Ray Train's reports to Tune, those that carry `objective` only: epoch ends. A checkpoint
    written inside an epoch (a node's preemption notice, in any sweep) reports no objective,
    and Tune fails a trial on a result without it."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class ObjectiveReports(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
            if metrics and objective in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return ObjectiveReports()


def searcher(sweep: SweepConfig) -> Any:
    """Tune's search algorithm for `sweep.search`: None (Tune's random and grid generator) or
    Optuna's TPE, seeded; the sweep's state (and the searcher's) resumes with the sweep."""
    if sweep.search == "random":
        return None
    if sweep.search != "optuna":
        raise ConfigError(f"sweep.search {sweep.search!r}; choose random or optuna")
    grids = [key for key, p in sweep.space.items() if p.kind == "grid"]
    if grids:
        raise ConfigError(
            f"sweep.search=optuna samples; sweep.space.{grids[0]} is a grid: use kind: choice"
        )
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "sweep.search=optuna needs optuna: pip install 'empssl-ray[optuna]'"
        ) from None
    from ray.tune.search.optuna import OptunaSearch

    sampler = optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=sweep.random_trials)
    return OptunaSearch(sampler=sampler)


def build_tuner(cfg: TuneJobConfig) -> tuple[tune.Tuner, str]:
    """A new Tuner, or the restored one when this sweep name already has state (driver died)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    sweep = cfg.sweep
    validate_space(sweep.space)
    if sweep.objective not in OBJECTIVES:
        raise ConfigError(f"sweep.objective {sweep.objective!r}; choose one of {OBJECTIVES}")
    if sweep.scheduler not in ("asha", "fifo"):
        raise ConfigError(f"sweep.scheduler {sweep.scheduler!r}; choose asha or fifo")
    search_alg = searcher(sweep)
    if sweep.budget < 0 or sweep.budget_s < 0 or not 0 < sweep.grace_fraction <= 1:
        raise ConfigError(
            f"sweep.budget={sweep.budget} / sweep.budget_s={sweep.budget_s} / "
            f"sweep.grace_fraction={sweep.grace_fraction}: budgets are >= 0 (million "
            "patch-forwards, seconds; 0: none), the fraction in (0, 1]"
        )
    if sweep.budget and sweep.budget_s:
        raise ConfigError(
            f"sweep.budget={sweep.budget} and sweep.budget_s={sweep.budget_s}: give trials "
            "one budget, patch-forwards or seconds (set the other to 0)"
        )
    if cfg.eval.monitor_test <= 0:
        raise ConfigError("sweeps rank trials by the online kNN: set eval.monitor_test > 0")
    root = storage.resolve(sweep.storage_path)
    sweep_dir = storage.join(root, sweep.name)
    # Tune's newer console prints its configuration box and "View detailed results" lines even
    # at verbose=0; the older one prints nothing there. The console is TrialConsole's.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    base = cfg.pretrain_config()
    # One tracked run per trial (with its parameters), the sweep's trials in one experiment.
    base.tracking.experiment = base.tracking.experiment or sweep.name
    # The typed base config travels as it is (in the object store), not through Tune's dicts.
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base=base,
            trials_dir=storage.join(sweep_dir, "trials"),
            budget=sweep.budget,
            budget_s=sweep.budget_s,
        ),
        trial_on_head(sweep.trial_cpus),
    )
    if tune.Tuner.can_restore(sweep_dir):
        # Finished trials keep their results; unfinished and errored ones run again.
        return tune.Tuner.restore(sweep_dir, trainable, resume_errored=True), sweep_dir
    # ASHA's clock: the percent of its budget a trial has spent, rungs at fractions of it
    # (else epochs).
    budgeted = budgeted_sweep(sweep)
    scheduler = (
        ASHAScheduler(
            time_attr="run_percent" if budgeted else "epoch",
            max_t=100 if budgeted else cfg.optim.epochs,
            grace_period=max(1, round(100 * sweep.grace_fraction))
            if budgeted
            else sweep.grace_period,
            reduction_factor=sweep.reduction_factor,
        )
        if sweep.scheduler == "asha"
        else FIFOScheduler()
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"params": to_tune_space(sweep.space)},
        tune_config=tune.TuneConfig(
            metric=sweep.objective,
            mode="max",
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=sweep.num_samples,
            max_concurrent_trials=sweep.max_concurrent_trials,
        ),
        # verbose=0: the driver's console is TrialConsole's table, not Tune's status output.
        run_config=tune.RunConfig(
            name=sweep.name,
            storage_path=root,
            verbose=0,
            callbacks=[
                TrialConsole(list(sweep.space), sweep.objective, cfg.optim.epochs, budgeted)
            ],
            # A trial whose run fails (its trainers' node lost) runs again: `pretrain` resumes
            # it from the trial's newest checkpoint.
            failure_config=tune.FailureConfig(max_failures=sweep.trial_max_failures),
        ),
    )
    return tuner, sweep_dir


def budgeted_sweep(sweep: SweepConfig) -> bool:
    """Whether the sweep's trials spend an equal budget (patch-forwards or seconds)."""
    return sweep.budget > 0 or sweep.budget_s > 0


def trial_table(
    results: tune.ResultGrid, objective: str, budgeted: bool = False
) -> list[dict[str, Any]]:
    """One row per trial: its short id, parameters, objective, epochs run, compute spent (and
    the fraction of the budget, with one); best first."""
    rows = []
    for r in (results[i] for i in range(len(results))):
        m = r.metrics or {}
        spent = m.get("patch_forwards", 0)
        rows.append(
            {
                "trial": m.get("trial_id") or (posixpath.basename(r.path) if r.path else ""),
                **{k: v for k, v in (r.config or {})["params"].items()},
                objective: m.get(objective, math.nan),
                "knn_acc": m.get("knn_acc", math.nan),
                "epochs": m.get("epoch", 0),
                "patch_forwards": spent,
                **({"budget_spent": m.get("run_percent", 0) / 100} if budgeted else {}),
                "time_s": m.get("time_total_s", math.nan),
                "loss": m.get("loss", math.nan),
                "error": None if r.error is None else type(r.error).__name__,
            }
        )
    return sorted(
        rows, key=lambda row: -row[objective] if math.isfinite(row[objective]) else math.inf
    )


class TrialConsole(tune.Callback):
    """A sweep's console in the driver, in place of Tune's own status output: the table of
    trials with their latest epoch figures, redrawn at each epoch report on a terminal, or one
    plain line per report in a job log; a line when a trial ends early or fails."""

    def __init__(self, space: list[str], objective: str, epochs: int, budgeted: bool) -> None:
        self.space, self.objective, self.epochs = space, objective, epochs
        self.budget = budgeted  # trials spend a budget (else they count epochs)
        self.rows: dict[str, dict[str, Any]] = {}
        self.drawn = 0  # lines of the table now on screen

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        if result.get("kind") != "epoch":
            return
        params = {k: v for k, v in (trial.config or {}).get("params", {}).items()}
        progress = (
            f"{result.get('run_percent', 0):.0f}% of budget"
            if self.budget
            else f"{result.get('epoch', 0)}/{self.epochs}"
        )
        row = {
            **params,
            self.objective: result.get(self.objective, math.nan),
            "epoch": f"{result.get('epoch', 0)}" if self.budget else progress,
            **({"spent": progress} if self.budget else {}),
            "loss": result.get("loss", math.nan),
        }
        self.rows[trial.trial_id] = row
        if not sys.stdout.isatty():
            cells = " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
            )
            value = row[self.objective]
            shown = f"{100 * value:.1f}%" if self.objective.endswith("acc") else f"{value:.4g}"
            self.say(
                f"trial {trial.trial_id} epoch {row['epoch']} | {self.objective} {shown} "
                f"| {progress + ' | ' if self.budget else ''}loss {row['loss']:.3f} | {cells}"
            )
            return
        shown_keys = [*self.space, self.objective, "epoch", *(["spent"] if self.budget else [])]
        table = format_table(self.rows, [*shown_keys, "loss"])
        if self.drawn:  # move up over the previous table and clear it
            sys.stdout.write(f"\x1b[{self.drawn}F\x1b[J")
        sys.stdout.write(table + "\n")
        sys.stdout.flush()
        self.drawn = table.count("\n") + 1

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        if self.budget:
            spent = last.get("run_percent", 0)
            if spent < 99.9:  # a trial that ran its steps is at 100
                self.say(f"trial {trial.trial_id} stopped early by the scheduler at {spent:.0f}%")
            return
        epochs = last.get("epoch", 0)
        if epochs < self.epochs:
            self.say(
                f"trial {trial.trial_id} stopped early by the scheduler after epoch "
                f"{epochs}/{self.epochs}"
            )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.say(f"trial {trial.trial_id} failed; its error is in {trial.path}")

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.drawn = 0  # a line under the table: the next table starts below it
