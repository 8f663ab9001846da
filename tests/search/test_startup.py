import dataclasses
import math

import optuna
import pytest

from kdsearch.errors import StudyFileError
from kdsearch.options import Options
from kdsearch.search import startup
from kdsearch.search.space import suggest_student
from kdsearch.spec import parse_study
from kdsearch.study.runner import make_sampler, run_study
from kdsearch.training.models import arch_params
from tests.helpers import REPO, tiny_study_text

CIFAR = (3, 32, 32)


def _cifar_resnet():
    path = REPO / "studies" / "cifar_resnet.toml"
    return parse_study(path.read_text(), path)


def test_the_plan_spans_the_sizes_of_the_space_smallest_first():
    spec = _cifar_resnet()
    planned = startup.plan(spec, CIFAR, 10, seed=0)
    costs = [c for c, _ in planned]
    assert len(planned) == startup.startup_trials(spec) == 10
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    assert costs[-1] <= spec.student.max_params
    drawn = sorted(c for c, _ in startup.draws(spec, CIFAR, 10, 400, seed=0))
    # it reaches both ends of what random draws hold, and spends no more than a plain draw
    # would on the crowded middle: each decade gets its share, the smallest decade included
    assert costs[0] < drawn[len(drawn) // 20] and costs[-1] > drawn[len(drawn) * 9 // 10]
    decades = [math.log10(c) for c in costs]
    gaps = [b - a for a, b in zip(decades, decades[1:], strict=False)]
    assert max(gaps) < 2 * (decades[-1] - decades[0]) / len(gaps)
    assert startup.plan(spec, CIFAR, 10, seed=0) == planned  # the study seed fixes it
    assert startup.plan(spec, CIFAR, 10, seed=1) != planned


def test_each_planned_student_is_a_point_of_the_space_with_the_size_it_was_planned_at():
    spec = _cifar_resnet()
    for cost, params in startup.plan(spec, CIFAR, 10, seed=3):
        fixed = optuna.trial.FixedTrial(params)
        choice = suggest_student(fixed, spec.student.space, CIFAR)
        assert arch_params(choice.arch, CIFAR, 10) == cost


def test_spread_takes_a_band_in_turn_and_skips_the_empty_ones():
    drawn = [(c, {"i": i}) for i, c in enumerate([100, 120, 130, 110, 10_000, 1_000_000, 150])]
    # 4 bands of a decade over 100..1,000,000: 100-150 in the first, none in the second
    assert [c for c, _ in startup.spread(drawn, 4)] == [100, 120, 10_000, 1_000_000]
    assert [c for c, _ in startup.spread(drawn, 2)] == [100, 10_000]  # the first in its band
    assert len(startup.spread(drawn, 20)) == len(drawn)  # no more than there are
    # a size not picked yet before a size twice: 110 before the second 100
    twice = [(c, {"i": i}) for i, c in enumerate([100, 100, 110, 1000])]
    assert [c for c, _ in startup.spread(twice, 3)] == [100, 110, 1000]
    assert startup.spread([], 3) == []


def test_the_sampler_hands_out_the_plan_then_models_the_study(tmp_path):
    spec = parse_study(tiny_study_text(n_trials=9), tmp_path / "tiny.toml")
    planned = [params for _, params in startup.plan(spec, (1, 8, 8), 3, seed=0)]
    assert len(planned) == 3
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=make_sampler(spec, 0, planned))
    for i in range(5):
        trial = study.ask()
        suggest_student(trial, spec.student.space, (1, 8, 8))
        if i < 3:
            assert trial.params == planned[i]
        study.tell(trial, [0.5 + 0.01 * i, 100.0 * (i + 1)])
    assert study.trials[3].params not in planned


@pytest.mark.slow
def test_a_run_starts_with_the_plan_and_a_resumed_run_does_not_repeat_it(tmp_path):
    spec = parse_study(tiny_study_text(n_trials=6), tmp_path / "tiny.toml")
    opts = Options(storage=f"sqlite:///{tmp_path}/s.db", study_name="tiny", n_trials=2,
                   timeout=None, data_dir=None, cache_dir=tmp_path / "cache", device="cpu")
    logs: list[str] = []
    study = run_study(spec, opts, log=logs.append)
    planned = startup.plan(spec, (1, 8, 8), 3, seed=0)
    assert [t.params for t in study.trials] == [p for _, p in planned[:2]]
    assert [t.user_attrs["params"] for t in study.trials] == [c for c, _ in planned[:2]]
    assert any(m.startswith("TPE's first 3 students: from ") and "smallest first" in m
               for m in logs)
    assert len(study.trials) == 2  # nothing queued ahead of the run
    logs.clear()
    study = run_study(spec, dataclasses.replace(opts, n_trials=4), log=logs.append)
    assert study.trials[2].params == planned[2][1]  # the resumed run goes on with the plan
    assert not any("TPE's first" in m for m in logs)


def test_startup_is_tpe_only_and_random_is_optunas_own(tmp_path):
    with pytest.raises(StudyFileError, match="startup is TPE's start-up"):
        parse_study(tiny_study_text() + '\nsampler = "random"\nstartup = "spread"\n',
                    tmp_path / "t.toml")
    spec = parse_study(tiny_study_text() + '\nstartup = "random"\n', tmp_path / "t.toml")
    assert startup.plan(spec, (1, 8, 8), 3, seed=0) == []


