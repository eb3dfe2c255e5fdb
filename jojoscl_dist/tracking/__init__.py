"""Experiment tracking (MLflow): embedded sqlite store by default, a server with --tracking-uri."""
