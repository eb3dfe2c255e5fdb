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
