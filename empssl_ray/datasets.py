"""Image datasets by registry name, each split into chunks that load independently.

`open_dataset` only lists what is there (files, row counts, classes) and fails early with a one-line
`DatasetError` saying what is wrong and how to fix it; pixels are read by `ImageDataset.load_chunk`,
which is what a Ray task runs, so the dataset object stays small enough to ship to every task.
Every reader returns uint8 (N, C, H, W) images and int64 (N,) labels.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs

from empssl_ray import image_decode as fmt
from empssl_ray import storage
from empssl_ray.config import DataConfig
from empssl_ray.image_decode import DatasetError, check_on_bad, decode_images

__all__ = [
    "DATASETS",
    "Chunk",
    "DatasetError",
    "DatasetInfo",
    "DatasetSpec",
    "ImageDataset",
    "decode_images",
    "download_root",
    "load_split",
    "open_dataset",
]

SPLITS = ("train", "test")
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist package
CIFAR_CHUNK_ROWS = 10_000
IDX_CHUNK_ROWS = 10_000
FOLDER_CHUNK_FILES = 1_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_PROBE_IMAGES = 16  # images tried when the first ones are bad and on_bad_image=skip


def download_root() -> str:
    """Where downloads go and cifar is looked for when data.root is unset ($EMPSSL_DATA)."""
    return os.path.expanduser(os.environ.get("EMPSSL_DATA", "~/.cache/empssl-ray/data"))


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # canonical registry name
    num_classes: int
    image_size: int  # side S in pixels of the (square) images load_chunk returns
    channels: int  # 3 for RGB datasets, 1 for fashion-mnist


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of one file (or, for imagefolder, of the split's sorted file list)."""

    source: str  # file path or URI it reads
    start: int
    stop: int


class ImageDataset:
    """One split of a dataset: its info and its chunks; holds paths and lists, never pixels."""

    # Rows one read can reach alone at little cost: the training stream shuffles slices of this
    # size. 0: a whole chunk (a Parquet row group is read whole anyway).
    slice_rows = 0

    def __init__(self, info: DatasetInfo, split: str, chunks: list[Chunk]) -> None:
        self.info, self.split, self.chunks = info, split, chunks

    def __len__(self) -> int:
        return sum(c.stop - c.start for c in self.chunks)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info}, split={self.split!r}, rows={len(self)})"

    def load_chunk(self, chunk: Chunk) -> tuple[np.ndarray, np.ndarray, int]:
        """Reads one chunk.

        Returns:
            images uint8 (N, C, S, S), labels int64 (N,), and the count of bad rows dropped
            (nonzero only with data.on_bad_image=skip; N + dropped = chunk.stop - chunk.start).
        """
        raise NotImplementedError


def _limit_chunks(chunks: list[Chunk], limit: int | None) -> list[Chunk]:
    """Keeps `limit` rows spread evenly over the chunks (a head of each), not the first `limit`.

    Test splits are often stored in class order (the shared CIFAR-10 Parquet is): the first
    256 rows would be one class, a head of every chunk keeps a small subset balanced.
    """
    sizes = [c.stop - c.start for c in chunks]
    total = sum(sizes)
    if limit is None or limit >= total:
        return list(chunks)
    picked = np.linspace(0, total, limit, endpoint=False).astype(np.int64)
    counts = np.histogram(picked, bins=np.cumsum([0, *sizes]))[0]
    return [Chunk(c.source, c.start, c.start + int(k))
            for c, k in zip(chunks, counts, strict=True) if k > 0]


def _ranges(source: str, rows: int, step: int) -> list[Chunk]:
    return [Chunk(source, s, min(s + step, rows)) for s in range(0, rows, step)]


