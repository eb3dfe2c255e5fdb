"""Clustering utilities: k-means backends (FAISS GPU/CPU), label-free selection, metrics (no Ray)."""
