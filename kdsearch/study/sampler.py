"""The study file's sampler, one seeded stream per process that joins the study."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optuna

from kdsearch.search import startup
from kdsearch.spec import StudySpec

STREAM_STRIDE = 7919  # a prime: stream k seeds the sampler with seed + 7919 k


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """A GridSampler that does not call `study.stop()` when its grid is used up.

    Trials run through ask/tell here (to hold a study-wide target across workers), where
    Optuna forbids `stop()`; the target, which is capped at the grid size, ends a sweep instead.
    """

    def after_trial(self, study, trial, state, values) -> None:
        pass


def sampler_seed(spec: StudySpec, stream: int) -> int:
    """The seed of one of the study's sampler streams (`make_sampler`)."""
    return (spec.seed + STREAM_STRIDE * stream) % 2**32


def make_sampler(spec: StudySpec, stream: int, planned: Sequence[dict] = (),
                 tpe: Mapping[str, Any] | None = None) -> optuna.samplers.BaseSampler:
    """The study file's sampler, seeded for one of the study's sampler streams; TPE's first
    trials take the `planned` start-up students (search/startup.py). `tpe` overrides TPE's own
    arguments (`TPESampler`'s names), for the benchmarks' variants of kdsearch; no study file
    sets them.

    Every process that joins a study draws the next stream number from a counter in the
    database (`create_study`), so workers started separately as identical commands (what
    `docker compose up --scale worker=4` does), never share a random stream and never draw the
    same students; a resumed run gets a new stream and does not repeat its start-up points.
    The trade-off: the study seed and the run's order fix each stream, so a lone worker's
    first run (stream 0, seeded with the study seed itself) and each later run are
    reproducible, but which worker of a concurrent start gets which stream is a race.
    """
    seed = sampler_seed(spec, stream)
    if tpe and spec.search.sampler != "tpe":
        raise ValueError(f"TPE arguments {sorted(tpe)} given for sampler {spec.search.sampler!r}")
    if spec.search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(
            seed=seed, population_size=max(8, min(50, spec.search.n_trials // 4)))
    if spec.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.search.sampler == "grid":
        from kdsearch.search.sweep import sweep_grid

        return _AskTellGridSampler(sweep_grid(spec), seed=seed)
    # Multi-objective TPE: better than NSGA-II at the tens of trials a CPU study affords;
    # constant_liar keeps parallel workers from all sampling the same point; group: a family's
    # knobs (`resnet.blocks`) are modelled jointly, not one by one. It ranks trials in decades
    # of cost and never sees stored curves (search/tpe.py).
    from kdsearch.search.tpe import KDSearchTPESampler

    return KDSearchTPESampler(**{"seed": seed, "multivariate": True, "group": True,
                                 "constant_liar": True,
                                 "n_startup_trials": startup.startup_trials(spec),
                                 "startup": planned, **(tpe or {})})
