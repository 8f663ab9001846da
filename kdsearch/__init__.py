"""kdsearch: search knowledge-distillation students, trading accuracy against size.

The Python API (`kdsearch.run_study`, `front`, `trials`, `compress_trial`, `evaluate`,
`load_model`) lives in `kdsearch.api` and loads on first use, so `import kdsearch` (and every
CLI start) stays free of torch and Optuna.
"""

import os

# For the CLI and notebooks alike, before torch loads OpenMP: idle threads sleep instead of
# spinning, so a busy machine (or `--workers`) does not turn every parallel op into a
# spin-wait (measured 10x slower). Written, never read: configuration stays in cli.py.
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
