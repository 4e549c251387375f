"""Smoke tests of the benchmark scripts: they run end to end on tiny settings and print ratios.

Speed is not asserted (the settings are too small and the machine is shared); what is asserted is
that every side ran, produced comparable outputs, and that the summary lines parse.
"""

from __future__ import annotations

import re

import pytest
import torch

from bench import patches, tcr

RATIO = re.compile(r"^ratio (?P<what>.+): (?P<ratio>\d+(?:\.\d+)?)x \(goal >= \d+x\)$", re.M)


def _ratios(text: str) -> dict[str, float]:
    return {m["what"]: float(m["ratio"]) for m in RATIO.finditer(text)}


def test_tcr_quick_prints_ratio_and_agrees(capsys: pytest.CaptureFixture[str]) -> None:
    assert tcr.main(["--quick", "--cpu-only"]) == 0  # 1 would mean the two formulas disagree
    ratios = _ratios(capsys.readouterr().out)
    assert set(ratios) == {"tcr n=2 cpu"}
    assert ratios["tcr n=2 cpu"] > 0


def test_reference_tcr_matches_core_on_tall_and_wide_views() -> None:
    # B < d takes the core's Gram path, B > d its d x d path: both must match the paper's formula.
    for b, d in ((8, 32), (32, 8)):
        z = torch.nn.functional.normalize(torch.randn(3, b, d, dtype=torch.float64), dim=-1)
        ref = tcr.reference_tcr(z)
        assert ref.shape == (3,)
        torch.testing.assert_close(tcr.total_coding_rate(z), ref)


def test_patches_quick_prints_both_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    assert patches.main(["--quick"]) == 0  # 1 would mean the two pipelines' outputs disagree
    ratios = _ratios(capsys.readouterr().out)
    assert set(ratios) == {"patches 32x32", "patches+normalise 32x32"}
    assert all(r > 0 for r in ratios.values())


def test_patches_outputs_agree_rejects_blank_or_shifted_patches() -> None:
    same = {"mean_ref": 0.0, "mean_ours": 0.1, "std_ref": 0.5, "std_ours": 0.55}
    assert patches.outputs_agree(same)
    assert not patches.outputs_agree({**same, "std_ours": 0.0})  # constant patches
    assert not patches.outputs_agree({**same, "mean_ours": 0.5})  # e.g. normalisation skipped
    assert not patches.outputs_agree({**same, "std_ours": 1.0})


def test_reference_pipeline_output_is_normalised_patch() -> None:
    images, _ = patches.load_images(2, 32)
    out = patches.reference_transform(32)(images[0])
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1


def test_scale_bench_runs_every_design_and_summarises() -> None:
    """bench/scale.py end to end on tiny sets, in its own process (it starts its own Ray)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "scale.py"
    designs = ("all-to-all", "per-epoch", "one-exec")
    args = ["--base", "100", "--scales", "1", "2", "--side", "16", "--store-mib", "128"]
    args += ["--epochs", "3", "--warm", "64", "128"]
    args += ["--designs", *designs]
    out = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = re.findall(
        r"^\s*(all-to-all|per-epoch|one-exec)\s+trivial\s+(\d)x .* first batch\s+[\d.]+ s",
        out.stdout,
        re.M,
    )
    assert sorted(rows) == sorted((d, s) for d in designs for s in ("1", "2")), out.stdout
    summary = re.findall(
        r"^(all-to-all|per-epoch|one-exec) \(trivial\): 2x vs 1x: first batch [\d.]+x, peak "
        r"store [\d.]+x, images/s [\d.]+x \(warm [\d.]+x\); boundary wait "
        r"[\d.]+% / [\d.]+%",
        out.stdout,
        re.M,
    )
    assert sorted(summary) == sorted(designs), out.stdout