def test_a_planned_value_the_space_cannot_take_is_drawn_instead():
    from kdsearch.search.tpe import KDSearchTPESampler

    study = optuna.create_study(sampler=KDSearchTPESampler(seed=0, startup=[{"w": 7, "t": 2.0}]))
    trial = study.ask()
    assert trial.suggest_categorical("w", [4, 8]) in (4, 8)
    assert trial.suggest_float("t", 1.0, 3.0) == 2.0  # the rest of the plan still holds


def test_the_centre_of_each_kind_of_knob():
    from kdsearch.spec import FloatChoices, FloatRange, IntChoices, IntRange, StrChoices

    assert startup.centre(FloatRange(low=1.0, high=20.0, log=True)) == pytest.approx(20 ** 0.5)
    assert startup.centre(FloatRange(low=0.0, high=1.0)) == 0.5
    assert startup.centre(IntRange(low=2, high=10, step=4)) == 6  # on the step's grid
    assert startup.centre(IntRange(low=16, high=64, step=16)) in (32, 48)
    assert startup.centre(FloatChoices(choices=[8.0, 2.0, 4.0])) == 4.0  # the median
    assert startup.centre(IntChoices(choices=[256, 128])) == 128  # the lower of two middles
    assert startup.centre(StrChoices(choices=["sgd", "adam"])) == "sgd"
    assert startup.centre(0.2) == 0.2 and startup.centre(128) == 128


def test_a_centred_plan_keeps_the_drawn_shapes_and_sets_only_the_recipe(tmp_path):
    text = (REPO / "studies" / "cifar_resnet.toml").read_text()
    drawn_text = text.replace('startup_recipe = "centre"', 'startup_recipe = "drawn"')
    assert drawn_text != text  # the shipped study plans at the centre
    drawn = startup.plan(parse_study(drawn_text, tmp_path / "d.toml"), CIFAR, 10, seed=0)
    spec = _cifar_resnet()
    centred = startup.plan(spec, CIFAR, 10, seed=0)
    knobs = {"temperature": 20 ** 0.5, "alpha": 0.5, "lr": (0.05 * 0.4) ** 0.5, "batch_size": 128}
    assert [c for c, _ in centred] == [c for c, _ in drawn]
    for (_, mine), (_, theirs) in zip(centred, drawn, strict=True):
        assert {k: v for k, v in mine.items() if k not in knobs} == \
            {k: v for k, v in theirs.items() if k not in knobs}
        assert {k: mine[k] for k in knobs} == pytest.approx(knobs)
    # drawn, the same knobs differ from student to student
    assert len({p["temperature"] for _, p in drawn}) == len(drawn)
    # a knob the study fixes is not a param, so nothing is added for it
    fixed = parse_study(text.replace('lr = { low = 0.05, high = 0.4, log = true }', 'lr = 0.2'),
                        tmp_path / "f.toml")
    assert all("lr" not in p for _, p in startup.plan(fixed, CIFAR, 10, seed=0))


def test_startup_recipe_needs_the_spread_start_up_of_tpe(tmp_path):
    with pytest.raises(StudyFileError, match="startup_recipe is TPE's start-up"):
        parse_study(tiny_study_text() + '\nsampler = "random"\nstartup_recipe = "centre"\n',
                    tmp_path / "t.toml")
    with pytest.raises(StudyFileError, match="needs startup = 'spread'"):
        parse_study(tiny_study_text() + '\nstartup = "random"\nstartup_recipe = "centre"\n',
                    tmp_path / "t.toml")


@pytest.mark.slow
def test_a_centred_start_up_runs_its_students_at_the_centre_and_says_so(tmp_path):
    spec = parse_study(tiny_study_text(n_trials=6, search='n_trials = 6\nstartup_recipe = "centre"'),
                       tmp_path / "tiny.toml")
    opts = Options(storage=f"sqlite:///{tmp_path}/s.db", study_name="tiny", n_trials=2,
                   timeout=None, data_dir=None, cache_dir=tmp_path / "cache", device="cpu")
    logs: list[str] = []
    study = run_study(spec, opts, log=logs.append)
    for t in study.trials:
        assert t.params["temperature"] == pytest.approx(10 ** 0.5) and t.params["alpha"] == 0.5
    assert study.trials[0].params != study.trials[1].params  # two shapes
    assert any("smallest first, each at temperature 3.16, alpha 0.5 (search/startup.py)" in m
               for m in logs), logs


def test_the_plan_is_at_the_centre_unless_the_study_file_says_drawn(tmp_path):
    unset = parse_study(tiny_study_text(), tmp_path / "t.toml")
    assert unset.search.startup_recipe == "centre"
    # Optuna's own start-up plans nothing, so the default does not conflict with it
    assert parse_study(tiny_study_text() + '\nstartup = "random"\n',
                       tmp_path / "r.toml").search.startup == "random"


def test_a_centred_plan_never_holds_one_student_twice(tmp_path):
    # 8 shapes (depth 1-2, width 4/8, kernel 3/5) and a plan of 10: drawn, a shape may come
    # twice at two recipes; centred, the two would be one student trained twice, so the plan
    # holds each shape once and is shorter than asked
    spec = parse_study(tiny_study_text(n_trials=30, search="n_trials = 30"), tmp_path / "t.toml")
    assert startup.startup_trials(spec) == 10
    for seed in range(5):
        planned = startup.plan(spec, (1, 8, 8), 3, seed=seed)
        points = [repr(sorted(p.items())) for _, p in planned]
        assert len(points) == len(set(points)) == 8
        search = spec.search.model_copy(update={"startup_recipe": "drawn"})
        drawn = startup.plan(spec.model_copy(update={"search": search}), (1, 8, 8), 3, seed=seed)
        assert len(drawn) == 10  # distinct only through T and alpha
