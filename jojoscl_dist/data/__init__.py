"""Data: readers, streaming preprocessing, synthetic atlases, per-worker batch loaders, and a run's data set
(``dataset``: the input read and preprocessed, K fixed, the settings that depend on the data). No Ray, and
nothing from ``jojoscl_dist.train``."""
