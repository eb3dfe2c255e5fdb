"""The identity of an in-memory AnnData's matrix: the same for equal content, different when one value, a name, the
shape or the storage (dense or sparse) changes."""

import numpy as np
import scipy.sparse as sp

from jojoscl_dist.data.fingerprint import describe_change, fingerprint_matrix, same_data


def test_matrix_fingerprint_follows_values_and_names():
    rng = np.random.default_rng(0)
    x = sp.random(5000, 40, density=0.1, format="csr", random_state=0, dtype=np.float32)  # two row chunks
    cells, genes = [f"c{i}" for i in range(5000)], [f"g{j}" for j in range(40)]
    fp = fingerprint_matrix(x, cells, genes, "AnnData (5000 cells x 40 genes)")
    assert fp["path"] == "AnnData (5000 cells x 40 genes)" and fp["size"] == x.nnz
    assert same_data(fp, fingerprint_matrix(x.copy(), list(cells), genes, "another label"))
    changed = x.copy()
    changed.data[rng.integers(changed.nnz)] += 1
    renamed = ["x", *cells[1:]]
    for other in (fingerprint_matrix(changed, cells, genes, "a"), fingerprint_matrix(x, renamed, genes, "a"),
                  fingerprint_matrix(x[:-1], cells[:-1], genes, "a"),
                  fingerprint_matrix(x.toarray(), cells, genes, "a")):
        assert not same_data(fp, other)
    assert describe_change(fp, fingerprint_matrix(changed, cells, genes, fp["path"])) == "content hash changed"
