"""The plain-PyTorch training step and epoch loop: learning, checkpoints, NaN handling."""

import pytest
import torch

from empssl_ray.config import ModelConfig, PretrainConfig
from empssl_ray.engine import NonFiniteLossError, Trainer


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
    trainer = Trainer(tiny_config(), in_channels=3, image_size=32, steps_total=4)
    patches = trainer.patches_from_images(batches(1)[0]["image"])
    assert patches.shape == (16, 4, 3, 16, 16)
    result = trainer.run_epoch([{"patches": patches}])
    assert (
        result["steps"] == 1 and result["patches_per_s"] > 0 and 0 <= result["data_wait_frac"] <= 1
    )


def test_checkpoint_round_trip_resumes_identically() -> None:
    torch.manual_seed(0)
    a = Trainer(tiny_config(), 3, 32, steps_total=4)
    a.run_epoch(batches(2))
    state = a.state_dict()
    b = Trainer(tiny_config(), 3, 32, steps_total=4)
    b.load_state_dict(state)
    assert (b.epoch, b.step) == (1, 2)
    data = batches(1, seed=5)
    torch.manual_seed(1)
    ra = a.run_epoch(data)
    torch.manual_seed(1)
    rb = b.run_epoch(data)
    assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)


def test_nan_loss_stops_with_a_clear_message() -> None:
    trainer = Trainer(tiny_config(), 3, 32, steps_total=2)
    with torch.no_grad():
        trainer.model.projector[0].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="lower optim.lr"):
        trainer.run_epoch(batches(1))
