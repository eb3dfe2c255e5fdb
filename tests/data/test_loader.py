import numpy as np

from jojoscl_dist.data.loader import epoch_batches


def test_equal_steps_and_batch_sizes_across_workers():
    per_rank = [epoch_batches(1003, 256, 2, r, seed=1, epoch=0) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1])
    assert [len(b) for b in per_rank[0]] == [len(b) for b in per_rank[1]]
    seen = np.concatenate([np.concatenate(b) for b in per_rank])
    assert len(np.unique(seen)) == len(seen) == 2 * (1003 // 2)


def test_tail_is_merged_not_dropped():
    b = epoch_batches(300, 128, 1, 0, seed=0, epoch=0)
    assert [len(x) for x in b] == [128, 172]
    assert len(np.unique(np.concatenate(b))) == 300


def test_small_data_one_batch_and_epoch_shuffle():
    b = epoch_batches(90, 256, 1, 0, seed=0, epoch=0)
    assert len(b) == 1 and len(b[0]) == 90
    e0 = epoch_batches(1000, 100, 1, 0, seed=0, epoch=0)
    e1 = epoch_batches(1000, 100, 1, 0, seed=0, epoch=1)
    assert not np.array_equal(e0[0], e1[0])
    assert np.array_equal(e0[0], epoch_batches(1000, 100, 1, 0, seed=0, epoch=0)[0])


def test_eval_subset_is_all_cells_below_the_cap_and_a_seeded_sample_above():
    from jojoscl_dist.data.loader import ArraySource, SubsetSource, eval_subset

    x = np.arange(1000 * 3, dtype=np.float32).reshape(1000, 3)
    assert eval_subset(ArraySource(x), 1000, seed=0) is None
    idx = eval_subset(ArraySource(x), 300, seed=0)
    assert len(idx) == 300 and len(np.unique(idx)) == 300 and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, eval_subset(ArraySource(x), 300, seed=0))
    assert not np.array_equal(idx, eval_subset(ArraySource(x), 300, seed=1))
    sub = SubsetSource(ArraySource(x), idx)
    assert sub.shape == (300, 3) and np.array_equal(sub.rows(slice(10, 20)), x[idx[10:20]])


def test_eval_subset_takes_whole_chunks_of_an_on_disk_source():
    from jojoscl_dist.data.loader import ArraySource, eval_subset

    class Chunked(ArraySource):
        chunk_rows = 64

    idx = eval_subset(Chunked(np.zeros((1000, 2), np.float32)), 200, seed=3)
    chunks = np.unique(idx // 64)
    assert len(chunks) == 4  # ceil(200 / 64)
    assert sum(min(64, 1000 - c * 64) for c in chunks) == len(idx)  # every row of each chosen chunk
