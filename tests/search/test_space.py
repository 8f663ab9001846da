"""The search space as code: residual families, the family as a choice, a searched recipe."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from kdsearch.architecture import MobileNetArch, ResNetArch
from kdsearch.errors import StudyFileError
from kdsearch.search import baselines
from kdsearch.search.space import suggest_recipe, suggest_student
from kdsearch.spec import TrainRecipe, parse_study
from tests.helpers import STAGED_CHOICE, STAGED_RESNET, tiny_staged_study_text, tiny_study_text

SHAPE = (1, 8, 8)


def _spec(student_text: str, extra: str = ""):
    return parse_study(tiny_staged_study_text(student_text) + extra, Path("staged.toml"))


def test_a_resnet_space_suggests_its_knobs_and_builds_the_arch():
    spec = _spec(STAGED_RESNET)
    trial = optuna.trial.FixedTrial({"stages": 2, "blocks": 1, "base_width": 6, "width_growth": 2.0,
                                     "kernel": 3, "shortcut": "B", "temperature": 2.0, "alpha": 0.5})
    choice = suggest_student(trial, spec.student.space, SHAPE)
    assert choice.arch == ResNetArch(blocks=[1, 1], base_width=6, width_growth=2.0, shortcut="B")
    assert (choice.temperature, choice.alpha) == (2.0, 0.5)


def test_the_family_is_a_choice_and_each_family_names_its_own_knobs():
    space = _spec(STAGED_CHOICE).student.space
    common = {"temperature": 2.0, "alpha": 0.5}
    mobile = suggest_student(optuna.trial.FixedTrial({
        "family": "mobilenet", "mobilenet.stages": 2, "mobilenet.blocks": 1,
        "mobilenet.base_width": 8, "mobilenet.width_growth": 2.0, "mobilenet.kernel": 5,
        "mobilenet.expansion": 4, "mobilenet.head": 0, **common}), space, SHAPE).arch
    assert mobile == MobileNetArch(blocks=[1, 1], base_width=8, kernel=5, expansion=4)
    # a real study draws both families, and never a knob of the family it did not draw
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    families = set()
    for _ in range(12):
        trial = study.ask()
        arch = suggest_student(trial, space, SHAPE).arch
        families.add(arch.family)
        other = "mobilenet" if arch.family == "resnet" else "resnet"
        assert trial.params["family"] == arch.family
        assert not any(name.startswith(other) for name in trial.params)
        study.tell(trial, 0.0)
    assert families == {"resnet", "mobilenet"}


def test_a_searched_lr_reaches_the_trials_recipe_and_a_fixed_one_is_not_a_param():
    spec = _spec(STAGED_RESNET)
    recipe = suggest_recipe(optuna.trial.FixedTrial({"lr": 0.05}), spec.student.train)
    assert type(recipe) is TrainRecipe and recipe.lr == 0.05 and recipe.batch_size == 64
    assert recipe.lr_schedule == "onecycle" and recipe.label_smoothing == 0.1
    study = optuna.create_study()
    trial = study.ask()
    fixed = parse_study(tiny_study_text(), Path("t.toml")).student.train
    assert suggest_recipe(trial, fixed) == TrainRecipe(epochs=2, batch_size=64, lr=0.003)
    assert trial.params == {}  # studies that fix lr and batch size store what they always did
    batch = fixed.model_copy(update={"batch_size": parse_study(
        tiny_study_text().replace("batch_size = 64\nlr = 0.003\n\n[search]",
                                  "batch_size = { choices = [16, 32] }\nlr = 0.003\n\n[search]"),
        Path("t.toml")).student.train.batch_size})
    assert suggest_recipe(trial, batch).batch_size in (16, 32) and "batch_size" in trial.params


def test_a_resnet_baseline_and_a_searched_lr_are_checked_like_any_other():
    pick = ('[[search.baselines]]\nlabel = "resnet-8-ish"\nparams = { family = "resnet", '
            '"resnet.blocks" = 1, temperature = 4.0, alpha = 0.9, lr = 0.1 }\n')
    [(label, params)] = baselines.resolve(_spec(STAGED_CHOICE, pick), SHAPE)
    assert params["family"] == "resnet" and params["resnet.blocks"] == 1 and params["lr"] == 0.1
    assert params["resnet.stages"] == 2  # fixed in the space: filled in
    with pytest.raises(StudyFileError, match="no value for 'lr'"):
        baselines.resolve(_spec(STAGED_CHOICE, pick.replace(", lr = 0.1", "")), SHAPE)
