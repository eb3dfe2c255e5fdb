"""Data: readers, streaming preprocessing, synthetic atlases, per-worker batch loaders (no Ray)."""
