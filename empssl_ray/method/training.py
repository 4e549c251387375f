"""The training loop in plain PyTorch: what a Ray worker, the GPU script and any bare-PyTorch
user run.

`Trainer` owns model, loss, optimiser and schedule and takes one step (`train_step`) or one
epoch (`run_epoch`) of batches from any iterator (Ray Data's stream, or in-memory images),
measuring the time spent waiting on data around it. `method.loop.fit` is the loop over epochs.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from empssl_ray.config import PretrainConfig
from empssl_ray.errors import UserError
from empssl_ray.method.chunked_step import chunked_loss_backward, resolve_chunk
from empssl_ray.method.diagnostics import collapse_metrics
from empssl_ray.method.loss import EMPSSLLoss, Gather
from empssl_ray.method.models import EMPSSLModel, build_model
from empssl_ray.method.optim import build_optimizer
from empssl_ray.method.patches import cut_patches, patch_seed, patch_size_for, to_model_input


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is left untouched."""


class EmptyEpochError(RuntimeError):
    """An epoch got no batch: the data ran out (or never was)."""


@dataclass
class StepResult:
    """One step's loss parts, left on the device (0-d, detached) until a report reads them."""

    loss: torch.Tensor
    tcr: torch.Tensor
    invariance: torch.Tensor
    lr: float
    patches: int  # patches this worker processed in the step


