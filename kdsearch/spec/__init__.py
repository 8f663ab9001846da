"""The study file, typed: `load_study("cifar_compress")` -> a frozen `StudySpec`.

A study file is checked once, here, so that nothing downstream meets a bad value halfway
through a run. Every failure becomes one line naming the file, the key, what was expected
and what was found.

The package, floor by floor: `limits` (caps), `params` (the syntax of a search parameter),
`spaces` (the student spaces), `tables` (every other table, and `StudySpec`), `reading` (the
TOML layout and pydantic's errors), `checks` (the networks against their input), `loading`.
"""

from kdsearch.spec.checks import check_input
from kdsearch.spec.limits import (
    DATASETS,
    MAX_PARAMS,
    MAX_PIXELS,
    NAMED_INPUTS,
    STAGED_FAMILIES,
)
from kdsearch.spec.loading import find_study_file, list_studies, load_study, parse_study, shipped_studies_dir
from kdsearch.spec.params import (
    FloatChoices,
    FloatParam,
    FloatRange,
    IntChoices,
    IntParam,
    IntRange,
    StrChoices,
    StrParam,
)
from kdsearch.spec.spaces import (
    CNNSpace,
    FamilyChoices,
    FamilyChoiceSpace,
    MLPSpace,
    MobileNetShape,
    MobileNetSpace,
    ResNetShape,
    ResNetSpace,
    StagedSpace,
    StudentSpace,
    staged_arch,
)
from kdsearch.spec.tables import (
    Baseline,
    DataSpec,
    EarlyStoppingSpec,
    Objective,
    SearchSpec,
    StudentRecipe,
    StudentSpec,
    StudySpec,
    SyntheticSpec,
    TeacherFileSpec,
    TeacherInput,
    TrainRecipe,
)

__all__ = [
    "DATASETS", "MAX_PARAMS", "MAX_PIXELS", "NAMED_INPUTS", "STAGED_FAMILIES", "Baseline",
    "CNNSpace", "DataSpec", "EarlyStoppingSpec", "FamilyChoiceSpace", "FamilyChoices",
    "FloatChoices", "FloatParam", "FloatRange", "IntChoices", "IntParam", "IntRange", "MLPSpace",
    "MobileNetShape", "MobileNetSpace", "Objective", "ResNetShape", "ResNetSpace", "SearchSpec",
    "StagedSpace", "StrChoices", "StrParam", "StudentRecipe", "StudentSpace", "StudentSpec",
    "StudySpec", "SyntheticSpec", "TeacherFileSpec", "TeacherInput", "TrainRecipe", "check_input",
    "find_study_file", "list_studies", "load_study", "parse_study", "shipped_studies_dir",
    "staged_arch",
]
