"""Where a rerun starts: the newest complete checkpoint, never one cut off mid-upload."""

from __future__ import annotations

from pathlib import Path

import torch

from empssl_ray.runs.checkpoints import PROGRESS_FILE, resume_point, save_checkpoint


def write(run_dir: Path, name: str, epoch: int) -> Path:
    folder = run_dir / f"checkpoint_2026-11-30_00-00-0{name}"
    folder.mkdir(parents=True)
    save_checkpoint({"epoch": epoch, "step": 10 * epoch, "w": torch.zeros(100)}, str(folder))
    return folder


def test_a_fresh_run_starts_at_zero(tmp_path: Path) -> None:
    assert resume_point(str(tmp_path / "none-yet")) == (None, 0)


def test_the_newest_complete_checkpoint_wins(tmp_path: Path) -> None:
    write(tmp_path, "1", 1)
    newest = write(tmp_path, "2", 2)
    assert resume_point(str(tmp_path)) == (str(newest / "checkpoint.pt"), 2)


def test_a_checkpoint_cut_off_mid_upload_is_passed_over(tmp_path: Path) -> None:
    older = write(tmp_path, "1", 1)
    cut = write(tmp_path, "2", 2)
    data = (cut / "checkpoint.pt").read_bytes()
    (cut / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # progress.json says more
    assert resume_point(str(tmp_path)) == (str(older / "checkpoint.pt"), 1)
    (cut / "checkpoint.pt").unlink()  # only progress.json made it
    assert resume_point(str(tmp_path)) == (str(older / "checkpoint.pt"), 1)


def test_a_checkpoint_without_progress_file_is_read_for_its_epoch(tmp_path: Path) -> None:
    folder = write(tmp_path, "1", 3)
    (folder / PROGRESS_FILE).unlink()  # written before progress files existed
    assert resume_point(str(tmp_path)) == (str(folder / "checkpoint.pt"), 3)
