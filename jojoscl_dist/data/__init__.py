"""Data: readers, streaming preprocessing, prepared Zarr stores, synthetic atlases, per-worker batch loaders, and a
run's data set (``dataset``: the input read and preprocessed, K fixed, the settings that depend on the data). No
Ray; nothing from ``jojoscl_dist.train`` or ``jojoscl_dist.outputs`` (which import it)."""