def _check_labels(labels: np.ndarray, num_classes: int, where: str, fix: str) -> None:
    """Raises DatasetError naming the first row of `where` whose label is not in 0..K-1."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DatasetError(
            f"{where} row {bad[0]} has label {labels[bad[0]]}, not a class id in "
            f"0..{num_classes - 1}: {fix}"
        )


def _torchvision_download(name: str, root: str, split: str) -> None:
    import torchvision.datasets as tvd  # slow import, only needed to download

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "fashion-mnist": tvd.FashionMNIST}
    try:
        os.makedirs(root, exist_ok=True)
        cls[name](root, train=split == "train", download=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; torchvision raises RuntimeError
        raise DatasetError(
            f"downloading {name} into {root} failed ({e}): check the network, or "
            "put the files there yourself and set data.download=false"
        ) from e


class _ArrayDataset(ImageDataset):
    """A split stored as whole arrays in files (cifar, IDX); `read` is cached per process."""

    slice_rows = 16

    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        chunks: list[Chunk],
        read: Callable[[str], tuple[np.ndarray, np.ndarray]],
    ):
        super().__init__(info, split, chunks)
        self.read = read  # source -> (images (N, C, S, S), labels (N,)), both shared: copy slices

    def load_chunk(self, chunk: Chunk) -> tuple[np.ndarray, np.ndarray, int]:
        images, labels = self.read(chunk.source)
        s, t = chunk.start, chunk.stop
        return images[s:t].copy(), labels[s:t].astype(np.int64), 0


# ---- cifar10 / cifar100: torchvision's python pickles ---------------------------------------
_CIFAR = {  # name -> (folder, split -> batch files, label key, classes)
    "cifar10": (
        "cifar-10-batches-py",
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "labels",
        10,
    ),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "fine_labels", 100),
}


def _open_cifar(cfg: DataConfig, split: str, name: str, root: str) -> ImageDataset:
    folder, files, label_key, classes = _CIFAR[name]
    paths = [os.path.join(root, folder, f) for f in files[split]]
    if not all(os.path.isfile(p) for p in paths):
        if not cfg.download:
            raise DatasetError(
                f"{name} not found: looked for {', '.join(files[split])} in "
                f"{os.path.join(root, folder)}; set data.download=true to fetch "
                f"it, or data.root to the directory holding {folder}/"
            )
        _torchvision_download(name, root, split)
    chunks = []
    for p in paths:
        labels = fmt.read_cifar_batch(p, label_key)[1]
        _check_labels(labels, classes, p, "the file is corrupt: download it again")
        chunks += _ranges(p, len(labels), CIFAR_CHUNK_ROWS)
    read = functools.partial(fmt.read_cifar_batch, label_key=label_key)
    return _ArrayDataset(DatasetInfo(name, classes, 32, 3), split, chunks, read)


# ---- fashion-mnist: IDX files ----------------------------------------------------------------
_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx(directory: str, stem: str) -> str | None:
    # Un-gzipped first: torchvision leaves both, and the raw file reads faster.
    paths = [os.path.join(directory, stem + ext) for ext in ("", ".gz")]
    return next((p for p in paths if os.path.isfile(p)), None)


def _open_fashion_mnist(cfg: DataConfig, split: str, name: str, root: str) -> ImageDataset:
    # torchvision downloads into <root>/FashionMNIST/raw; Debian's package is flat.
    dest = os.path.expanduser(cfg.root) if cfg.root else download_root()
    dirs = [root, os.path.join(dest, "FashionMNIST", "raw")]
    img_stem, lbl_stem = _IDX_STEMS[split]

    def find() -> tuple[str, str] | None:
        for d in dirs:
            img, lbl = _find_idx(d, img_stem), _find_idx(d, lbl_stem)
            if img and lbl:
                return img, lbl
        return None

    found = find()
    if found is None and cfg.download:
        _torchvision_download(name, dest, split)
        found = find()
    if found is None:
        raise DatasetError(
            f"fashion-mnist not found: looked for {img_stem}[.gz] in "
            f"{' and '.join(dirs)}; run `apt-get install dataset-fashion-mnist`, "
            "set data.download=true, or point data.root at the IDX files"
        )
    img, lbl = found
    images, labels = fmt.read_idx(img, 3), fmt.read_idx(lbl, 1)
    if len(images) != len(labels) or images.shape[1] != images.shape[2]:
        raise DatasetError(
            f"{img} holds {images.shape} images but {lbl} {len(labels)} labels: "
            "the two files must belong together"
        )
    _check_labels(labels, 10, lbl, "the file is corrupt: get it again")
    info = DatasetInfo(name, 10, images.shape[1], 1)
    read = functools.partial(fmt.read_idx_pair, labels_path=lbl)
    return _ArrayDataset(info, split, _ranges(img, len(images), IDX_CHUNK_ROWS), read)


# ---- imagefolder: root/<split>/<class>/<image> -----------------------------------------------
class _FolderDataset(ImageDataset):
    slice_rows = 1  # one file per image
    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        chunks: list[Chunk],
        files: list[str],
        labels: list[int],
        on_bad: str,
    ):
        super().__init__(info, split, chunks)
        self.files, self.labels, self.on_bad = files, labels, on_bad

    def load_chunk(self, chunk: Chunk) -> tuple[np.ndarray, np.ndarray, int]:
        paths = self.files[chunk.start : chunk.stop]
        blobs = [fmt.read_file(p, self.on_bad) for p in paths]
        images, keep = decode_images(blobs, paths, 3, self.info.image_size, self.on_bad)
        labels = np.asarray(self.labels[chunk.start : chunk.stop], dtype=np.int64)[keep]
        return images, labels, int((~keep).sum())


def _split_dir(root: str, split: str, isdir: Callable[[str], bool]) -> str | None:
    """root/<split> (root/val standing in for a missing root/test); None when root is flat."""
    for sub in (split, "val") if split == "test" else (split,):
        if isdir(f"{root.rstrip('/')}/{sub}"):
            return f"{root.rstrip('/')}/{sub}"
    if any(isdir(f"{root.rstrip('/')}/{s}") for s in ("train", "test", "val")):
        raise DatasetError(f"{root} has split folders but no {split}/: add {root}/{split}/")
    return None


def _subdirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _open_imagefolder(cfg: DataConfig, split: str, name: str, root: str) -> ImageDataset:
    root = os.path.expanduser(root)
    split_dir = _split_dir(root, split, os.path.isdir) if os.path.isdir(root) else None
    if split_dir is None:
        raise DatasetError(
            f"imagefolder: no {split} folder in {root}: lay images out as "
            f"{root}/{split}/<class>/<image>"
        )
    # Class ids come from train/ so a test split lacking a class keeps the same ids.
    class_dir = os.path.join(root, "train")
    classes = _subdirs(class_dir if os.path.isdir(class_dir) else split_dir)
    ids = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for cls in _subdirs(split_dir):
        if cls not in ids:
            raise DatasetError(
                f"class folder {os.path.join(split_dir, cls)} has no counterpart "
                f"in {class_dir}: add it there or remove it"
            )
        for dirpath, dirnames, names in os.walk(os.path.join(split_dir, cls)):
            dirnames.sort()
            for n in sorted(names):
                if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith("."):
                    files.append(os.path.join(dirpath, n))
                    labels.append(ids[cls])
    if not files:
        raise DatasetError(
            f"imagefolder: no images ({', '.join(IMAGE_SUFFIXES)}) in "
            f"{split_dir}/<class>/: put the images in one folder per class"
        )
    num_classes = cfg.num_classes or len(classes)
    if num_classes < len(classes):
        raise DatasetError(
            f"{split_dir} has {len(classes)} class folders but data.num_classes="
            f"{num_classes}: raise it or leave it unset"
        )
    probe = ((fmt.read_file(p, cfg.on_bad_image), p) for p in files[:_PROBE_IMAGES])
    size = cfg.image_size or fmt.probe_size(probe, cfg.on_bad_image)
    info = DatasetInfo(name, num_classes, size, 3)
    chunks = _ranges(split_dir, len(files), FOLDER_CHUNK_FILES)
    return _FolderDataset(info, split, chunks, files, labels, cfg.on_bad_image)


# ---- parquet: a column of encoded images, a column of integer labels ------------------------
def _parquet_sources(root: str, split: str) -> tuple[list[str], bool]:
    """-> the split's *.parquet files (paths or URIs, sorted), and whether root has split dirs."""
    fs, path = storage.filesystem(root)
    prefix = storage.uri_prefix(root)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.File:
        return [prefix + path], False
    if kind != pafs.FileType.Directory:
        raise DatasetError(
            f"parquet: {root} does not exist: set data.root to a directory, file "
            "or URI of .parquet files"
        )
    sub = _split_dir(path, split, lambda p: fs.get_file_info(p).type == pafs.FileType.Directory)
    infos = fs.get_file_info(pafs.FileSelector(sub or path, recursive=True))
    files = [
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and i.path.endswith(".parquet")
        and not os.path.basename(i.path).startswith((".", "_"))
    ]
    return [prefix + f for f in sorted(files)], sub is not None


