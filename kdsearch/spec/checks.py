"""The networks a study asks for, against its input: refused at load when they cannot fit.

Sizes and MACs are plain arithmetic (`kdsearch.sizes`), so a study is checked before any data
is read or any teacher trained.
"""

from __future__ import annotations

from itertools import product

from kdsearch.architecture import Arch, MLPArch, MobileNetArch, ResNetArch, cnn_arch
from kdsearch.errors import StudyFileError, one_line
from kdsearch.sizes import ArchitectureError, arch_params, count_macs
from kdsearch.spec.limits import MAX_PARAMS
from kdsearch.spec.params import float_values, high, str_values, values
from kdsearch.spec.spaces import (
    CNNSpace,
    FamilyChoiceSpace,
    MLPSpace,
    MobileNetShape,
    ResNetShape,
    StagedSpace,
    staged_arch,
)
from kdsearch.spec.tables import StudySpec


def check_input(spec: StudySpec, input_shape: tuple[int, int, int], num_classes: int) -> None:
    """Refuse a study whose teacher or students cannot be built for its input, in one line.

    `parse_study` calls it when the input is known from the file; for an ImageFolder the
    runner calls it once the images are read, still before the teacher.
    """
    problem = _input_problem(spec, input_shape, num_classes)
    if problem is not None:
        raise refusal(spec, *problem)


def refusal(spec: StudySpec, key: str, expected: str, found: str) -> StudyFileError:
    path = spec._path or f"{spec.name}.toml"
    return StudyFileError(one_line(f"{path}: key '{key}': expected {expected}, found {found}"))


def _input_problem(spec: StudySpec, input_shape: tuple[int, int, int],
                   num_classes: int) -> tuple[str, str, str] | None:
    """(key, expected, found) of the first thing that does not fit, or None."""
    shape = f"{input_shape[1]}x{input_shape[2]}"
    if spec.teacher is not None:
        try:
            teacher = arch_params(spec.teacher, input_shape, num_classes)
        except ArchitectureError as e:
            return "teacher.convs", f"conv layers that fit a {shape} input", str(e)  # only CNNs collapse
        if teacher > MAX_PARAMS:
            return "teacher", f"at most {MAX_PARAMS:,} params", f"{teacher:,}"
    if spec.teacher_file is not None:  # whether the file loads is checked once the data is in
        channels = input_shape[0]
        for name in ("mean", "std"):
            given = getattr(spec.teacher_file.input, name)
            if given is not None and len(given) not in (1, channels):
                wanted = "1 value" if channels == 1 else f"1 or {channels} values (one per channel)"
                return f"teacher.input.{name}", wanted, f"{len(given)}"

    space, limits = spec.student.space, spec.student
    if isinstance(space, CNNSpace) and high(space.kernel) > min(input_shape[1:]):
        return ("student.kernel", f"kernels no larger than the {shape} input",
                str(high(space.kernel)))
    students = _extreme_students(space, input_shape)
    if not students:
        return None  # too many kernel sequences to size here: each trial checks its own
    inputs = f"on {shape} inputs of {num_classes} classes"
    sizes = [arch_params(a, input_shape, num_classes) for a in students]
    smallest, largest = min(sizes), max(sizes)
    if limits.max_params is not None and smallest > limits.max_params:
        return ("student.max_params", f"at least {smallest:,}, the smallest student of this "
                f"space {inputs}", f"{limits.max_params:,}")
    if limits.max_params is None and largest > MAX_PARAMS:
        return ("student.max_params", f"a cap: this space reaches {largest:,} params, past the "
                f"{MAX_PARAMS:,} a network may have", "none")
    if limits.max_macs is not None:
        fewest = min(count_macs(a, input_shape, num_classes) for a in students)
        if fewest > limits.max_macs:
            return ("student.max_macs", f"at least {fewest:,}, the MACs of the cheapest student "
                    f"of this space {inputs}", f"{limits.max_macs:,}")
    # max_latency_ms is not checked here: a latency is measured, on the device and under the
    # load of the run (search/objective.py times each student untrained), so no value of it is
    # known at load; a limit below every student prunes each trial, saying why.
    return None