def sync_batchnorm(model: EMPSSLModel, device: torch.device) -> EMPSSLModel:
    """`model` with every batch norm synchronised across the data-parallel workers.

    Each worker otherwise normalises over its own B/k images x n patches; the reference, on one
    GPU, over all B x n. SyncBatchNorm has only GPU kernels for the synchronisation.
    """
    if device.type == "cpu":
        raise ValueError(
            "model.sync_batchnorm=true needs GPU workers (ray.use_gpu=true): "
            "SyncBatchNorm does not synchronise CPU tensors"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


class Trainer:
    """Model + EMP-SSL loss + LARS + cosine schedule, stepping on uint8 patch batches.

    Args:
        cfg: the run's config.
        in_channels: image channels.
        image_size: dataset image side (default patch size).
        steps_total: optimiser steps over the whole run (sets the cosine length).
        device: where the model trains.
        gather: cross-worker gather for TCR (None on one process).
        wrap: wraps the model for data parallelism (e.g. Ray's prepare_model); identity if None.
        rank: this worker's rank: ranks draw different patches, also after a resume.
    """

    def __init__(
        self,
        cfg: PretrainConfig,
        in_channels: int,
        image_size: int,
        steps_total: int,
        device: torch.device | str = "cpu",
        gather: Gather | None = None,
        wrap: Callable[[nn.Module], nn.Module] | None = None,
        rank: int = 0,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.patch_size = patch_size_for(cfg.patches, image_size)
        self.in_channels = in_channels
        self.model: EMPSSLModel = build_model(cfg.model, in_channels).to(self.device)
        if cfg.model.sync_batchnorm and wrap is not None:
            self.model = sync_batchnorm(self.model, self.device)
        self.net = wrap(self.model) if wrap else self.model  # DDP wrapper or the model itself
        self.loss_fn = EMPSSLLoss(
            cfg.loss.invariance_weight, cfg.loss.tcr_weight, cfg.loss.eps, gather
        )
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg.optim, steps_total)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser steps taken
        self.autocast = cfg.optim.bf16 and self.device.type == "cuda"
        self.rank = rank
        # Cut patches on the path that never waits for the device (see augment.render_patches):
        # the default off the CPU; tests switch it on to run the GPU path on a CPU.
        self.sync_free_patches = self.device.type != "cpu"
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(patch_seed(cfg.run.seed, rank, 0))
        self.fixed_patches: torch.Tensor | None = None  # diagnostics' batch (`diagnose`)
        # The epoch's loss, tcr and invariance summed over its steps so far, on the device.
        self.epoch_sums = torch.zeros(3, device=self.device)
        # Most patches per forward (0: one pass) and the line that says what was chosen.
        self.chunk, self.chunk_note = resolve_chunk(
            cfg.patches.chunk, self.model, in_channels, self.patch_size, self.device
        )

    def diagnose(self) -> dict[str, float]:
        """Collapse diagnostics on the first patches this trainer trained on (a fixed batch)."""
        if self.fixed_patches is None:
            return {}
        x = to_model_input(self.fixed_patches, self.cfg.model.channels_last)  # on the device
        return collapse_metrics(self.model, x)

    def patches_from_images(
        self, images: torch.Tensor, extent: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cuts training patches on this device: (B, C, H, W) uint8 -> (B, n, C, S, S) uint8.

        Args:
            extent: (B, 2) letterboxed images' sizes (data.keep_aspect), or None.
        """
        return cut_patches(
            images.to(self.device, non_blocking=True),
            self.cfg.patches,
            self.patch_size,
            self.generator,
            sync_free=self.sync_free_patches,
            extent=extent,  # plan_patches moves it to the device
        )

    def train_step(self, patches: torch.Tensor) -> StepResult:
        """One optimiser step on (B, n, C, S, S) uint8 patches of B images.

        Reads nothing back from the device: a GPU runs ahead of the host until the next report
        (`run_epoch` checks the loss is finite there).
        """
        self.net.train()
        patches = patches.to(self.device, non_blocking=True)
        b, n = patches.shape[:2]
        if self.fixed_patches is None:
            # kept on the device: a copy to the host would wait for it
            self.fixed_patches = patches[:64, :4].reshape(-1, *patches.shape[2:]).clone()
        # View-major order so the embeddings reshape to the loss's (n, B, d) without a copy.
        x = to_model_input(patches.transpose(0, 1), self.cfg.model.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        if 0 < self.chunk < b * n:
            parts = chunked_loss_backward(self.net, x, n, self.loss_fn, self.chunk, self.autocast)
        else:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                z = self.net(x).z
            loss, parts = self.loss_fn(z.float().view(n, b, -1))
            loss.backward()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return StepResult(parts["loss"], parts["tcr"], parts["invariance"], lr, b * n)

    def run_epoch(
        self,
        batches: Iterable[Mapping[str, torch.Tensor]],
        on_step: Callable[[dict[str, float]], None] | None = None,
        log_every: int = 10,
        after_step: Callable[[Mapping[str, torch.Tensor]], None] | None = None,
    ) -> dict[str, float]:
        """Trains on every batch of one epoch; `batches` yield {"patches"} or raw {"image"} tensors.

        Every `log_every` steps (and at the end) the loss parts are read from the device, once,
        checked to be finite and passed to `on_step`; in between nothing waits for the device.
        A non-finite loss therefore stops the epoch up to `log_every` steps after it appeared,
        before any checkpoint of the epoch is written. `after_step` gets every step's batch once
        the step (and its report) is done: rows to count, a checkpoint to write inside the epoch
        (after a report, so a NaN found there is found before it).

        Returns the epoch's mean loss parts, patches/s and data-wait fraction.
        """
        sums = self.epoch_sums = torch.zeros(3, device=self.device)  # `check_finite` reads it
        steps = patches = 0
        wait = 0.0
        start = window_start = time.perf_counter()
        window_patches, window_wait = 0, 0.0
        iterator = iter(batches)
        while True:
            t0 = time.perf_counter()
            batch = next(iterator, None)
            waited = time.perf_counter() - t0
            wait, window_wait = wait + waited, window_wait + waited
            if batch is None:
                break
            if "patches" in batch:
                chunk = batch["patches"]
            else:
                chunk = self.patches_from_images(batch["image"], batch.get("extent"))
            result = self.train_step(chunk)
            parts = torch.stack([result.loss, result.tcr, result.invariance])
            sums += parts
            steps, patches = steps + 1, patches + result.patches
            window_patches += result.patches
            if self.step % log_every == 0:
                last = self._read_finite(torch.cat([parts, sums]))
                now = time.perf_counter()
                if on_step:
                    on_step(
                        {
                            "loss": last[0],
                            "tcr": last[1],
                            "invariance": last[2],
                            "lr": result.lr,
                            "patches": result.patches,
                            "step": self.step,
                            "epoch": self.epoch,
                            "patches_per_s": window_patches / (now - window_start),
                            "data_wait_frac": window_wait / (now - window_start),
                        }
                    )
                window_start, window_patches, window_wait = now, 0, 0.0
            if after_step:
                after_step(batch)
        if steps == 0:
            raise EmptyEpochError(
                "the epoch had no batches: the dataset is empty or smaller than one batch"
            )
        means = [v / steps for v in self._read_finite(sums)]
        elapsed = time.perf_counter() - start
        self.epoch += 1
        return {
            **dict(zip(("loss", "tcr", "invariance"), means, strict=True)),
            "steps": steps,
            "lr": self.optimizer.param_groups[0]["lr"],
            "patches_per_s": patches / elapsed,
            "data_wait_frac": wait / elapsed,
            "epoch_time_s": elapsed,
        }

    def check_finite(self) -> None:
        """Raises NonFiniteLossError where a loss of the epoch so far or a weight is not finite:
        what a checkpoint checks before it is written (reports read the loss every log_every
        steps only, and a step's NaN update shows in the next step's loss)."""
        self._read_finite(self.epoch_sums)
        if not bool(torch.stack([p.isfinite().all() for p in self.model.parameters()]).all()):
            raise NonFiniteLossError(
                f"the weights became NaN/inf by step {self.step} (epoch {self.epoch}); the last "
                "checkpoint is kept: lower optim.lr or raise loss.eps, then rerun to resume"
            )

    def _read_finite(self, values: torch.Tensor) -> list[float]:
        """The one host read of a report: loss parts (and sums) as floats, checked finite.

        A NaN or inf in any step since the epoch began stays in the epoch's sums, so a check
        that includes them sees every step. Raises NonFiniteLossError otherwise.
        """
        floats: list[float] = values.tolist()
        bad = [v for v in floats if not math.isfinite(v)]
        if bad:
            raise NonFiniteLossError(
                f"loss is {bad[0]} at or before step {self.step} (epoch {self.epoch}); the last "
                "checkpoint is kept: lower optim.lr or raise loss.eps, then rerun to resume"
            )
        return floats

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs: model, optimiser, schedule, counters and the config."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "generator": self.generator.get_state(),
            "generator_rank": self.rank,  # whose stream `generator` is (only one rank saves)
            "config": asdict(self.cfg),
            # What evaluation needs to feed the encoder data of another dataset (transfer).
            "in_channels": self.in_channels,
            "patch_size": self.patch_size,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores a `state_dict`; the patch generator continues, or is reseeded.

        The saved generator is the saving rank's (rank 0's): that rank continues its stream
        exactly; every other rank reseeds from (seed, rank, step), or all ranks would draw the
        same patches from here on. A state of another device type (CPU generators hold 5,056
        bytes, CUDA ones 16) cannot be restored at all: the run continues reseeded, with a
        warning, instead of failing every retry.
        """
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        saved = state.get("generator")
        current = self.generator.get_state()
        if saved is not None and saved.numel() != current.numel():
            warnings.warn(
                f"patch generator state of {saved.numel()} bytes does not fit this "
                f"{self.device.type} generator ({current.numel()} bytes; the checkpoint comes "
                f"from another device type): patches continue reseeded at step {self.step}",
                RuntimeWarning,
                stacklevel=2,
            )
        elif saved is not None and int(state.get("generator_rank", 0)) == self.rank:
            self.generator.set_state(saved.cpu())
            return
        self.generator.manual_seed(patch_seed(self.cfg.run.seed, self.rank, self.step))
