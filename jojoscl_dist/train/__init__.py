"""Training: the per-worker loop, sessions (local and Ray Train), checkpoints and the run driver."""