_MAX_SIZED = 20_000  # students worth sizing one by one at load (about a second)


def _extreme_students(space: MLPSpace | CNNSpace | StagedSpace,
                      input_shape: tuple[int, int, int]) -> list[Arch]:
    """Students among which lie the space's smallest and its largest.

    Parameters grow with every width and with the kernels of 'same' convs, so their ends
    suffice. Depth, convs per block and the kernel of a block's last ('valid') conv also shrink
    the map the head sees, so all of their values are tried; a dense width of 0 swaps a layer
    for none, so the dense widths tried are none, the narrowest and the widest. Empty when
    per-layer kernels make that too many to list. The residual families keep the map's size
    with every kernel (padding k // 2) and end in global pooling, so their parameters grow with
    every knob (a stage, a block, a width, a kernel, shortcut B over A, an expansion) but the
    head: each family's lowest and highest corner, with the head's ends and its narrowest
    non-zero width, hold its smallest and largest student. MACs grow with the same knobs.
    """
    if isinstance(space, FamilyChoiceSpace):
        return [a for shape in space.shapes().values() for a in _staged_ends(shape)]
    if isinstance(space, ResNetShape | MobileNetShape):
        return _staged_ends(space)
    if isinstance(space, MLPSpace):
        depths, widths = values(space.depth), values(space.width)
        return [MLPArch(hidden=[widths[0]] * depths[0]), MLPArch(hidden=[widths[-1]] * depths[-1])]
    widths, kernels, dense = values(space.width), values(space.kernel), values(space.dense)
    denses = sorted({dense[0], dense[-1], next((d for d in dense if d > 0), dense[-1])})
    shapes = list(product(values(space.depth), values(space.convs_per_block)))

    def sequences(depth: int, per_block: int) -> list[list[int]]:
        if not space.kernel_per_layer:
            return [[k] * depth * per_block for k in kernels]
        if per_block == 1:  # all 'same': the smallest and the largest kernel everywhere
            return [[kernels[0]] * depth, [kernels[-1]] * depth]
        return [sum(([k] * (per_block - 1) + [last] for last in lasts), [])
                for lasts in product(kernels, repeat=depth) for k in (kernels[0], kernels[-1])]

    def count(depth: int, per_block: int) -> int:
        if space.kernel_per_layer and per_block > 1:
            return 2 * len(kernels) ** depth
        return len(kernels) if not space.kernel_per_layer else 2

    if sum(count(*s) for s in shapes) * 2 * len(denses) > _MAX_SIZED:
        return []
    side = min(input_shape[1:])
    return [cnn_arch(depth, per_block, width, space.channel_growth, seq, d, side)
            for depth, per_block in shapes
            for seq in sequences(depth, per_block)
            for width in (widths[0], widths[-1])
            for d in denses]


def _staged_ends(shape: ResNetShape | MobileNetShape) -> list[ResNetArch | MobileNetArch]:
    """The lowest and the highest corner of a residual space, and a head of each kind at both.

    A head (1x1 conv) of h channels grows with h, but replaces a classifier on the last
    stage's width: a narrow head can cost less than none when the classes are many.
    """
    ends = []
    for end in (0, -1):
        heads = [None]
        if isinstance(shape, MobileNetShape):
            head = values(shape.head)
            heads = sorted({head[0], head[-1], next((h for h in head if h > 0), head[-1])})
        for h in heads:
            extra = ({"shortcut": str_values(shape.shortcut)[end]} if isinstance(shape, ResNetShape)
                     else {"expansion": values(shape.expansion)[end], "head": h})
            ends.append(staged_arch(shape, values(shape.stages)[end], values(shape.blocks)[end],
                                    values(shape.base_width)[end],
                                    float_values(shape.width_growth)[end],
                                    values(shape.kernel)[end], **extra))
    return ends
