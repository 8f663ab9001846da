"""The syntax of a search parameter: a fixed value, a range, or a list of choices.

`width = 8`, `depth = { low = 1, high = 3 }`, `kernel = { choices = [3, 5] }`: each is checked
by hand (`param_values`) so that a refusal names the end or the choice at fault, and every
value it can take is checked against what the network builders accept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError


class Frozen(BaseModel):
    """Every table of the study file: immutable, no unknown key, and strict about types.

    TOML values are typed, so a string where a number or a boolean belongs is a mistake to
    name, not to convert (`hflip = "yes"`, `epochs = "2"`); booleans are never numbers. An
    integer is still taken where a float belongs (`lr = 1`), as anyone writing TOML expects.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)


def refuse(expected: str, found: str, key: str = "") -> PydanticCustomError:
    """A validation error whose words are ours; `key` names a sub-key of where it is raised."""
    return PydanticCustomError("kdsearch", "expected {expected}, found {found}",
                               {"expected": expected, "found": found, "key": key})


def describe_found(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class IntRange(Frozen):
    low: int
    high: int
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError("low <= high")
        return self


class FloatRange(Frozen):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError("low <= high")
        if self.log and self.low <= 0:
            raise ValueError("low > 0 for a log range")
        return self


class IntChoices(Frozen):
    choices: list[int] = Field(min_length=1)


class FloatChoices(Frozen):
    choices: list[float] = Field(min_length=1)


class StrChoices(Frozen):
    choices: list[str] = Field(min_length=1)


IntParam = int | IntRange | IntChoices
FloatParam = float | FloatRange | FloatChoices
StrParam = str | StrChoices


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def param_values(raw: Any, integer: bool) -> list[tuple[float, str]]:
    """Every end a parameter can reach, with how the file names it; refuses a malformed one.

    Written by hand rather than left to pydantic's union, whose errors for `{ choices = [] }`
    come from the range member ("low: expected a value") and mislead.
    """
    if isinstance(raw, BaseModel):  # built in code rather than read from a file
        raw = raw.model_dump()
    kind, ok = ("a whole number", is_int) if integer else ("a number", is_number)
    if ok(raw):
        if not integer and not math.isfinite(raw):
            raise refuse("a finite number", repr(raw))
        return [(raw, "{}")]
    if isinstance(raw, dict) and "choices" in raw:
        choices = raw["choices"]
        if set(raw) != {"choices"}:
            raise refuse("only 'choices' in { choices = [..] }",
                          f"key '{sorted(set(raw) - {'choices'})[0]}'")
        if not isinstance(choices, list) or not choices:
            raise refuse("a non-empty list of choices", describe_found(choices))
        for c in choices:
            if not ok(c) or (not integer and not math.isfinite(c)):
                noun = "whole numbers" if integer else "finite numbers"
                raise refuse(f"{noun} as choices", f"{describe_found(c)} among them")
        return [(c, "{} among the choices") for c in choices]
    if isinstance(raw, dict) and raw:
        allowed = {"low", "high", "step"} if integer else {"low", "high", "log"}
        if set(raw) - allowed:
            raise refuse(f"a range of {' and '.join(sorted(allowed))}",
                          f"key '{sorted(set(raw) - allowed)[0]}'")
        for end in ("low", "high"):
            if end not in raw:
                raise refuse("a range { low = .., high = .. }", f"no '{end}'")
            if not ok(raw[end]) or (not integer and not math.isfinite(raw[end])):
                raise refuse(f"{kind} as the range's {end}", describe_found(raw[end]))
        if raw["low"] > raw["high"]:
            raise refuse("low <= high", f"low = {raw['low']}, high = {raw['high']}")
        step = raw.get("step", 1)
        if integer and not (is_int(step) and step >= 1):
            raise refuse("a whole step of at least 1", describe_found(step))
        if integer and (raw["high"] - raw["low"]) % step:
            raise refuse("a step that divides high - low (else high is never drawn)",
                          f"step = {step} from {raw['low']} to {raw['high']}")
        if not integer and not isinstance(raw.get("log", False), bool):
            raise refuse("true or false for log", describe_found(raw["log"]))
        if raw.get("log") and raw["low"] <= 0:
            raise refuse("low > 0 for a log range", f"low = {raw['low']}")
        return [(raw["low"], "low = {}"), (raw["high"], "high = {}")]
    raise refuse(f"{kind}, a range {{ low = .., high = .. }} or {{ choices = [..] }}",
                  describe_found(raw))


def ints(what: str, low: int, high: int, odd: bool = False) -> BeforeValidator:
    """An integer search parameter whose every value lies in [low, high]: what the builders take."""
    def check(raw: Any) -> Any:
        for value, where in param_values(raw, integer=True):
            if not low <= value <= high:
                raise refuse(f"{what} from {low:,} to {high:,}", where.format(f"{value:,}"))
            if odd and value % 2 == 0:
                raise refuse(f"odd {what} ('same' padding of an even kernel shifts the map)",
                              where.format(value))
        ends = raw.model_dump() if isinstance(raw, IntRange) else raw
        if odd and isinstance(ends, dict) and "low" in ends and ends["low"] < ends["high"] and (
                ends.get("step", 1) % 2):
            raise refuse(f"odd {what}: a range needs an even step", f"step = {ends.get('step', 1)}")
        return raw
    return BeforeValidator(check)


def floats(expected: str, fits: Callable[[float], bool]) -> BeforeValidator:
    """A float search parameter whose every value `fits`, `expected` saying how."""
    def check(raw: Any) -> Any:
        for value, where in param_values(raw, integer=False):
            if not fits(value):
                raise refuse(expected, where.format(value))
        return raw
    return BeforeValidator(check)


def strs(what: str, allowed: tuple[str, ...]) -> BeforeValidator:
    """A string search parameter: one of `allowed`, or `{ choices = [..] }` of them."""
    expected = f"{what}: one of {', '.join(map(repr, allowed))}"

    def check(raw: Any) -> Any:
        if isinstance(raw, BaseModel):
            raw = raw.model_dump()
        if isinstance(raw, str):
            if raw not in allowed:
                raise refuse(expected, repr(raw))
            return raw
        if isinstance(raw, dict) and "choices" in raw:
            if set(raw) != {"choices"}:
                raise refuse("only 'choices' in { choices = [..] }",
                              f"key '{sorted(set(raw) - {'choices'})[0]}'")
            choices = raw["choices"]
            if not isinstance(choices, list) or not choices:
                raise refuse("a non-empty list of choices", describe_found(choices))
            for c in choices:
                if c not in allowed or not isinstance(c, str):
                    raise refuse(expected, f"{describe_found(c)} among the choices")
            return raw
        raise refuse(f"{expected}, or {{ choices = [..] }} of them", describe_found(raw))
    return BeforeValidator(check)


def float_values(param: FloatParam) -> list[float]:
    """The ends of a float parameter (every value for choices), in increasing order."""
    if isinstance(param, FloatRange):
        return [param.low, param.high]
    if isinstance(param, FloatChoices):
        return sorted(set(param.choices))
    return [float(param)]


def str_values(param: StrParam) -> list[str]:
    return sorted(set(param.choices)) if isinstance(param, StrChoices) else [param]


def values(param: IntParam) -> range | list[int]:
    """Every value an integer parameter can take, in increasing order."""
    if isinstance(param, IntRange):
        return range(param.low, param.high + 1, param.step)
    if isinstance(param, IntChoices):
        return sorted(set(param.choices))
    return [param]


def high(param: IntParam) -> int:
    return values(param)[-1]


Dropout = Annotated[FloatParam, floats("a dropout in [0, 1)", lambda p: 0 <= p < 1)]
Temperature = Annotated[FloatParam, floats("a temperature > 0", lambda t: t > 0)]
Alpha = Annotated[FloatParam, floats("an alpha in [0, 1] (the soft targets' weight)",
                                      lambda a: 0 <= a <= 1)]
