"""The plain-PyTorch training step and epoch loop: learning, checkpoints, NaN handling."""

import io

import pytest
import torch

from empssl_ray.config import ModelConfig, PretrainConfig
from empssl_ray.method.patches import patch_seed
from empssl_ray.method.training import NonFiniteLossError, Trainer


def tiny_config() -> PretrainConfig:
    cfg = PretrainConfig()
    cfg.model = ModelConfig(
        backbone="resnet-narrow", width=4, prefeature_dim=32, hidden_dim=32, proj_dim=16
    )
    cfg.patches.num_patches, cfg.patches.size = 4, 16
    cfg.optim.batch_size, cfg.optim.lr = 16, 0.3
    return cfg


def batches(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)}
        for _ in range(n)
    ]


def test_epoch_lowers_the_loss_and_reports() -> None:
    torch.manual_seed(0)
    trainer = Trainer(tiny_config(), in_channels=3, image_size=32, steps_total=30)
    logged: list[dict] = []
    data = batches(1)  # one batch seen repeatedly: the loss must go down on it
    first = trainer.run_epoch(data)["loss"]
    for _ in range(20):
        last = trainer.run_epoch(data, on_step=logged.append, log_every=5)["loss"]
    assert last < first
    assert trainer.epoch == 21 and trainer.step == 21
    assert logged and {"loss", "tcr", "invariance", "lr", "patches_per_s", "data_wait_frac"} <= set(
        logged[0]
    )


def test_patch_batches_and_image_batches_both_train() -> None:
    """A batch of patches cut off the trainer and a batch of images cut on it each take a
    step that moves the weights."""
    trainer = Trainer(tiny_config(), in_channels=3, image_size=32, steps_total=4)
    patches = trainer.patches_from_images(batches(1)[0]["image"])
    assert patches.shape == (16, 4, 3, 16, 16)
    for batch in ({"patches": patches}, batches(1, seed=2)[0]):
        before = [p.detach().clone() for p in trainer.model.parameters()]
        result = trainer.run_epoch([batch])
        moved = sum(
            float((p - b).abs().sum())
            for p, b in zip(trainer.model.parameters(), before, strict=True)
        )
        assert result["steps"] == 1 and moved > 0, batch.keys()


def test_checkpoint_round_trip_resumes_identically() -> None:
    """Two trainers, one resumed from the other's state, take the same 3 steps: the same
    weights, optimiser state (LARS momentum) and learning rate after, to float precision."""
    torch.manual_seed(0)
    a = Trainer(tiny_config(), 3, 32, steps_total=8)
    a.run_epoch(batches(2))
    saved = io.BytesIO()  # through bytes, as a checkpoint: no tensor shared with `a`
    torch.save(a.state_dict(), saved)
    b = Trainer(tiny_config(), 3, 32, steps_total=8)
    b.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=False))
    assert (b.epoch, b.step) == (1, 2)
    data = batches(3, seed=5)
    for trainer in (a, b):
        torch.manual_seed(1)
        trainer.run_epoch(data)
    assert (a.step, b.step) == (5, 5)
    for pa, pb in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for key in sa:
        for name in sa[key]:
            torch.testing.assert_close(sa[key][name], sb[key][name], rtol=1e-5, atol=1e-6)
    assert a.optimizer.param_groups[0]["lr"] == b.optimizer.param_groups[0]["lr"]
    assert a.scheduler.state_dict() == b.scheduler.state_dict()


def test_nan_loss_stops_with_a_clear_message() -> None:
    trainer = Trainer(tiny_config(), 3, 32, steps_total=2)
    with torch.no_grad():
        first = trainer.model.projector[0]
        assert isinstance(first, torch.nn.Linear)
        first.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="lower optim.lr"):
        trainer.run_epoch(batches(1))


def _trained_state(rank: int = 0) -> dict:
    torch.manual_seed(0)
    trainer = Trainer(tiny_config(), 3, 32, steps_total=4, rank=rank)
    trainer.run_epoch(batches(2))
    return trainer.state_dict()


