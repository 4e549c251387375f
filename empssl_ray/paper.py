"""The paper's figures, in one table: what `experiment=paper/<row>` presets are compared with.

Linear-probe top-1 accuracy (%) of EMP-SSL, ResNet-18, bag-of-features over 128 patches, as the
paper's Table 1 and the reference README report them (arXiv 2304.03977; `../shared/emp-ssl.md`).
Every preset under `empssl_ray/conf/experiment/paper/` has a row here and no row lacks one (a
test holds both ways); `jobs/reproduce.py` writes its comparison column from this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's table."""

    dataset: str  # as the paper names it
    epochs: int
    patches: int  # n, patches per image in training
    probe_acc: float  # the paper's linear-probe accuracy, %
    note: str = ""  # where the figure comes from when the paper gives more than one


FIGURES: dict[str, PaperRow] = {
    "cifar10-1ep-20p": PaperRow("CIFAR-10", 1, 20, 80.6, "paper abstract: 85.1"),
    "cifar10-1ep-200p": PaperRow("CIFAR-10", 1, 200, 82.6, "README; 84.2 with a 1-epoch schedule"),
    "cifar10-10ep-20p": PaperRow("CIFAR-10", 10, 20, 90.7),
    "cifar10-10ep-200p": PaperRow("CIFAR-10", 10, 200, 91.5),
    "cifar10-30ep-20p": PaperRow("CIFAR-10", 30, 20, 93.1),
    "cifar10-30ep-200p": PaperRow("CIFAR-10", 30, 200, 93.4),
    "cifar100-1ep-20p": PaperRow("CIFAR-100", 1, 20, 55.1),
    "cifar100-1ep-200p": PaperRow("CIFAR-100", 1, 200, 57.7, "abstract: 58.5"),
    "cifar100-10ep-20p": PaperRow("CIFAR-100", 10, 20, 67.8),
    "cifar100-10ep-200p": PaperRow("CIFAR-100", 10, 200, 70.1),
    "tinyimagenet-10ep-200p": PaperRow("Tiny ImageNet", 10, 200, 51.5),
    "imagenet100-10ep-200p": PaperRow("ImageNet-100", 10, 200, 78.9),
}
