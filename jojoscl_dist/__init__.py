"""jojoscl-dist: ``jojoscl_dist.cluster(adata)`` and ``jojoscl_dist.JojoSCL`` (api.py) for notebooks; the CLIs are
``python -m jojoscl_dist.train``, ``.predict`` and ``.prepare``."""

from jojoscl_dist.version import __version__

API = ("cluster", "JojoSCL")


def __getattr__(name: str):
    # PEP 562: torch, Ray and anndata load on first use, so `import jojoscl_dist` and --version stay cheap.
    if name in API:
        from jojoscl_dist import api

        return getattr(api, name)
    raise AttributeError(f"module 'jojoscl_dist' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
