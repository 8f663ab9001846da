"""What a run says on the terminal: trial lines, the early-stopping rule, the estimate of the
time left and the closing summary. Pure text from stored trials: nothing here trains or writes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from kdsearch import objectives
from kdsearch.objectives import COST
from kdsearch.record import KD, TrialRecord
from kdsearch.search.early_stopping import judged_rungs
from kdsearch.spec import StudySpec

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def trial_line(trial: FrozenTrial, costs: Sequence[str] = objectives.DEFAULT) -> str:
    """One finished trial in a line: a complete one with its scores and every cost it has; a
    stopped one with why and its value of each cost objective (`costs`)."""
    a = TrialRecord.of(trial)
    head = f"trial {trial.number:>3} {trial.state.name.lower():8}"
    arch = (a.arch_summary or "?") + (f" [{a.baseline}]" if a.baseline else "")
    kd = KD.of(trial.params)
    knobs = f"T={kd.temperature:.2f} alpha={kd.alpha:.2f}"
    if trial.state == TrialState.COMPLETE:
        return (f"{head} val_acc {a.val_accuracy:.4f}  test_acc {a.test_accuracy:.4f}  "
                f"params {a.params:>9,}  macs {a.macs:>11,}  "
                + (f"latency {a.latency_ms:.4g} ms  " if a.latency_ms is not None else "")
                + f"{arch}  {knobs}  "
                f"{a.train_seconds:.1f}s")
    known = "  ".join(f"{c} {COST[c].format(getattr(a, c)).split(' ')[0]}" for c in costs
                      if getattr(a, c) is not None)
    return f"{head} {a.stopped_reason}  {known or 'params 0'}  {arch}  {knobs}"



def stopping_line(spec: StudySpec) -> str:
    """Where trials are judged, and which rungs the warm-up or the budget leaves out."""
    rule, train = spec.search.early_stopping, spec.student.train
    if not rule.enabled:
        return "early stopping: off"
    judged = judged_rungs(rule, train.epochs, train.warmup(), train.lr_schedule)
    if not judged and rule.rungs is None and train.lr_schedule == "onecycle":
        return ("early stopping: none under a one-cycle schedule unless "
                "[search.early_stopping] rungs names epochs")
    line = (f"early stopping: trials judged after epoch{'s' * (len(judged) > 1)} "
            f"{', '.join(map(str, judged))} of {train.epochs}" if judged
            else f"early stopping: no rung left to judge in {train.epochs} epochs")
    inside = [r for r in rule.rungs_for(train.epochs, train.lr_schedule)
              if r < train.epochs and r not in judged]
    if inside:
        line += (f" (not after {', '.join(map(str, inside))}: inside the {train.warmup():g}-epoch "
                 f"warm-up, as after_warmup = true asks)")
    return line



def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _value(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() and abs(v) >= 10 else f"{v:.4f}"


def closing_summary(study: optuna.Study, seconds: float, front_lines: int = 5) -> list[str]:
    """What a run leaves behind, in a few lines: the study's trials by state, this run's wall
    time, and the head of the Pareto front (the counts say how much early stopping cut).
    """
    trials = study.get_trials(deepcopy=False)
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    repeats = sum(TrialRecord.of(t).repeat_of is not None for t in trials)
    pruned = f"{count[TrialState.PRUNED]} pruned" + (f" ({repeats} repeats, not trained)"
                                                     if repeats else "")
    lines = [f"run-study '{study.study_name}' done in {duration(seconds)}: "
             f"{count[TrialState.COMPLETE]} complete, {pruned}, "
             f"{count[TrialState.FAIL]} failed ({len(trials)} trials in the study)"]
    front = [t for t in study.best_trials if t.values is not None]
    if not front:
        return [*lines, "Pareto front: empty (no complete trial)"]
    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    front.sort(key=lambda t: t.values[0], reverse=study.directions[0].name == "MAXIMIZE")
    # Names the study's objectives: accuracy and the chosen cost(s), read from storage.
    lines.append(f"Pareto front: {len(front)} trial{'s' * (len(front) > 1)} "
                 f"({names[0]} up; {', '.join(names[1:])} down), best {names[0]} first")
    for t in front[:front_lines]:
        values = "  ".join(f"{n} {_value(v)}" for n, v in zip(names, t.values, strict=False))
        lines.append(f"  trial {t.number:>3}  {values}  {TrialRecord.of(t).arch_summary}")
    if len(front) > front_lines:
        lines.append(f"  ... and {len(front) - front_lines} more ('kdsearch best' lists all)")
    return lines


def trial_share(epoch: int, done_batches: int, per_epoch: int, images: Sequence[int]) -> float:
    """The share of a trial's training done, by images: with cheap early epochs (a quarter of
    the images each) epoch 1 is not a tenth of a 10-epoch trial."""
    before = sum(images[:epoch - 1]) + images[epoch - 1] * done_batches / max(per_epoch, 1)
    return before / max(sum(images), 1)


def run_estimate(durations: dict[TrialState, list[float]], remaining: int,
                 running_fraction: float | None = None,
                 clock_left: float | None = None) -> float | None:
    """Seconds until `remaining` more trials finish (one of them running, `running_fraction`
    done), or None before any trial has completed; with a timeout (`clock_left` seconds of it
    left) no trial starts after it, so the run ends by the later of the clock and the running
    trial's end, however many trials the target still asks for.

    Complete and pruned trials are averaged apart and mixed in the proportion seen so far: a
    trial pruned before training takes 0.4 s against minutes for a complete one, so one mean
    rate (or tqdm's moving average) swings with every streak of pruned trials. The running
    trial is counted as a complete one: it may yet be pruned, so the estimate leans long.
    """
    complete, pruned = durations.get(TrialState.COMPLETE, []), durations.get(TrialState.PRUNED, [])
    if not complete or remaining <= 0:
        return None if not complete else 0.0
    mean_complete = sum(complete) / len(complete)
    mean_pruned = sum(pruned) / len(pruned) if pruned else 0.0
    share = len(pruned) / (len(pruned) + len(complete))
    per_trial = (1 - share) * mean_complete + share * mean_pruned
    running = 0.0 if running_fraction is None else (1 - running_fraction) * mean_complete
    total = (remaining - (running_fraction is not None)) * per_trial + running
    return total if clock_left is None else min(total, max(clock_left, running))


def trial_seconds(t: FrozenTrial) -> float | None:
    """A trial's own wall time, start to end (a stopped trial records no training time), or
    None before it ends."""
    if t.datetime_start and t.datetime_complete:
        return (t.datetime_complete - t.datetime_start).total_seconds()
    return None


def durations_by_state(trials: list[FrozenTrial]) -> dict[TrialState, list[float]]:
    out: dict[TrialState, list[float]] = {state: [] for state in FINISHED}
    for t in trials:
        seconds = trial_seconds(t)
        if t.state in out and seconds is not None:
            out[t.state].append(seconds)
    return out



def writer(log: Callable[[str], None]) -> Callable[[str], None]:
    """`log`, clearing the progress bar around the line so that the two do not garble."""
    from tqdm import tqdm

    def say(message: str) -> None:
        with tqdm.external_write_mode(file=sys.stderr):
            log(message)

    return say
