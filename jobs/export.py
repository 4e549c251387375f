"""Exports a run's encoder for use outside this project (projector dropped).

    python jobs/export.py checkpoint=runs/<name>/checkpoint_<time> out=exported/
    python jobs/export.py checkpoint=s3://bucket/runs/<name>/checkpoint_<time> format=onnx
    python jobs/export.py checkpoint=runs/<name>/checkpoint_<time> format=torchscript

format=torchvision (default) writes resnet18.pt (a torchvision resnet18 state_dict without fc),
prefeature_head.pt (the pre-feature head h) and export.json (stem, channels, input scaling).
Loading it elsewhere:

    net = torchvision.models.resnet18(); net.fc = torch.nn.Identity()
    net.conv1, net.maxpool = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False), torch.nn.Identity()
    net.load_state_dict(torch.load("exported/resnet18.pt"))   # (the middle line: CIFAR stem)

format=onnx writes encoder.onnx (needs the `onnx` extra), format=torchscript encoder.pt: the
whole encoder, images (N, C, S, S) float in [0, 1] at the training patch size in, features h out;
export.json says C, S and the feature size.
"""

from __future__ import annotations

from empssl_ray.config import ConfigError
from empssl_ray.data import storage
from empssl_ray.evaluation.export import write_export
from empssl_ray.job_config import ExportJobConfig
from empssl_ray.launch import start
from empssl_ray.runs.checkpoints import checkpoint_file


def main(cfg: ExportJobConfig) -> dict[str, str]:
    """Writes the export; returns the locations of its files (also printed)."""
    if cfg.checkpoint is None:
        raise ConfigError("checkpoint= is required: a run's checkpoint_<time> folder or file")
    file = storage.resolve(checkpoint_file(cfg.checkpoint))
    out = cfg.out or storage.join(file.rsplit("/", 1)[0], "export")
    paths = write_export(file, out, cfg.format)
    for path in paths.values():
        print(path)
    return paths


if __name__ == "__main__":
    start("export", ExportJobConfig, main)
