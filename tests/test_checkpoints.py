"""Where a rerun starts: the newest complete checkpoint, never one cut off mid-upload."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from empssl_ray.data.read_plan import StreamPosition
from empssl_ray.runs.checkpoints import (
    POSITION_FILE,
    PROGRESS_FILE,
    CheckpointVanishedError,
    ResumePoint,
    prune_checkpoints,
    resume_point,
    save_checkpoint,
)


def write(run_dir: Path, name: str, epoch: int) -> Path:
    folder = run_dir / f"checkpoint_2026-11-30_00-00-0{name}"
    folder.mkdir(parents=True)
    save_checkpoint({"epoch": epoch, "step": 10 * epoch, "w": torch.zeros(100)}, str(folder))
    return folder


def test_a_fresh_run_starts_at_zero(tmp_path: Path) -> None:
    assert resume_point(str(tmp_path / "none-yet")) == ResumePoint(None)


def test_the_newest_complete_checkpoint_wins(tmp_path: Path) -> None:
    write(tmp_path, "1", 1)
    newest = write(tmp_path, "2", 2)
    assert resume_point(str(tmp_path)) == ResumePoint(str(newest / "checkpoint.pt"), 2, 20)


def test_a_checkpoint_cut_off_mid_upload_is_passed_over(tmp_path: Path) -> None:
    older = write(tmp_path, "1", 1)
    cut = write(tmp_path, "2", 2)
    data = (cut / "checkpoint.pt").read_bytes()
    (cut / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # progress.json says more
    assert resume_point(str(tmp_path)) == ResumePoint(str(older / "checkpoint.pt"), 1, 10)
    (cut / "checkpoint.pt").unlink()  # only progress.json made it
    assert resume_point(str(tmp_path)) == ResumePoint(str(older / "checkpoint.pt"), 1, 10)


def test_a_checkpoint_without_progress_file_is_read_for_its_epoch(tmp_path: Path) -> None:
    folder = write(tmp_path, "1", 3)
    (folder / PROGRESS_FILE).unlink()  # written before progress files existed
    assert resume_point(str(tmp_path)) == ResumePoint(str(folder / "checkpoint.pt"), 3, 30)


def test_the_stream_position_travels_with_its_checkpoint(tmp_path: Path) -> None:
    position = StreamPosition(rows=10)
    position.add(np.array([0, 0, 0]), np.array([1, 4, 9]))
    folder = tmp_path / "checkpoint_2026-11-30_00-00-01"
    folder.mkdir()
    save_checkpoint({"epoch": 0, "step": 3}, str(folder), position.state())
    saved = resume_point(str(tmp_path)).position()
    assert saved is not None
    again = StreamPosition.from_state(saved)
    assert again.trained_in(0).nonzero()[0].tolist() == [1, 4, 9]  # type: ignore[union-attr]
    assert resume_point(str(tmp_path / "none")).position() is None


def test_a_checkpoint_whose_position_did_not_arrive_whole_is_passed_over(tmp_path: Path) -> None:
    """Ray uploads a checkpoint's files one by one: weights and progress without the stream's
    position (a node lost mid-upload) would resume those weights from the epoch's start."""
    position = StreamPosition(rows=10)
    position.add(np.array([0, 0]), np.array([2, 3]))
    folders = []
    for k in (1, 2):
        folders.append(tmp_path / f"checkpoint_2026-11-30_00-00-0{k}")
        folders[-1].mkdir()
        save_checkpoint({"epoch": 0, "step": 2 * k}, str(folders[-1]), position.state())
    assert resume_point(str(tmp_path)).step == 4
    blob = (folders[1] / POSITION_FILE).read_bytes()
    (folders[1] / POSITION_FILE).write_bytes(blob[:-10])  # cut off
    assert resume_point(str(tmp_path)) == ResumePoint(str(folders[0] / "checkpoint.pt"), 0, 2)
    (folders[1] / POSITION_FILE).unlink()  # never arrived
    assert resume_point(str(tmp_path)) == ResumePoint(str(folders[0] / "checkpoint.pt"), 0, 2)
    (folders[1] / POSITION_FILE).write_bytes(blob)  # arrived, but progress.json has not
    (folders[1] / PROGRESS_FILE).unlink()
    assert resume_point(str(tmp_path)) == ResumePoint(str(folders[0] / "checkpoint.pt"), 0, 2)
    # Only the weights arrived (the drill of three losses once resumed such weights of step 4
    # from the epoch's start): they say a position belongs beside them, so they wait too.
    (folders[1] / POSITION_FILE).unlink()
    assert resume_point(str(tmp_path)) == ResumePoint(str(folders[0] / "checkpoint.pt"), 0, 2)


def test_pruning_keeps_the_newest_complete_checkpoints_of_every_fit(tmp_path: Path) -> None:
    folders = [write(tmp_path, str(i), i) for i in range(1, 5)]  # e.g. two fits, two each
    cut = folders[-1] / "checkpoint.pt"
    cut.write_bytes(cut.read_bytes()[:10])  # the newest is still being written
    deleted = prune_checkpoints(str(tmp_path), keep=2)
    assert sorted(deleted) == [str(folders[0])]
    assert [f.exists() for f in folders] == [False, True, True, True]
    assert resume_point(str(tmp_path)).epoch == 3


def test_an_outage_is_no_reason_to_start_afresh(tmp_path: Path, monkeypatch) -> None:
    import pytest

    from empssl_ray.data import storage

    write(tmp_path, "1", 1)

    def away(location: str) -> str:
        raise storage.StorageUnavailableError(f"read {location}: object storage failed")

    monkeypatch.setattr(storage, "read_text", away)
    with pytest.raises(storage.StorageUnavailableError):
        resume_point(str(tmp_path))  # not ResumePoint(None): that would retrain from step 0


def test_a_position_deleted_after_its_checkpoint_was_chosen_is_no_fresh_start(
    tmp_path: Path,
) -> None:
    """Chosen, then pruned before its position was read (by a worker that outlived its node):
    reading no position would stream the epoch from its start under weights of a later step."""
    import pytest

    folder = tmp_path / "checkpoint_2026-11-30_00-00-01"
    folder.mkdir()
    save_checkpoint({"epoch": 0, "step": 3}, str(folder), StreamPosition(rows=10).state())
    chosen = resume_point(str(tmp_path))
    (folder / POSITION_FILE).unlink()
    with pytest.raises(CheckpointVanishedError):
        chosen.position()


def test_weights_and_a_position_of_different_steps_are_refused() -> None:
    import pytest

    from empssl_ray.on_ray.train import check_position

    class At:
        step = 8

    check_position({"step": 8}, At())  # type: ignore[arg-type]
    check_position({}, At())  # type: ignore[arg-type]  # saved before positions had steps
    with pytest.raises(RuntimeError, match="position is of step 6, the weights of step 8"):
        check_position({"step": 6}, At())  # type: ignore[arg-type]