class _ParquetDataset(ImageDataset):
    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        chunks: list[Chunk],
        starts: dict[str, list[int]],
        columns: list[str],
        on_bad: str,
    ):
        super().__init__(info, split, chunks)
        self.starts, self.columns, self.on_bad = starts, columns, on_bad

    def load_chunk(self, chunk: Chunk) -> tuple[np.ndarray, np.ndarray, int]:
        s, a, b = chunk.source, chunk.start, chunk.stop
        blobs, labels = fmt.read_parquet_rows(s, a, b, self.starts[s], self.columns)
        where = [f"{s} row {r}" for r in range(a, b)]
        images, keep = decode_images(blobs, where, self.info.channels, self.info.image_size,
                                     self.on_bad)
        return images, labels[keep], int((~keep).sum())


def _open_parquet(cfg: DataConfig, split: str, name: str, root: str) -> ImageDataset:
    sources, has_splits = _parquet_sources(root, split)
    if not sources:
        raise DatasetError(
            f"parquet: no .parquet files for the {split} split under {root}: "
            f"put them in {root}/{split}/ or directly in {root}"
        )
    columns = [cfg.image_column, cfg.label_column]
    scans = {s: fmt.scan_parquet(s, *columns) for s in sources}
    num_classes = cfg.num_classes
    if num_classes is None:  # from train's labels, so both splits agree on the class count
        train = (
            scans
            if split == "train" or not has_splits
            else {s: fmt.scan_parquet(s, *columns) for s in _parquet_sources(root, "train")[0]}
        )
        num_classes = 1 + max(int(lab.max(initial=-1)) for _, lab, _ in train.values())
    starts: dict[str, list[int]] = {}
    chunks: list[Chunk] = []
    for s, (sizes, labels, _) in scans.items():
        _check_labels(labels, num_classes, s, "set data.num_classes, or fix the label")
        starts[s] = [0, *np.cumsum(sizes, dtype=np.int64).tolist()]
        chunks += [Chunk(s, a, b) for a, b in zip(starts[s], starts[s][1:], strict=False) if b > a]
    size = cfg.image_size
    if size is None and chunks:
        c = chunks[0]
        stop = min(c.stop, c.start + _PROBE_IMAGES)
        blobs, _ = fmt.read_parquet_rows(c.source, c.start, stop, starts[c.source], columns)
        size = fmt.probe_size(
            zip(blobs, (f"{c.source} row {r}" for r in range(c.start, stop)), strict=False),
            cfg.on_bad_image,
        )
    channels = next(iter(scans.values()))[2]
    info = DatasetInfo(name, num_classes, size or 0, channels)
    return _ParquetDataset(info, split, chunks, starts, columns, cfg.on_bad_image)


