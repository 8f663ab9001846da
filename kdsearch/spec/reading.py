"""From a TOML document to the tables' shape, and from pydantic's errors to one line.

The file's layout reads well (`[teacher.train]`, `max_params` beside the student's space);
the models' layout validates well (`teacher_train`, `student.space`). `reshape` maps the first
onto the second; `one_line` maps an error's location back onto the keys the user wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kdsearch.errors import StudyFileError
from kdsearch.spec.params import describe_found


def reshape(raw: dict[str, Any], text: str, path: Path) -> dict[str, Any]:
    """A TOML document as `StudySpec` takes it; refuses what only the file's layout can say."""
    raw.setdefault("name", path.stem)
    teacher = raw.get("teacher")
    if isinstance(teacher, dict) and "train" in teacher:
        teacher = dict(teacher)
        raw["teacher_train"] = teacher.pop("train")
        raw["teacher"] = teacher
    if isinstance(teacher, dict) and ("file" in teacher or "torchvision" in teacher):
        if "teacher_train" in raw:
            raise StudyFileError(f"{path}: key 'teacher.train': expected no training recipe for "
                                 "a teacher from a file (kdsearch runs it as it is), found one")
        raw["teacher_file"] = raw.pop("teacher")
    student = raw.get("student")
    if isinstance(student, dict):
        student = dict(student)
        nested = {k: student.pop(k) for k in ("train", "max_params", "max_macs", "max_latency_ms")
                  if k in student}
        raw["student"] = {"space": student, **nested}
    if "source" in raw:
        raise StudyFileError(f"{path}: key 'source': expected no such key, found "
                             f"{describe_found(raw['source'])}")
    raw["source"] = text
    return raw


_PARAM_MEMBERS = {"int", "float", "str", "IntRange", "FloatRange", "IntChoices", "FloatChoices",
                  "StrChoices"}
_UNION_MEMBERS = _PARAM_MEMBERS | {"MLPArch", "CNNArch", "MLPSpace", "CNNSpace"}
# pydantic names the member of a family union by its tag, right after the union's own key
_FAMILY_TAGS = {"mlp", "cnn", "resnet", "mobilenet", "choice"}
_FAMILY_UNIONS = {"teacher", "space"}
_FAMILIES = "'mlp', 'cnn', 'resnet', 'mobilenet'"
# What each of pydantic's type errors expected, in TOML's words (strict: nothing is converted)
_TYPE_WORDS = {"int_type": "a whole number", "int_parsing": "a whole number",
               "int_from_float": "a whole number", "float_type": "a number",
               "float_parsing": "a number", "bool_type": "true or false",
               "bool_parsing": "true or false", "string_type": "a string", "list_type": "a list",
               "model_type": "a table", "model_attributes_type": "a table", "dict_type": "a table",
               "none_required": "nothing"}
_TYPE_ERRORS = set(_TYPE_WORDS)


def one_line_error(path: Path, err: ValidationError) -> str:
    """The most telling of pydantic's errors, as 'file: key 'a.b': expected X, found Y'."""
    errors = err.errors()
    specific = [e for e in errors if e["type"] not in _TYPE_ERRORS]
    first = specific[0] if specific else errors[0]
    key = _key(first["loc"])
    found = describe_found(first.get("input"))
    kind = first["type"]
    if kind == "kdsearch":
        ctx = first["ctx"]
        key = f"{key}.{ctx['key']}" if ctx["key"] else key
        key = key.replace("(top level).", "").replace("teacher_train", "teacher.train")
        return f"{path}: key '{key}': expected {ctx['expected']}, found {ctx['found']}"
    if kind == "missing":
        return f"{path}: key '{key}': expected a value, found nothing (the key is required)"
    if kind == "extra_forbidden":
        return f"{path}: key '{key}': expected no such key, found {found}"
    if kind == "union_tag_invalid":
        ctx = first.get("ctx", {})
        expected = _FAMILIES + (" or { choices = [..] } of 'resnet' and 'mobilenet'"
                                if key == "student" else "")
        given = first["input"].get("family") if isinstance(first["input"], dict) else ctx.get("tag")
        return f"{path}: key '{key}.family': expected one of {expected}, found {describe_found(given)}"
    if kind == "union_tag_not_found":
        other = " (or file = PATH for a teacher you have)" if key == "teacher" else ""
        return f"{path}: key '{key}.family': expected one of {_FAMILIES}{other}, found nothing"
    if kind in _TYPE_WORDS:
        # a value of a union (`int | float | str`) fails once per member, all at the same key
        words = [_TYPE_WORDS[e["type"]] for e in errors
                 if e["type"] in _TYPE_WORDS and _key(e["loc"]) == key]
        expected = list(dict.fromkeys(words))
        expected = ", ".join(expected[:-1]) + " or " + expected[-1] if len(expected) > 1 else words[0]
        return f"{path}: key '{key}': expected {expected}, found {found}"
    msg = first["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
    msg = msg.removeprefix("input should be ")
    return f"{path}: key '{key}': expected {msg[0].lower() + msg[1:]}, found {found}"


def _key(raw: tuple[int | str, ...]) -> str:
    """The key the user wrote, from where pydantic met the error."""
    raw_loc = [str(p) for p in raw]
    # pydantic names union members by type ("int", "IntRange") or tag; the user wrote none of them.
    loc = [p for i, p in enumerate(raw_loc)
           if p not in _UNION_MEMBERS and not p.startswith("function-")
           and not (p in _FAMILY_TAGS and i > 0 and raw_loc[i - 1] in _FAMILY_UNIONS)]
    key = ".".join(loc).replace("teacher_train", "teacher.train").replace("student.space", "student")
    key = key.replace("teacher_file", "teacher")
    return key or "(top level)"
