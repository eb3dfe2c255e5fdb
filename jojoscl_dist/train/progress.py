"""Per-epoch progress: a tqdm bar on a terminal, else one plain line per epoch (logs, Ray worker output)."""

from __future__ import annotations

import sys
from typing import Any, TextIO


def epoch_line(m: dict[str, Any], total: int | None) -> str:
    """``epoch 12/100 loss 7.91 (ins 5.10 clu 2.41 sure 0.40) 4800 cells/s``, with the selection score (and ARI
    when labels were given) on evaluation epochs."""
    ep = int(m.get("epoch", 0)) + 1
    parts = [f"epoch {ep}/{total}" if total else f"epoch {ep}", f"loss {m.get('loss', float('nan')):.4g}"]
    if "l_ins" in m:
        parts.append(f"(ins {m['l_ins']:.3g} clu {m.get('l_clu', 0.0):.3g} sure {m.get('l_sure', 0.0):.3g})")
    if "select_silhouette" in m:
        parts.append(f"sil {m['select_silhouette']:.3f}")
    if "eval_ari" in m:
        parts.append(f"ari {m['eval_ari']:.3f}")
    if "cells_per_s" in m:
        parts.append(f"{m['cells_per_s']:.0f} cells/s")
    return " ".join(parts)


class EpochProgress:
    """Called with each reported metrics dict. ``mode``: 'auto' (a bar on a TTY, lines otherwise), 'bar', 'lines'
    or 'off'."""

    def __init__(self, total: int | None, mode: str = "auto", stream: TextIO | None = None, prefix: str = "jojoscl: "):
        self.total, self.stream, self.prefix = total, stream or sys.stderr, prefix
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode, self.bar = mode, None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="epoch", file=self.stream, desc="jojoscl", dynamic_ncols=True)

    def __call__(self, metrics: dict[str, Any]) -> None:
        if self.mode == "off":
            return
        line = epoch_line(metrics, self.total)
        if self.bar is not None:
            self.bar.n = int(metrics.get("epoch", 0)) + 1  # resumed runs start past 0
            self.bar.set_postfix_str(line.split(" ", 2)[2], refresh=False)
            self.bar.refresh()
        else:
            # write(), not print(): a Ray Train worker's print() also logs to stderr, so lines arrived twice.
            self.stream.write(self.prefix + line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
