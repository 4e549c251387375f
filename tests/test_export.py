"""jobs/export.py: the exported weights in torchvision's resnet18 give our backbone's features."""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from empssl_ray.config import ConfigError, ModelConfig, PretrainConfig
from empssl_ray.job_config import ExportJobConfig
from empssl_ray.method.models import EMPSSLModel, build_model
from jobs.export import main


def _checkpoint(tmp_path: Path, backbone: str, width: int = 64) -> tuple[Path, EMPSSLModel]:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, width=width, prefeature_dim=32, hidden_dim=16, proj_dim=8)
    model = build_model(cfg, 3)
    with torch.no_grad():  # trained-looking batch norms: eval-mode features depend on them
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    path = tmp_path / "checkpoint_0001" / "checkpoint.pt"
    path.parent.mkdir()
    state = {"model": model.state_dict(), "config": asdict(PretrainConfig(model=cfg)), "epoch": 1}
    torch.save({**state, "in_channels": 3, "patch_size": 32}, path)
    return path, model.eval()


@pytest.mark.parametrize("backbone,side", [("resnet18-cifar", 32), ("resnet18-tinyimagenet", 64)])
def test_exported_weights_in_torchvision_give_our_features(
    tmp_path: Path, backbone: str, side: int
) -> None:
    path, ours = _checkpoint(tmp_path, backbone)
    paths = main(ExportJobConfig(checkpoint=str(path), out=str(tmp_path / "out")))
    notes = json.loads(Path(paths["export.json"]).read_text())
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    if notes["stem"] == "cifar":  # the three lines docs/running.md shows
        net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = torch.nn.Identity()
    net.load_state_dict(torch.load(paths["resnet18.pt"]))  # strict: every key, no extra
    net.eval()
    head = torch.nn.Sequential(
        torch.nn.Linear(512, notes["prefeature_dim"]),
        torch.nn.BatchNorm1d(notes["prefeature_dim"]),
        torch.nn.ReLU(),
    )
    head.load_state_dict(torch.load(paths["prefeature_head.pt"]))
    head.eval()
    x = torch.rand(4, 3, side, side) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(net(x), ours.backbone(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(head(net(x)), ours.encode(x), rtol=1e-5, atol=1e-5)
    assert not any(k.startswith("projector") for k in torch.load(paths["resnet18.pt"]))
    assert notes["backbone"] == backbone and notes["in_channels"] == 3


def test_backbones_that_are_not_resnet18_are_refused(tmp_path: Path) -> None:
    """format=torchvision of a narrow model: one line (a UserError, printed as one line by the
    job) that names the formats that do export it."""
    path, _ = _checkpoint(tmp_path, "resnet-narrow", width=8)
    with pytest.raises(ConfigError, match="not torchvision's .*pass format=onnx or format=torch"):
        main(ExportJobConfig(checkpoint=str(path.parent)))
    with pytest.raises(ConfigError, match="format=keras is not one of"):
        main(ExportJobConfig(checkpoint=str(path.parent), format="keras"))
    with pytest.raises(ConfigError, match="checkpoint= is required"):
        main(ExportJobConfig())


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_exported_encoder_gives_our_features_in_its_runtime(tmp_path: Path, fmt: str) -> None:
    """Any width (not only torchvision's): images in [0, 1] in, the features h out, for a
    batch size other than the one it was exported with."""
    path, ours = _checkpoint(tmp_path, "resnet-narrow", width=8)
    paths = main(ExportJobConfig(checkpoint=str(path.parent), out=str(tmp_path / fmt), format=fmt))
    notes = json.loads(Path(paths["export.json"]).read_text())
    assert notes["input"].startswith("images (N, 3, 32, 32) float32 in [0, 1]")
    images = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        expected = ours.encode(images * 2 - 1).numpy()
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(paths["encoder.onnx"], providers=["CPUExecutionProvider"])
        got = session.run(["features"], {"images": images.numpy()})[0]
    else:
        got = torch.jit.load(paths["encoder.pt"])(images).detach().numpy()
    assert got.shape == (5, 32) and notes["output"].startswith("features h (N, 32)")
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
