"""The paper's figures, in one table: what `experiment=paper/<row>` presets are compared with.

Linear-probe top-1 accuracy (%) of EMP-SSL, ResNet-18, bag-of-features over 128 patches, as the
paper's Table 1 and the reference README report them (arXiv 2304.03977; `../shared/emp-ssl.md`).
Every preset under `empssl_ray/conf/experiment/paper/` has a row here and no row lacks one (a
test holds both ways); `jobs/reproduce.py` writes its comparison column from this table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's table, with the schedule its figure was read under."""

    dataset: str  # as the paper names it
    epochs: int  # epochs trained when the figure was read
    patches: int  # n, patches per image in training
    probe_acc: float  # the paper's linear-probe accuracy, % (the probe's last epoch)
    schedule_epochs: int  # epochs the cosine spanned: 1 (the 1-epoch table) or 30
    note: str = ""  # where the figure comes from


ONE_EPOCH = "reference README's 1-epoch table (a 1-epoch schedule, run with --epoch 2)"
MULTI = "reference README's multi-epoch table, read at epoch {} of a 30-epoch schedule"


def _one_epoch(dataset: str, acc: float, abstract: float | None = None) -> PaperRow:
    note = ONE_EPOCH + (f"; the abstract gives {abstract}" if abstract else "")
    return PaperRow(dataset, 1, 20, acc, 1, note)


def _of_30(dataset: str, epochs: int, patches: int, acc: float) -> PaperRow:
    return PaperRow(dataset, epochs, patches, acc, 30, MULTI.format(epochs))


def _native(row: PaperRow) -> PaperRow:
    return replace(row, note=row.note + "; the figure is at 224 px, this row trains at 64 px")


# Each preset trains the row's epochs under the row's schedule (`optim.schedule_epochs`): its
# figure is compared like for like. The probe's last epoch is compared, as the paper reports it
# (the reference's code also prints the best epoch, which picks by test accuracy).
FIGURES: dict[str, PaperRow] = {
    "cifar10-1ep-20p": _one_epoch("CIFAR-10", 84.2, abstract=85.1),
    "cifar10-1ep-200p": _of_30("CIFAR-10", 1, 200, 82.6),
    "cifar10-10ep-20p": _of_30("CIFAR-10", 10, 20, 90.7),
    "cifar10-10ep-200p": _of_30("CIFAR-10", 10, 200, 91.5),
    "cifar10-30ep-20p": _of_30("CIFAR-10", 30, 20, 93.1),
    "cifar10-30ep-200p": _of_30("CIFAR-10", 30, 200, 93.4),
    "cifar100-1ep-20p": _one_epoch("CIFAR-100", 58.5),
    "cifar100-1ep-200p": _of_30("CIFAR-100", 1, 200, 57.7),
    "cifar100-10ep-20p": _of_30("CIFAR-100", 10, 20, 67.8),
    "cifar100-10ep-200p": _of_30("CIFAR-100", 10, 200, 70.1),
    "cifar100-30ep-20p": _of_30("CIFAR-100", 30, 20, 72.4),
    "cifar100-30ep-200p": _of_30("CIFAR-100", 30, 200, 73.3),
    # Tiny ImageNet at the reference's 224 px (its ImageNet branch), and a cheaper native 64 px
    # variant with the CIFAR stem compared with the same figures (its presets say so).
    "tinyimagenet-1ep-20p": _one_epoch("Tiny ImageNet", 38.1),
    "tinyimagenet-10ep-200p": _of_30("Tiny ImageNet", 10, 200, 51.5),
    "tinyimagenet-1ep-20p-64px": _native(_one_epoch("Tiny ImageNet", 38.1)),
    "tinyimagenet-10ep-200p-64px": _native(_of_30("Tiny ImageNet", 10, 200, 51.5)),
    "imagenet100-1ep-20p": _one_epoch("ImageNet-100", 58.5),
    "imagenet100-10ep-200p": _of_30("ImageNet-100", 10, 200, 78.9),
}
