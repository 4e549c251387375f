"""How a split is read: slices, blocks and each epoch's order (pure planning, no Ray started)."""

from __future__ import annotations

from empssl_ray.data.datasets import Chunk
from empssl_ray.data.read_plan import epoch_plan, pack, slices_of

CHUNKS = [Chunk("a", 0, 100), Chunk("b", 0, 100), Chunk("c", 50, 80)]


def rows_of(plan) -> list[int]:
    return [first + r for block, _ in plan for _, s, t, first in block for r in range(t - s)]


def test_slices_cover_every_row_once_with_their_split_positions() -> None:
    pieces = slices_of(CHUNKS, 16)
    assert all(t - s <= 16 for _, s, t, _ in pieces)
    assert [(i, s) for i, s, _, _ in pieces][:8] == [
        (0, 0),
        (0, 16),
        (0, 32),
        (0, 48),
        (0, 64),
        (0, 80),
        (0, 96),
        (1, 0),
    ]
    positions = [first + r for _, s, t, first in pieces for r in range(t - s)]
    assert positions == list(range(230))  # chunk c's rows 50..79 are the split's 200..229


def test_blocks_hold_at_most_block_rows_except_a_larger_piece() -> None:
    blocks = pack(slices_of(CHUNKS, 16), 64)
    # Slices are never split: chunk a's 4-row tail closes the second block early.
    assert [sum(t - s for _, s, t, _ in b) for b in blocks] == [64, 52, 64, 50]
    assert [sum(t - s for _, s, t, _ in b) for b in pack(slices_of(CHUNKS, 100), 64)] == [
        100,
        100,
        30,
    ]


def test_every_epoch_is_every_row_once_in_a_new_reproducible_order() -> None:
    pieces = slices_of(CHUNKS, 16)
    epochs = [rows_of(epoch_plan(pieces, 64, seed=7, epoch=e)) for e in range(3)]
    assert all(sorted(rows) == list(range(230)) for rows in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[1] == rows_of(epoch_plan(pieces, 64, seed=7, epoch=1))  # same seed, same order
    assert epochs[1] != rows_of(epoch_plan(pieces, 64, seed=8, epoch=1))
    in_order = epoch_plan(pieces, 64, seed=None, epoch=5)
    assert rows_of(in_order) == list(range(230)) and {s for _, s in in_order} == {None}
