"""`python -m jojoscl_dist.prepare --input RAW --output STORE.zarr`: preprocess an atlas out of core into a prepared
Zarr store (``jojoscl_dist.data.zarr_store.prepare``) that training streams."""

from __future__ import annotations

import argparse
import logging
import sys

from jojoscl_dist.version import __version__
from jojoscl_dist.config import ConfigValueError, DataConfig, JojoConfig
from jojoscl_dist.data.preprocess import HVG_FLAVORS, TARGET_SUM_HELP, target_sum_arg
from jojoscl_dist.data.zarr_store import prepare
from jojoscl_dist.errors import JojoInputError


def check_options(a: argparse.Namespace) -> None:
    """The numeric options, range-checked by the training config's own rules (same limits, same words)."""
    flags = {"data.n_top_genes": ("--n-top-genes", a.n_top_genes), "data.chunk_size": ("--chunk-size", a.chunk_size),
             "data.store_chunk_rows": ("--chunk-rows", a.chunk_rows)}
    try:
        JojoConfig().override({key: value for key, (_, value) in flags.items()})
    except ConfigValueError as e:
        raise JojoInputError(e.named(flags[e.key][0])) from None
    if a.workers is not None and a.workers < 1:
        raise JojoInputError(f"--workers must be an integer >= 1, got {a.workers}")


def main(argv: list[str] | None = None) -> int:
    dc = DataConfig()
    p = argparse.ArgumentParser(prog="python -m jojoscl_dist.prepare",
                                description="Preprocess a raw atlas out of core into a Zarr store for training.")
    p.add_argument("--version", action="version", version=f"jojoscl-dist {__version__}")
    p.add_argument("--input", required=True, help=".h5ad (read backed), X/Y .h5, 10x, or raw AnnData .zarr")
    p.add_argument("--output", required=True, help="the prepared store (STORE.zarr)")
    p.add_argument("--n-top-genes", type=int, default=dc.n_top_genes)
    p.add_argument("--input-scale", default=dc.input_scale, choices=["auto", "counts", "normalized", "log"])
    p.add_argument("--hvg-flavor", default=dc.hvg_flavor, choices=HVG_FLAVORS)
    p.add_argument("--target-sum", type=target_sum_arg, default=dc.target_sum, help=TARGET_SUM_HELP)
    p.add_argument("--chunk-size", type=int, default=dc.chunk_size, help="rows per statistics chunk")
    p.add_argument("--chunk-rows", type=int, default=dc.store_chunk_rows, help="rows per chunk of the store's X")
    p.add_argument("--workers", type=int, default=None, help="Dask threads for the write pass (default 2)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="jojoscl: %(levelname)s: %(message)s")
    try:
        check_options(a)
        info = prepare(a.input, a.output, n_top_genes=a.n_top_genes, input_scale=a.input_scale,
                       hvg_flavor=a.hvg_flavor, target_sum=a.target_sum, chunk_size=a.chunk_size,
                       chunk_rows=a.chunk_rows, workers=a.workers, overwrite=a.overwrite, progress=not a.quiet)
    except JojoInputError as e:
        print(f"jojoscl: error: {e}", file=sys.stderr)
        return 2
    print(f"jojoscl: prepared {info['n_cells']} cells x {info['n_genes']} genes into {info['output']} "
          f"in {info['time_total_s']:.1f} s ({info['cells_per_s']:.0f} cells/s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
