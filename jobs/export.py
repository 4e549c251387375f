"""Exports a run's encoder as plain torchvision ResNet-18 weights (projector dropped).

    python jobs/export.py runs/<name>/checkpoint_<time>/checkpoint.pt --out exported/
    python jobs/export.py s3://bucket/runs/<name>/checkpoint_<time> --out s3://bucket/exported

Writes resnet18.pt (a torchvision resnet18 state_dict without fc), prefeature_head.pt (the
pre-feature head h) and export.json (stem, channels, input scaling). Loading it elsewhere:

    net = torchvision.models.resnet18(); net.fc = torch.nn.Identity()
    net.conv1, net.maxpool = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False), torch.nn.Identity()
    net.load_state_dict(torch.load("exported/resnet18.pt"))   # (the middle line: CIFAR stem)
"""

from __future__ import annotations

import argparse

from empssl_ray.data import storage
from empssl_ray.evaluation.export import write_export
from empssl_ray.runs.checkpoints import checkpoint_file


def main(argv: list[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a run's checkpoint.pt (or the directory holding it)")
    p.add_argument("--out", help="output directory (default: <checkpoint dir>/export)")
    args = p.parse_args(argv)
    file = storage.resolve(checkpoint_file(args.checkpoint))
    paths = write_export(file, args.out or storage.join(file.rsplit("/", 1)[0], "export"))
    for path in paths.values():
        print(path)
    return paths


if __name__ == "__main__":
    main()