def test_gpu_checkpoint_resumes_on_cpu_reseeded_with_a_warning() -> None:
    state = _trained_state()
    state["generator"] = torch.zeros(16, dtype=torch.uint8)  # what a CUDA generator saves
    resumed = Trainer(tiny_config(), 3, 32, steps_total=4)
    with pytest.warns(RuntimeWarning, match="16 bytes.*reseeded at step 2"):
        resumed.load_state_dict(state)
    expected = torch.Generator().manual_seed(patch_seed(0, 0, 2))
    assert torch.equal(resumed.generator.get_state(), expected.get_state())
    assert resumed.run_epoch(batches(1))["steps"] == 1  # and the run goes on


class CudaSizedGenerator:
    """Stands in for a CUDA generator: a 16-byte state that refuses any other size."""

    def __init__(self) -> None:
        self.seeds: list[int] = []

    def get_state(self) -> torch.Tensor:
        return torch.zeros(16, dtype=torch.uint8)

    def set_state(self, state: torch.Tensor) -> None:
        raise RuntimeError(f"Expected a 'cuda' generator state of size 16, got {state.numel()}")

    def manual_seed(self, seed: int) -> "CudaSizedGenerator":
        self.seeds.append(seed)
        return self


def test_cpu_checkpoint_resumes_on_a_cuda_sized_generator_reseeded() -> None:
    state = _trained_state()
    assert state["generator"].numel() == 5056  # a CPU generator's state
    resumed = Trainer(tiny_config(), 3, 32, steps_total=4)
    resumed.generator = CudaSizedGenerator()  # type: ignore[assignment]
    with pytest.warns(RuntimeWarning, match="5056 bytes"):
        resumed.load_state_dict(state)
    assert resumed.generator.seeds == [patch_seed(0, 0, 2)]  # type: ignore[attr-defined]


def test_ranks_draw_different_patches_after_a_resume() -> None:
    state = _trained_state(rank=0)  # only rank 0 saves
    ranks = [Trainer(tiny_config(), 3, 32, steps_total=4, rank=r) for r in (0, 1)]
    for trainer in ranks:
        trainer.load_state_dict(state)
    assert torch.equal(ranks[0].generator.get_state(), state["generator"])  # rank 0 continues
    assert not torch.equal(ranks[1].generator.get_state(), state["generator"])
    images = batches(1, seed=3)[0]["image"]
    p0, p1 = (trainer.patches_from_images(images) for trainer in ranks)
    assert not torch.equal(p0, p1)
    # Rank 1's new stream is reproducible and is not its stream from the start replayed.
    again = Trainer(tiny_config(), 3, 32, steps_total=4, rank=1)
    again.load_state_dict(state)
    assert torch.equal(again.patches_from_images(images), p1)
    fresh = Trainer(tiny_config(), 3, 32, steps_total=4, rank=1)
    assert not torch.equal(fresh.patches_from_images(images), p1)


def test_fresh_ranks_draw_different_patches() -> None:
    images = batches(1)[0]["image"]
    p0, p1 = (Trainer(tiny_config(), 3, 32, 4, rank=r).patches_from_images(images) for r in (0, 1))
    assert not torch.equal(p0, p1)


HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every call of a tensor method that makes the host wait for a GPU's results."""
    calls: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def test_a_training_step_reads_nothing_back_from_the_device(host_reads: list[str]) -> None:
    trainer = Trainer(tiny_config(), 3, 32, steps_total=8)
    trainer.sync_free_patches = True  # the GPU's patch path, run on the CPU
    images = batches(1)[0]["image"]
    host_reads.clear()
    trainer.train_step(trainer.patches_from_images(images))
    assert host_reads == []
    # An epoch of 6 steps reporting every 3: one read per report and one at the end.
    logged: list[dict] = []
    trainer.run_epoch(batches(6), on_step=logged.append, log_every=3)
    assert len(logged) == 2 and host_reads == ["tolist"] * 3
    # The counter sees reads: the grouped CPU path reads its group sizes on the host.
    trainer.sync_free_patches = False
    host_reads.clear()
    trainer.patches_from_images(images)
    assert "tolist" in host_reads
