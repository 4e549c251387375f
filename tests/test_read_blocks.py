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
    assert len({tuple(rows) for rows in epochs}) == 3  # three different orders, pairwise
    assert epochs[1] == rows_of(epoch_plan(pieces, 64, seed=7, epoch=1))  # same seed, same order
    assert epochs[1] != rows_of(epoch_plan(pieces, 64, seed=8, epoch=1))
    in_order = epoch_plan(pieces, 64, seed=None, epoch=5)
    assert rows_of(in_order) == list(range(230)) and {s for _, s in in_order} == {None}


def test_a_resumed_epoch_streams_each_untrained_row_once_and_no_trained_one() -> None:
    import numpy as np

    from empssl_ray.data.read_plan import StreamPosition, unfinished

    pieces = slices_of(CHUNKS, 16)
    plan = epoch_plan(pieces, 64, seed=3, epoch=1)
    position = StreamPosition(rows=230, complete_through=1)
    rng = np.random.default_rng(0)
    first_block = [r for _, s, t, f in plan[0][0] for r in range(f, f + t - s)]
    trained = np.unique(np.concatenate([first_block, rng.choice(230, size=60, replace=False)]))
    position.add(np.ones(len(trained), int), trained)
    left = unfinished(plan, position.trained_in(1))
    assert len(left) == len(plan) - 1  # a block trained through is not read again
    rows = [
        r
        for block, _, drop in left
        for _, s, t, first in block
        for r in range(first, first + t - s)
        if r not in set(drop.tolist())
    ]
    assert sorted(rows) == sorted(set(range(230)) - set(trained.tolist()))
    assert [seed for _, seed, _ in left] == [seed for _, seed in plan[1:]]  # same shuffles


def test_the_position_completes_epochs_and_forgets_their_bits() -> None:
    import numpy as np

    from empssl_ray.data.read_plan import StreamPosition

    position = StreamPosition(rows=4)
    position.add(np.array([0, 0, 1]), np.array([0, 1, 2]))
    assert position.complete_through == 0 and set(position.trained) == {0, 1}
    position.add(np.array([0, 0]), np.array([2, 3]))
    assert position.complete_through == 1 and set(position.trained) == {1}
    assert position.trained_in(0).all()  # type: ignore[union-attr]
    assert position.trained_in(5) is None
    again = StreamPosition.from_state(position.state())
    assert again.complete_through == 1
    assert again.trained_in(1).tolist() == [False, False, True, False]  # type: ignore[union-attr]


def test_the_position_counts_rows_that_come_to_training_twice() -> None:
    import numpy as np

    from empssl_ray.data.read_plan import StreamPosition

    position = StreamPosition(rows=4)
    position.add(np.array([0, 0, 0, 0, 1]), np.array([0, 1, 2, 3, 2]))  # epoch 0 complete
    assert position.repeated(np.array([1, 1]), np.array([0, 1])) == 0
    assert position.repeated(np.array([1, 1, 1]), np.array([0, 0, 2])) == 2  # 0 twice, 2 again
    assert position.repeated(np.array([0]), np.array([3])) == 1  # of an epoch already done
    assert position.repeated(np.zeros(0, int), np.zeros(0, int)) == 0


def test_a_shuffled_block_of_a_row_group_format_draws_from_several_groups() -> None:
    """Parquet as prepare writes it (1,000-row groups, read whole): a training block of 1,024
    rows takes quarter-block slices from random places, not one group's neighbours."""
    from types import SimpleNamespace

    from empssl_ray.data.read_plan import split_slices

    groups = SimpleNamespace(chunks=[Chunk(f"g{i}", 0, 1000) for i in range(20)], slice_rows=0)
    pieces = split_slices(groups, 1024)  # type: ignore[arg-type]
    plan = epoch_plan(pieces, 1024, seed=1, epoch=0)
    per_block = [len({i for i, *_ in block}) for block, _ in plan]
    assert sum(per_block) / len(per_block) >= 3.5 and min(per_block) >= 2, per_block
    assert sorted(rows_of(plan)) == list(range(20_000))  # still every row once
    alone = epoch_plan(split_slices(groups, 1024, groups=1), 1024, seed=1, epoch=0)  # type: ignore[arg-type]
    assert max(len({i for i, *_ in block}) for block, _ in alone) <= 2  # what it was


