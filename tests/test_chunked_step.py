"""The patch-chunked training step (gradient cache) against the one-pass step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from empssl_ray.config import ConfigError, ModelConfig, PretrainConfig
from empssl_ray.method.chunked_step import plan_chunk
from empssl_ray.method.loop import LoopHooks, fit
from empssl_ray.method.training import Trainer
from empssl_ray.rules import parse_chunk


def tiny_config(chunk: str) -> PretrainConfig:
    cfg = PretrainConfig()
    cfg.model = ModelConfig(
        backbone="resnet-narrow", width=4, prefeature_dim=32, hidden_dim=32, proj_dim=16
    )
    cfg.patches.num_patches, cfg.patches.size, cfg.patches.chunk = 4, 16, chunk
    cfg.optim.batch_size, cfg.optim.lr = 8, 0.3
    return cfg


def trainer(chunk: str, batch_norm: bool = True) -> Trainer:
    torch.manual_seed(0)  # the same initial weights for every trainer of a test
    t = Trainer(tiny_config(chunk), in_channels=3, image_size=32, steps_total=10)
    if not batch_norm:  # normalisation that does not couple the patches of a step
        for module in list(t.model.modules()):
            for child, sub in list(module.named_children()):
                if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                    setattr(module, child, nn.Identity())
        t.optimizer.param_groups[:] = []  # rebuild: the norms' parameters are gone
        from empssl_ray.method.optim import build_optimizer

        t.optimizer, t.scheduler = build_optimizer(t.model, t.cfg.optim, 10)
    return t


def patch_batches(steps: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [
        torch.randint(0, 256, (8, 4, 3, 16, 16), dtype=torch.uint8, generator=g)
        for _ in range(steps)
    ]


@pytest.mark.parametrize("chunk", ["5", "8", "13"])
def test_chunked_steps_train_as_the_one_pass_step_does(chunk: str) -> None:
    """Three steps of 32 patches, 5, 8 or 13 per forward: the same losses and weights."""
    one_pass, chunked = trainer("off", batch_norm=False), trainer(chunk, batch_norm=False)
    assert chunked.chunk == int(chunk) and one_pass.chunk == 0
    for patches in patch_batches(3):
        a, b = one_pass.train_step(patches), chunked.train_step(patches)
        torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(
        one_pass.model.named_parameters(), chunked.model.parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_with_batch_norm_each_chunk_is_normalised_alone_and_counted_once() -> None:
    """Batch norm normalises per chunk (documented), and its running statistics move once per
    chunk: the second, graph-keeping pass leaves them as the first pass set them."""
    chunked = trainer("8")
    norms = [m for m in chunked.model.modules() if isinstance(m, nn.BatchNorm2d)]
    for patches in patch_batches(2):
        chunked.train_step(patches)
    assert all(int(m.num_batches_tracked or 0) == 2 * 4 for m in norms)  # 32 patches in 4 chunks
    one_pass = trainer("off")
    step_a = one_pass.train_step(patch_batches(1)[0])
    step_b = trainer("8").train_step(patch_batches(1)[0])
    assert not torch.allclose(step_a.loss, step_b.loss)  # ghost batches of 8, not 32


def test_chunk_settings_parse_or_fail_in_one_line() -> None:
    assert parse_chunk("off") == 0 and parse_chunk("auto") == "auto" and parse_chunk(512) == 512
    with pytest.raises(ConfigError, match="patches.chunk='lots'"):
        parse_chunk("lots")


def test_the_planner_sizes_the_chunk_from_free_memory_and_the_model() -> None:
    model = trainer("off").model
    small, why = plan_chunk(model, 3, 16, torch.device("cpu"), 64 * 2**20)
    large, _ = plan_chunk(model, 3, 16, torch.device("cpu"), 256 * 2**20)
    bigger_patches, _ = plan_chunk(model, 3, 32, torch.device("cpu"), 256 * 2**20)
    assert 0.9 * 4 * small <= large <= 1.1 * 4 * small  # 4x the memory, 4x the patches
    assert bigger_patches < large / 3  # 4x the pixels a patch
    assert why.startswith(f"patches.chunk=auto: at most {small:,} patches per forward")


class Notes(LoopHooks):
    def __init__(self) -> None:
        self.notes: list[str] = []

    def on_note(self, text: str) -> None:
        self.notes.append(text)


def test_the_run_says_what_chunk_it_uses_before_training() -> None:
    chunked, notes = trainer("auto"), Notes()
    data = [{"patches": p} for p in patch_batches(1)]
    fit(chunked, lambda epoch: data, 1, hooks=[notes], log_every=0)
    assert notes.notes[0].startswith("patches.chunk=auto: at most") and chunked.chunk > 0
