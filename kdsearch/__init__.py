"""kdsearch: search knowledge-distillation students, trading accuracy against size.

The Python API (`kdsearch.run_study`, `front`, `trials`, `compress_trial`, `evaluate`,
`load_model`) lives in `kdsearch.api` and loads on first use, so `import kdsearch` (and every
CLI start) stays free of torch and Optuna.
"""

import os

# As the CLI does: OpenMP threads that sleep when idle instead of spinning, or a notebook's
# trial beside another process runs several times slower. Only effective before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

API = ("run_study", "front", "trials", "read", "compress_trial", "evaluate", "load_model")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API or name == "api":
        import importlib

        api = importlib.import_module("kdsearch.api")
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'kdsearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
