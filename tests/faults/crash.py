"""A training that dies after a given epoch, as a killed process would: that epoch reported and checkpointed,
nothing after it."""

from __future__ import annotations

from jojoscl_dist.train import loop


class Crash(Exception):
    pass


def crash_training_after(monkeypatch, epoch: int) -> None:
    """Make the next in-process training raise Crash once ``epoch`` has been reported."""
    real = loop.train_worker

    def crashing_worker(cfg, data, session):
        report = session.report

        def report_then_crash(metrics, checkpoint_dir=None):
            report(metrics, checkpoint_dir)
            if metrics["epoch"] == epoch:
                raise Crash
        session.report = report_then_crash
        real(cfg, data, session)

    monkeypatch.setattr("jojoscl_dist.train.run.train_worker", crashing_worker)
