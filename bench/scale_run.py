"""ImageNet's row count on one machine: a 2-epoch run over 1,281,167 rows, killed three times.

A synthetic Parquet split of `--rows` tiny PNGs (8 px RGB, 1,000 classes; made once and cached
outside the repository, `--cache`) goes through the real system: `jobs/pretrain.py`'s `main` on
an embedded local Ray, the read plan, one Ray Data execution per epoch (the split has more blocks
than `ray.blocks_per_execution`), the patch-cutting actor pool, 2 DDP workers with a tiny model,
checkpoints every `--checkpoint-every` steps with the stream's position, and rank 0 killed
(EMPSSL_FAULT_KILL_TRAINER_AT_STEP) in the middle of epoch 1, just after epoch 1's end and in the
middle of epoch 2. The run then has to finish on its own restarts.

Checked from what every rank recorded (EMPSSL_FAULT_RECORD_TRAINED) and the run's metrics:
every row at most once per epoch, every epoch all the rows its plan holds (the split less the
remainder of its last global batch), each step logged once, the run at its last step. Printed:
peak memory of the driver and of rank 0, the largest position.pt, the time to plan one execution
(here and for 14 million rows, planned without data), the time from each kill to the next
attempt's first batch, the checkpoint write time, and how many actor pools started.

    .venv/bin/python bench/scale_run.py                  # 1.28M rows: about 25 min on 2 cores
    .venv/bin/python bench/scale_run.py --rows 60000     # the same checks in a few minutes
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

IMAGENET_ROWS = 1_281_167
IMAGENET_21K_ROWS = 14_197_122
FILE_ROWS = 100_000


def make_split(root: Path, rows: int, side: int = 8, classes: int = 1000) -> None:
    """`rows` training PNGs (and 1,000 test ones) as Parquet under root, once: row i is class
    i % classes, drawn from one random image per class (decoding costs what any PNG does)."""
    from PIL import Image

    from empssl_ray.data.prepare import write_shard

    if (root / "done").exists():
        return
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(classes):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
        blobs.append(buf.getvalue())
    for split, n in (("train", rows), ("test", 1000)):
        for part, start in enumerate(range(0, n, FILE_ROWS)):
            labels = [i % classes for i in range(start, min(n, start + FILE_ROWS))]
            path = root / split / f"part-{part:05d}.parquet"
            write_shard(str(path), [blobs[c] for c in labels], labels, 3)
    (root / "done").write_text(str(rows))


class Watcher:
    """Polls the run every 0.5 s: the largest position.pt written, and when each new attempt's
    first batch came (a new trained-<pid>.txt file appears: a new worker process)."""

    def __init__(self, run_dir: Path, trained: Path) -> None:
        self.run_dir, self.trained = run_dir, trained
        self.largest_position = 0
        self.first_batch_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            for f in self.run_dir.glob("checkpoint_*/position.pt"):
                with contextlib.suppress(FileNotFoundError):  # pruned meanwhile
                    self.largest_position = max(self.largest_position, f.stat().st_size)
            for f in self.trained.glob("trained-*.txt"):
                self.first_batch_at.setdefault(f.name, time.time())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def plan_seconds(rows: int, batch: int, block_rows: int, max_blocks: int) -> tuple[float, int]:
    """Seconds to plan one execution of a split of `rows` Parquet rows in 1,000-row groups (the
    read plan and Ray Data's read tasks, as `read_images` makes them), and the blocks an epoch
    has. Planning reads no data: a stand-in split of row groups is enough."""
    from empssl_ray.data.datasets import Chunk
    from empssl_ray.on_ray.read import SplitSource

    groups = [Chunk(f"g{i}", 0, min(1000, rows - i * 1000)) for i in range(-(-rows // 1000))]
    split = SimpleNamespace(chunks=groups, slice_rows=0)
    start = time.perf_counter()
    source = SplitSource(
        split,  # type: ignore[arg-type]
        block_rows,
        seed=0,
        epochs=range(2),  # one execution of each epoch (max_blocks 1): the first planned
        epoch_rows=rows - rows % batch,
        max_blocks=max_blocks,
    )
    tasks = source.get_read_tasks(1)
    return time.perf_counter() - start, len(tasks)


def position_bytes(rows: int, batch: int) -> int:
    """The size of position.pt (as a checkpoint writes it) half-way through an epoch of
    `rows` rows: the bits of the one epoch in flight."""
    from empssl_ray.data.read_plan import StreamPosition
    from empssl_ray.runs.checkpoints import POSITION_FILE, save_checkpoint

    position = StreamPosition(rows, epoch_rows=rows - rows % batch)
    position.add(np.zeros(rows // 2, np.int64), np.arange(rows // 2))
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint({"epoch": 0, "step": 1}, folder, {**position.state(), "step": 1})
        return os.path.getsize(os.path.join(folder, POSITION_FILE))


def attempts_of(trained: Path) -> list[np.ndarray]:
    return [np.loadtxt(f, dtype=np.int64).reshape(-1, 3) for f in sorted(trained.glob("*.txt"))]


def check_rows(trained: Path, epochs: int, epoch_rows: int) -> list[str]:
    """What the ranks trained, kept up to where each next attempt resumed: problems found."""
    attempts = attempts_of(trained)
    firsts = sorted({int(rows[:, 0].min()) for rows in attempts})
    kept = []
    for rows in attempts:
        later = [f for f in firsts if f > rows[:, 0].min()]
        kept.append(rows[rows[:, 0] < later[0]] if later else rows)
    pairs = np.concatenate(kept)[:, 1:]
    problems = []
    unique = np.unique(pairs, axis=0)
    if len(unique) != len(pairs):
        problems.append(f"{len(pairs) - len(unique)} rows trained twice in an epoch")
    for epoch in range(epochs):
        n = int((unique[:, 0] == epoch).sum())
        if n != epoch_rows:
            problems.append(f"epoch {epoch} trained {n} rows, its plan holds {epoch_rows}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=IMAGENET_ROWS)
    parser.add_argument("--batch", type=int, default=2048, help="global batch (optim.batch_size)")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps")
    parser.add_argument("--aug-batch", type=int, default=256, help="ray.aug_batch_size")
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/empssl-ray/scale"))
    args = parser.parse_args()

    import ray

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs/ beside empssl_ray/
    from empssl_ray.launch import compose
    from empssl_ray.runs.metrics import read_metrics
    from jobs.pretrain import main as pretrain_main

    data = Path(args.cache) / f"rows-{args.rows}"
    t0 = time.perf_counter()
    make_split(data, args.rows)
    print(f"split: {args.rows:,} rows under {data} ({time.perf_counter() - t0:.0f} s to make)")
    per_epoch = args.rows // args.batch
    kills = [per_epoch // 2, per_epoch + 1, per_epoch + per_epoch // 2]
    work = Path(tempfile.mkdtemp(prefix="empssl-scale-"))
    overrides = [
        "experiment=smoke",
        "data=parquet",
        f"data.root={data}",
        "data.train_limit=null",
        "data.test_limit=null",
        "patches.num_patches=2",
        "patches.size=8",
        "model.width=4",
        f"optim.batch_size={args.batch}",
        "optim.epochs=2",
        "eval.monitor_test=0",
        "run.evaluate=false",
        "run.progress=false",
        "run.name=scale",
        f"run.storage_path={work / 'runs'}",
        "run.log_every_steps=10",
        f"run.checkpoint_every_steps={args.checkpoint_every}",
        "ray.max_failures=1",
        f"ray.aug_batch_size={args.aug_batch}",
        "ray.aug_max_actors=2",
        # One epoch per execution, as ImageNet's 1,252 blocks of the default aug_batch_size (64)
        # get at the default ray.blocks_per_execution (1,024); forced at any --rows here.
        "ray.blocks_per_execution=1",
    ]
    cfg = compose("pretrain", overrides)
    os.environ.update(
        EMPSSL_FAULT_KILL_TRAINER_AT_STEP=",".join(map(str, kills)),
        EMPSSL_FAULT_DIR=str(work),
        EMPSSL_FAULT_RECORD_TRAINED=str(work / "trained"),
    )
    run_dir = work / "runs" / "scale"
    ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False)
    watcher = Watcher(run_dir, work / "trained")
    started = time.perf_counter()
    try:
        summary = pretrain_main(cfg)
    finally:
        watcher.stop()
        ray.shutdown()
    wall = time.perf_counter() - started

    records = read_metrics(str(run_dir))
    steps = [r["step"] for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    problems = check_rows(work / "trained", 2, per_epoch * args.batch)
    if steps != sorted(set(steps)):
        problems.append("a step was logged twice")
    if summary["final"].get("step") != 2 * per_epoch:
        problems.append(f"the run ended at step {summary['final'].get('step')}")
    kill_times = sorted((work / m).stat().st_mtime for m in os.listdir(work) if "fired" in m)
    appeared = sorted(watcher.first_batch_at.values())  # every rank's first batch, each attempt
    restart_s = [min(t for t in appeared if t > k) - k for k in kill_times]
    plans = {  # this run's blocks (aug_batch x 16 rows) and the default's (64 x 16)
        (rows, block): plan_seconds(rows, args.batch, block, 1)
        for rows in (args.rows, IMAGENET_21K_ROWS)
        for block in (args.aug_batch * 16, 64 * 16)
    }
    driver_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {
        "rows": args.rows,
        "global batch": args.batch,
        "steps": 2 * per_epoch,
        "kills at steps": kills,
        "wall time (s)": round(wall),
        "driver peak memory (MB)": round(driver_mb),
        "rank 0 peak memory (MB)": round(max(r.get("rank0_peak_mb", 0) for r in epochs)),
        "largest position.pt (bytes)": watcher.largest_position,
        "position.pt mid-epoch, written alone (bytes)": position_bytes(args.rows, args.batch),
        "position.pt mid-epoch at 14M rows (bytes)": position_bytes(IMAGENET_21K_ROWS, args.batch),
        "planning one execution (one epoch): rows, block rows -> s, read tasks": [
            f"{rows:,}, {block:,} -> {seconds:.3f} s, {tasks:,}"
            for (rows, block), (seconds, tasks) in plans.items()
        ],
        "kill to next first batch (s)": [round(s) for s in restart_s],
        "checkpoint write, as reported at epoch ends (s)": [
            round(r.get("checkpoint_s", 0), 2) for r in epochs
        ],
        "augmentation actors started, all attempts": summary["final"].get("patch_cutters_started"),
        "problems": problems or "none",
    }
    print(json.dumps(figures, indent=2))
    shutil.rmtree(work, ignore_errors=True)  # the run, its records (34 MB at 1.28M rows)
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
