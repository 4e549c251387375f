"""How reads are cut into blocks: every row once, in order, at most block_rows per block."""

from __future__ import annotations

from empssl_ray.datasets import Chunk
from empssl_ray.ray_data import _blocks_of_pieces


def test_blocks_cover_every_row_once_across_chunks() -> None:
    chunks = [Chunk("a", 0, 100), Chunk("b", 0, 100), Chunk("c", 50, 80)]
    blocks = _blocks_of_pieces(chunks, 64)
    assert [sum(b["stop"][i] - b["start"][i] for i in range(len(b["chunk"]))) for b in blocks] == [
        64, 64, 64, 38
    ]
    rows = [
        (chunks[c].source, r)
        for b in blocks
        for c, s, t in zip(b["chunk"], b["start"], b["stop"], strict=True)
        for r in range(s, t)
    ]
    assert rows == [(c.source, r) for c in chunks for r in range(c.start, c.stop)]
    # first_row numbers the split's rows 0..229 in order (what the `id` column carries).
    firsts = [f for b in blocks for f in b["first_row"]]
    assert firsts == [0, 64, 100, 128, 192, 200]


def test_a_small_subset_over_many_chunks_is_one_block() -> None:
    chunks = [Chunk(f"part-{i}", 0, 50) for i in range(6)]
    assert len(_blocks_of_pieces(chunks, 1024)) == 1
