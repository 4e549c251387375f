"""Hydra structured configs: every knob of a run, with its meaning and units.

The YAML files under `empssl_ray/conf/` only pick values; the schema and the defaults live here,
so a typo in an override fails at start-up with Hydra's one-line error instead of mid-run.
Nothing here parses arguments or imports Hydra: `launch.py` composes these, tests build them
directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from empssl_ray.errors import UserError


class ConfigError(UserError, ValueError):
    """A config a user wrote that cannot work; the message says which field and how to fix it."""


@dataclass
class DataConfig:
    # dataset registry name: cifar10, cifar100, fashion-mnist, imagefolder, parquet
    name: str = "fashion-mnist"
    # directory or URI (s3://, gs://) of the data; None = the dataset's default place
    root: str | None = None
    # let torchvision download cifar/fashion-mnist when absent (needs network)
    download: bool = True
    # use only the first N training images (None = all)
    train_limit: int | None = None
    # use only the first N test images (None = all)
    test_limit: int | None = None
    # parquet: column of encoded image bytes (JPEG/PNG/...)
    image_column: str = "image"
    # parquet: column of integer labels
    label_column: str = "label"
    # imagefolder/parquet: class count; None = infer from the labels
    num_classes: int | None = None
    # imagefolder/parquet: side in pixels images are resized to; None = as stored
    image_size: int | None = None
    # imagefolder/parquet: images keep their aspect ratio and resolution up to image_size: each
    # is scaled down only where its longer side exceeds image_size, letterboxed in an
    # image_size x image_size canvas, and crops are drawn on its own extent (the reference's
    # ImageNet path, crops from the original images); false = squashed to image_size x image_size
    keep_aspect: bool = False
    # "error" stops naming the file/row; "skip" drops it and counts it in metrics
    on_bad_image: str = "error"

    def __post_init__(self) -> None:
        # Ray workers run in other directories: a local root is pinned where the config is made.
        if self.root and "://" not in self.root:
            self.root = os.path.abspath(os.path.expanduser(self.root))


@dataclass
class PatchConfig:
    # n: augmented patches per image in training (paper: 20 to 200)
    num_patches: int = 20
    # S: patch side in pixels fed to the model; None = the dataset's image size
    size: int | None = None
    # fraction of the image area each crop covers (paper: a quarter)
    crop_scale: float = 0.25
    # resize of the crop to S: bilinear, or bicubic (paper's ImageNet)
    interpolation: str = "bilinear"
    # [min, max] width/height ratio of the crops, drawn log-uniformly per patch as torchvision's
    # RandomResizedCrop does; [1, 1] = square crops (paper's CIFAR), [0.75, 1.333] its ImageNet
    aspect_ratio: list[float] = field(default_factory=lambda: [1.0, 1.0])
    # most patches per training forward: off (all n x B of a worker's step at once, batch norm
    # over all of them as in the reference), a count, or auto (from the device's free memory and
    # the model); a step with more patches runs the gradient cache (method/chunked_step.py)
    chunk: str = "off"


@dataclass
class ModelConfig:
    # registry: resnet18-cifar, resnet18-imagenet, resnet18-tinyimagenet, resnet-narrow
    backbone: str = "resnet18-cifar"
    # channels of the first stage; ResNet-18 is 64, CPU tests use 8-16
    width: int = 64
    # output of head h, the representation evaluated
    prefeature_dim: int = 4096
    # hidden width of projector g
    hidden_dim: int = 4096
    # d: output of projector g, the space the loss lives in
    proj_dim: int = 1024
    # NHWC memory format: faster convolutions on recent GPUs
    channels_last: bool = False
    # batch norm over all workers' patches (the reference's one GPU sees all n x B) instead of
    # each worker's share; used only with several GPU workers (SyncBatchNorm needs CUDA)
    sync_batchnorm: bool = False


@dataclass
class LossConfig:
    # lambda ("patch_sim") on the patch-invariance term
    invariance_weight: float = 200.0
    # weight on the total coding rate term
    tcr_weight: float = 1.0
    # distortion eps in R(Z) = 1/2 logdet(I + d/(B eps) Z^T Z), as the reference passes it
    eps: float = 0.2


@dataclass
class OptimConfig:
    # passes over the training images
    epochs: int = 1
    # epochs the cosine schedule spans; 0 = optim.epochs. Larger reads a run part-way through a
    # longer schedule, as the paper's multi-epoch table does (epochs 1 and 10 of 30)
    schedule_epochs: int = 0
    # steps the run trains instead of whole epochs (its last epoch cut short; the schedule
    # spans them); 0 = optim.epochs. A sweep with sweep.budget sets it per trial
    max_steps: int = 0
    # seconds of training instead (with max_steps 0): max_steps follows from a step time
    # measured on this run's model and batch before it starts (method/step_budget.py); 0 = off
    budget_s: float = 0.0
    # images per step across all workers (each image brings num_patches patches)
    batch_size: int = 100
    # peak learning rate, annealed by cosine to 0 over all steps
    lr: float = 0.3
    # SGD momentum (Nesterov)
    momentum: float = 0.9
    # L2 on weights; bias and norm parameters are excluded
    weight_decay: float = 1e-4
    # LARS trust coefficient; trust ratio clipped at 1
    lars_eta: float = 0.005
    # linear warm-up steps before the cosine (reference: 0)
    warmup_steps: int = 0
    # bf16 autocast of the model on GPU (ignored on CPU); False = float32, as the reference
    # trains. The loss and TCR run in float32 either way.
    bf16: bool = False


@dataclass
class EvalConfig:
    # T: patches averaged per image for bag-of-features (paper: 128)
    num_patches: int = 128
    # images per embedding batch
    batch_size: int = 256
    # most patches in one encoder forward (evaluation and the kNN monitor): bounds memory
    # whatever batch_size x num_patches is; the features do not depend on it. 0 = all at once
    patches_per_forward: int = 4096
    # neighbours in the weighted kNN
    knn_k: int = 20
    # temperature of the kNN's exp(similarity / T) weights
    knn_temperature: float = 0.07
    # epochs of the linear probe
    probe_epochs: int = 100
    # linear probe SGD learning rate (cosine to 0, stepped per epoch)
    probe_lr: float = 0.03
    # linear probe SGD weight decay (reference: 5e-5)
    probe_weight_decay: float = 5e-5
    # images per linear probe step; the last partial batch of an epoch is dropped (reference)
    probe_batch_size: int = 100
    # standardise features with the training set's mean/std before the probe (reference: no)
    probe_standardize: bool = False
    # the semi-supervised protocol: the probe also trained on these fractions of the training
    # labels (class-balanced subsets drawn with run.seed, the same rows for every encoder),
    # reported as probe_<percent>pct_acc beside the full-label probe; [] = none
    label_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1])
    # a 2-D picture of the test embeddings coloured by class, embeddings-<encoder>.png beside
    # curves.png: auto (UMAP where umap-learn is installed, else PCA) | umap | pca | none
    embedding_map: str = "auto"
    # online kNN: labelled training images used as the memory bank
    monitor_train: int = 1000
    # online kNN: test images scored each epoch (0 disables the monitor)
    monitor_test: int = 500
    # online kNN: patches per image (few: it runs every epoch)
    monitor_patches: int = 4


@dataclass
class RayConfig:
    # Ray cluster address; None = the job's cluster or an embedded local Ray
    address: str | None = None
    # training workers (DDP ranks); 0 = Ray Train's local mode in the driver, for debugging only:
    # it keeps no checkpoint on storage, so a rerun cannot resume
    num_workers: int = 2
    # fewest training workers an elastic run trains on: with 0 < min_workers < num_workers the
    # run starts once min_workers fit, goes on with fewer when a node is lost and grows back to
    # num_workers as nodes come (each resize a restart from the newest checkpoint). The global
    # batch stays optim.batch_size, so every count in between must divide it. 0 = fixed
    min_workers: int = 0
    # seconds between an elastic run's looks for room to grow (each growth is a restart from
    # the newest checkpoint: not more often than a few checkpoints' worth of training)
    elastic_check_s: float = 60.0
    # one GPU per training worker (nccl); False = CPU workers (gloo)
    use_gpu: bool = False
    # CPUs each training worker reserves
    cpus_per_worker: float = 1.0
    # Extra Ray resources per trainer, e.g. ++ray.trainer_resources={trainer: 1} (the ++: Hydra
    # refuses new keys in a typed dict without it)
    trainer_resources: dict[str, float] = field(default_factory=dict)
    # augmentation actor pool: fewest actors kept alive
    aug_min_actors: int = 1
    # augmentation actor pool: most actors it grows to under demand
    aug_max_actors: int = 2
    # CPUs each augmentation actor reserves
    aug_cpus_per_actor: float = 1.0
    # Extra Ray resources per augmentation actor, e.g. ++ray.aug_resources={augment: 1}
    aug_resources: dict[str, float] = field(default_factory=dict)
    # images per augmentation task
    aug_batch_size: int = 64
    # CPUs each read/decode/shuffle task reserves (fractional on laptops)
    read_cpus: float = 1.0
    # ship raw images and cut patches on the training device (n x fewer bytes)
    patches_on_trainer: bool = False
    # worker failures survived by restarting from the latest checkpoint
    max_failures: int = 2
    # blocks (of aug_batch_size x 16 images) one Ray Data execution plans at most: Ray sets every
    # read task up before the first batch (about 0.5 ms each), so a split of more blocks than
    # this (ImageNet at 1.28M rows: 1,252) streams its epochs one window of epochs per execution
    blocks_per_execution: int = 1024
    # batches each trainer holds ready, fetched on across epoch boundaries and across the
    # start-up (seconds) of the next window of epochs on a large split: keep depth x step time
    # above that (memory: depth x one per-worker batch)
    prefetch_batches: int = 16


@dataclass
class RunConfig:
    # run name; rerunning with the same name resumes from its latest checkpoint
    name: str = "empssl"
    # where runs live: a local dir (made absolute) or a URI (s3://..., gs://...). On a cluster of
    # several nodes, or under `ray job submit`, a URI unless shared_filesystem is set
    storage_path: str = "runs"
    # local paths in data.root / storage paths are on a filesystem every node mounts (NFS, EFS,
    # Filestore): lets a multi-node job use them
    shared_filesystem: bool = False
    # seeds model init and patch randomness
    seed: int = 0
    # report metrics every N steps (and at each epoch's end)
    log_every_steps: int = 10
    # checkpoint inside an epoch too, every N optimiser steps (0: at epoch ends only); a restart
    # goes on from the checkpoint's row, training every image once per epoch
    checkpoint_every_steps: int = 0
    # checkpoint inside an epoch when this many minutes passed since the last checkpoint (0:
    # never); sized for GPU runs, where one epoch of a large dataset takes hours
    checkpoint_every_minutes: float = 30.0
    # newest complete checkpoints kept in the run dir, across restarts (older ones deleted)
    checkpoints_to_keep: int = 2
    # seconds an object-store outage (refused connections, timeouts, 5xx, throttling) is waited
    # out, with backoff, before the worker fails and the run restarts from its checkpoint
    storage_retry_s: float = 300.0
    # one warning line when the effective rank of a fixed batch's embeddings (each epoch's
    # collapse diagnostic, method/diagnostics.py) falls below this; 0 = never
    collapse_rank: float = 2.0
    # run the bag-of-features evaluation after pretraining
    evaluate: bool = True
    # also evaluate a random-init encoder on the same protocol
    compare_random_init: bool = False
    # progress bars on long stages
    progress: bool = True
    # Ray's own logs on the console (worker reports, Ray Data plans, raylet warnings); also on
    # with the environment variable EMPSSL_VERBOSE=1
    verbose: bool = False


@dataclass
class TrackingConfig:
    # where runs and sweeps are tracked: none | mlflow | wandb (each an optional extra)
    backend: str = "none"
    # MLflow's tracking URI (http://host:5000, databricks, ...); None = MLFLOW_TRACKING_URI or
    # MLflow's default. W&B reads WANDB_BASE_URL / WANDB_MODE (offline) from the environment
    uri: str | None = None
    # MLflow experiment / W&B project; None = "empssl-ray" (a sweep: the sweep's name)
    experiment: str | None = None
    # W&B's local folder for run files; None = its default (./wandb)
    wandb_dir: str | None = None


@dataclass
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