def planned_rows(epoch: int, epoch_rows: int | None, seed: int | None = 7) -> list[int]:
    """The rows epoch `epoch` streams, in order, where it plans `epoch_rows` of the 230."""
    import numpy as np

    from empssl_ray.data.read_plan import left_out, unfinished

    plan = epoch_plan(slices_of(CHUNKS, 16), 64, seed=seed, epoch=epoch)
    return [
        r
        for block, _, drop in unfinished(plan, left_out(230, epoch_rows, seed, epoch))
        for _, s, t, first in block
        for r in range(first, first + t - s)
        if r not in set(np.asarray(drop).tolist())
    ]


def test_an_epoch_plans_whole_global_batches_leaving_out_another_remainder_each_epoch() -> None:
    """230 rows in batches of 64: each epoch plans 192 of them, every one once, and leaves out
    38 others drawn at random each epoch, so no row is left out for good."""
    epochs = [planned_rows(e, 192) for e in range(4)]
    assert all(len(rows) == len(set(rows)) == 192 for rows in epochs)
    assert epochs[1] == planned_rows(1, 192)  # the same seed, the same rows
    left = [set(range(230)) - set(rows) for rows in epochs]
    assert all(len(s) == 38 for s in left) and len(set(map(frozenset, left))) == 4
    assert set().union(*epochs) == set(range(230))
    # The whole epoch's order, without the rows left out.
    whole = planned_rows(2, None)
    assert epochs[2] == [r for r in whole if r not in left[2]] and len(whole) == 230
    assert planned_rows(0, 128, seed=None) == list(range(128))


def test_an_epoch_of_a_split_that_is_not_a_multiple_of_the_batch_completes() -> None:
    """The epoch plans 192 of 230 rows: once those are trained it is complete, and a resume
    after it starts at the next epoch (before: it waited for rows that never come)."""
    import numpy as np

    from empssl_ray.data.read_plan import StreamPosition

    planned = np.array(planned_rows(0, 192))
    position = StreamPosition(rows=230, epoch_rows=192)
    position.add(np.zeros(128, int), planned[:128])
    assert position.complete_through == 0 and set(position.trained) == {0}
    position.add(np.array([0] * 64 + [1] * 10), np.concatenate([planned[128:], planned[:10]]))
    assert position.complete_through == 1 and set(position.trained) == {1}
    again = StreamPosition.from_state(position.state())
    assert (again.rows, again.epoch_rows, again.complete_through) == (230, 192, 1)


def test_a_delivered_window_completes_epochs_whose_rows_never_all_come() -> None:
    """Rows skipped as unreadable are never trained: the end of the execution that held their
    epochs completes them, and their bits go."""
    import numpy as np

    from empssl_ray.data.read_plan import StreamPosition

    position = StreamPosition(rows=100, epoch_rows=96)
    position.add(np.array([0] * 90 + [1] * 90), np.concatenate([np.arange(90), np.arange(90)]))
    assert position.complete_through == 0 and set(position.trained) == {0, 1}
    position.delivered(2)
    assert position.complete_through == 2 and position.trained == {}
    position.delivered(1)  # never backwards
    assert position.complete_through == 2
    # The bits kept are those of epochs in flight: one byte per 8 rows each.
    big = StreamPosition(rows=1_281_167, epoch_rows=1_281_100)
    big.add(np.array([0, 1]), np.array([5, 6]))
    assert sum(len(b) for b in big.state()["trained"].values()) == 2 * 160_146


def test_iterating_epochs_goes_past_an_empty_window_and_marks_each_window_delivered() -> None:
    """A window of fewer rows than a batch yields nothing: the windows after it still come
    (before: the stream ended there), and each window's last batch says it is delivered."""
    from empssl_ray.on_ray.read import DELIVERED, iterate_epochs

    executions = iter([[], [{"b": 1}, {"b": 2}], [], [{"b": 3}]])
    batches = list(iterate_epochs(lambda: next(executions), 10, [[0], [1, 2], [3], [4]]))
    assert [(b["b"], b[DELIVERED]) for b in batches] == [(1, 1), (2, 3), (3, 5)]
    executions = iter([[{"b": 1}, {"b": 2}], [{"b": 3}]])
    taken = list(iterate_epochs(lambda: next(executions), 2, [[0], [1]]))
    assert [b["b"] for b in taken] == [1, 2]  # the next execution is not started
