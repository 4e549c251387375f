"""The jobs' own configs around a run's (`config.PretrainConfig`): what to evaluate, sweep,
reproduce, prepare and export. Hydra structured configs like it: each field's comment gives its
meaning and units.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from empssl_ray.config import DataConfig, PretrainConfig


@dataclass
class EvaluateConfig(PretrainConfig):
    """A pretrain config (so the same experiment presets apply) plus what to evaluate."""

    # checkpoint dir to evaluate; None = run.name's latest
    checkpoint: str | None = None
    # evaluate a random-init encoder instead (the baseline)
    random_init: bool = False
    # metrics JSON path or URI; None = <run dir>/eval.json
    output: str | None = None
    # transfer: registry name of a dataset to evaluate on instead of `data` (channels and image
    # size may differ from the pretraining data's); data's limits apply to it too
    eval_data: str | None = None
    # its directory or URI; None = the dataset's default place
    eval_data_root: str | None = None


@dataclass
class SearchParam:
    # choice | grid | uniform | loguniform
    kind: str = "choice"
    # choice/grid: the candidates
    values: list[Any] | None = None
    # uniform/loguniform: lower bound
    low: float | None = None
    # uniform/loguniform: upper bound
    high: float | None = None


@dataclass
class SweepConfig:
    # sweep name; rerunning the same name resumes it
    name: str = "sweep"
    # where sweeps live (local dir or URI)
    storage_path: str = "sweeps"
    # Search space: dotted config keys -> distributions. Tunable keys: patches.num_patches,
    # patches.size, loss.invariance_weight, loss.tcr_weight, loss.eps, optim.lr,
    # optim.batch_size, model.width
    space: dict[str, SearchParam] = field(default_factory=dict)
    # how trials are chosen: random (grid keys enumerated) | optuna (TPE: a model of the
    # trials seen so far proposes the next; the optuna extra; choice, uniform, loguniform keys)
    search: str = "random"
    # samples drawn (with grid keys: repeats of the whole grid)
    num_samples: int = 4
    # trials running at once
    max_concurrent_trials: int = 2
    # asha (early-stops weak trials at each epoch) | fifo
    scheduler: str = "asha"
    # what trials are ranked by: knn_acc (the online kNN accuracy at each epoch's end; with a
    # budget, at the budget's end)
    objective: str = "knn_acc"
    # each trial's budget in millions of patch-forwards (patches through the model): its steps
    # follow from its batch size and patch count (equal compute for every trial), its schedule
    # ends at its own last step, and ASHA's rungs are fractions of it; 0 = optim.epochs each
    budget: float = 0.0
    # or each trial's budget in seconds of training: its steps follow from its own step time,
    # measured before it starts (trials of different widths or patch sizes cost what they
    # cost); 0 = none. One of budget and budget_s
    budget_s: float = 0.0
    # with a budget: the fraction of it every trial spends before ASHA may stop it
    grace_fraction: float = 0.25
    # ASHA without a budget: epochs every trial gets before it can be stopped
    grace_period: int = 1
    # ASHA: keep the best 1/reduction_factor at each rung
    reduction_factor: int = 2
    # CPUs the trial's driver function holds; it runs on the head node, out of reach of spot
    # losses, and only coordinates (its trainers ask their own). 0 fits heads without CPUs
    trial_cpus: float = 0.0
    # restarts of a trial whose run failed (a node lost): each resumes from the trial's newest
    # checkpoint (its run dir)
    trial_max_failures: int = 3
    # sweep.search=optuna: trials drawn at random before TPE's model of them proposes the rest
    random_trials: int = 10
    # seeds the search
    seed: int = 0


@dataclass
class TuneJobConfig(PretrainConfig):
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def pretrain_config(self) -> PretrainConfig:
        """The base run every trial starts from (the sweep section left out)."""
        return PretrainConfig(**{f.name: getattr(self, f.name) for f in fields(PretrainConfig)})


@dataclass
class ReproduceConfig:
    # rows of the paper's table: experiment=paper/<row> names, e.g. [cifar10-1ep-20p]; [] = all
    rows: list[str] = field(default_factory=list)
    # CPU-sized: each row shrunk to the smoke model, 512 / 256 images, 1 epoch, a tenth of its
    # patches (at least 2), on CPU workers: checks the whole path, reproduces no figure
    quick: bool = False
    # row (or dataset name, for every row of that dataset) -> Parquet folder or URI made by
    # jobs/prepare.py (read as data=parquet); e.g. {imagenet100-10ep-200p: s3://b/in100-640,
    # cifar10: s3://b/cifar10}. Rows without an entry use their preset's data
    data_roots: dict[str, str] = field(default_factory=dict)
    # sweep name; rerunning the same name resumes it
    name: str = "paper"
    # where it lives: a local dir or a URI (s3://...)
    storage_path: str = "sweeps"
    # rows trained at once
    max_concurrent_trials: int = 4
    # CPUs each row's driver function holds, on the head node (its trainers ask their own)
    trial_cpus: float = 0.0
    # restarts of a row whose run failed (a node lost), each from the row's newest checkpoint
    trial_max_failures: int = 3


@dataclass
class ReproduceJobConfig:
    reproduce: ReproduceConfig = field(default_factory=ReproduceConfig)
    # Ray cluster address; None = the job's cluster or a local Ray
    address: str | None = None
    # Ray's own logs on the console, as run.verbose does for the other jobs
    verbose: bool = False


@dataclass
class PrepareConfig:
    # images per part-NNNNN.parquet file
    rows_per_file: int = 10_000
    # progress bar per split
    progress: bool = True


@dataclass
class PrepareJobConfig:
    data: DataConfig = field(default_factory=DataConfig)
    # folder or URI (s3://bucket/name) the Parquet dataset goes to
    out: str | None = None
    prepare: PrepareConfig = field(default_factory=PrepareConfig)


@dataclass
class ExportJobConfig:
    # a run's checkpoint.pt, or the checkpoint_<time> folder holding it (local or URI); required
    checkpoint: str | None = None
    # output folder (local or URI); None = <checkpoint folder>/export
    out: str | None = None
    # torchvision: resnet18 state_dict + head (width 64 only); onnx or torchscript: the whole
    # encoder, float images in [0, 1] of the training patch size -> features h (any width)
    format: str = "torchvision"