# ---- registry --------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """How a registered dataset opens: opener(cfg, split, canonical name, resolved root)."""

    opener: Callable[[DataConfig, str, str, str], ImageDataset]
    default_root: str | None  # used when data.root is unset; None: see `downloadable`
    downloadable: bool  # torchvision can fetch it; with no default root it lives in download_root()


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(_open_cifar, None, True),  # torchvision's python pickles
    "cifar100": DatasetSpec(_open_cifar, None, True),  # same, fine labels
    "fashion-mnist": DatasetSpec(_open_fashion_mnist, FASHION_MNIST_ROOT, True),  # IDX files
    "imagefolder": DatasetSpec(_open_imagefolder, None, False),  # root/<split>/<class>/<image>
    "parquet": DatasetSpec(_open_parquet, None, False),  # encoded image bytes + integer labels
}


def open_dataset(cfg: DataConfig, split: str) -> ImageDataset:
    """Finds one split of `cfg.name`, checks it, and cuts it into chunks (no pixels are read).

    Raises:
        DatasetError: unknown name or split, bad config values, data missing (saying where it
            looked and how to get it), no rows, missing or mistyped columns, bad labels.
    """
    name = cfg.name.lower().replace("_", "-")
    if name not in DATASETS:
        raise DatasetError(
            f"unknown dataset data.name={cfg.name!r}: use one of {', '.join(DATASETS)}"
        )
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    check_on_bad(cfg.on_bad_image)
    limit = cfg.train_limit if split == "train" else cfg.test_limit
    for knob, value in (
        (f"{split}_limit", limit),
        ("num_classes", cfg.num_classes),
        ("image_size", cfg.image_size),
    ):
        if value is not None and value < 1:
            raise DatasetError(f"data.{knob}={value} must be at least 1, or null")
    spec = DATASETS[name]
    root = os.fspath(cfg.root) if cfg.root else spec.default_root
    root = root or (download_root() if spec.downloadable else None)
    if root is None:
        raise DatasetError(f"{name} has no default location: set data.root to its directory/URI")
    if storage.is_uri(root) and name != "parquet":
        raise DatasetError(
            f"{name} reads local files only, but data.root={root} is a URI: convert it once with "
            f"`python jobs/prepare.py data={name} out={root}` and pass data=parquet "
            f"data.root={root}")
    ds = spec.opener(cfg, split, name, root)
    if len(ds) == 0:
        raise DatasetError(f"{name} at {root}: the {split} split holds no rows")
    ds.chunks = _limit_chunks(ds.chunks, limit)
    return ds


def load_split(
    cfg: DataConfig, split: str, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a whole split in this process (bad rows dropped under on_bad_image=skip).

    Returns:
        images uint8 (N, C, S, S) and labels int64 (N,), N <= limit and cfg's split limit.
    """
    ds = open_dataset(cfg, split)
    parts = [ds.load_chunk(c)[:2] for c in _limit_chunks(ds.chunks, limit)]
    if not parts:  # limit=0
        side, channels = ds.info.image_size, ds.info.channels
        return np.zeros((0, channels, side, side), np.uint8), np.zeros(0, np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
