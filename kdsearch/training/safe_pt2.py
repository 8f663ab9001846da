"""`torch.export` archives (`.pt2`) that may come from anyone, loaded without running their code.

`torch.export.load` unpickles parts of a `.pt2` with `weights_only=False` (sample inputs when
the safe load fails, weights and constants marked `use_pickle`, legacy `data/weights/<model>.pt`
files, custom objects), passes shape expressions to `sympy.sympify` (which evaluates them as
Python) and `exec`s the archive's `guards_code` when the module is built. So the archive is read
into memory (once: the bytes checked are the bytes loaded) and inspected as a zip first: only
members of a plain `torch.export.save` archive, tensors stored raw, operator targets that
resolve to torch operators, shape expressions in `srepr` syntax and no guard code pass. The
sample inputs, which a model does not need to run, are blanked before torch sees the bytes, so
nothing in a `.pt2` is unpickled at all.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import operator
import re
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from kdsearch.errors import KdsearchError, one_line
from kdsearch.training.safe_files import Error, check_tensor_archive, first_line, one_root, open_zip, read_regular

# --- torch.export archives ----------------------------------------------------------------

MODEL = "model"  # the one program torch.export.save writes and torch.export.load returns
_PT2_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version",
              ".data/serialization_id", f"models/{MODEL}.json",
              f"data/weights/{MODEL}_weights_config.json",
              f"data/constants/{MODEL}_constants_config.json", f"data/sample_inputs/{MODEL}.pt"}
_PT2_RAW = {"data/weights/": "weight_", "data/constants/": "tensor_"}
_PT2_WHY = [("data/weights/", "a legacy pickled weights file" ),
            ("data/constants/custom_obj_", "a custom object"),
            ("data/constants/opaque_obj_", "a pickled Python object"),
            ("data/constants/", "a legacy pickled constants file"),
            ("data/aotinductor/", "compiled native code"), ("data/", "an unknown payload")]

# Operators a graph may call besides torch's registered ones: what torch's serialiser writes
# for symbolic shape arithmetic (its _SYM_OPS) and tuple indexing.
_SYM_OPS = {operator.eq, operator.ne, operator.le, operator.ge, operator.lt, operator.gt,
            operator.neg, operator.pos, math.trunc, torch.sym_not, operator.mul, operator.add,
            operator.sub, operator.floordiv, operator.mod, operator.pow, torch.sym_int,
            torch.sym_float, torch.sym_ite, torch.sym_max, torch.sym_min, torch.sym_sqrt,
            operator.truediv, operator.and_, operator.or_, operator.lshift, operator.rshift,
            operator.getitem}

# Shape expressions are sympy `srepr` text, which `sympy.sympify` evaluates as Python: only
# sympy's and torch's shape functions, symbols, numbers and their assumptions may appear.
_SYMPY_NAMES = frozenset("""
Add Mul Pow Integer Rational Float Symbol Max Min Equality Unequality StrictLessThan LessThan
StrictGreaterThan GreaterThan Eq Ne Lt Le Gt Ge And Or Not Xor BooleanTrue BooleanFalse true false
Mod floor ceiling Abs Piecewise ExprCondPair Infinity NegativeInfinity oo zoo nan NaN One Zero
NegativeOne Half int_oo IntInfinity NegativeIntInfinity FloorDiv ModularIndexing Where PythonMod
CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift PowByNatural FloatPow FloatTrueDiv IntTrueDiv
IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat Identity
BitwiseFn_bitwise_and BitwiseFn_bitwise_or OpaqueUnaryFn_sqrt OpaqueUnaryFn_exp OpaqueUnaryFn_log
True False positive negative nonnegative nonpositive integer real finite infinite zero nonzero
commutative even odd rational precision
""".split())
_SYMPY_TOKEN = re.compile(r"\s+|'[A-Za-z]{0,4}[0-9]{0,12}'|'[-+0-9.e]{1,40}'"
                          r"|[0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?|[A-Za-z_][A-Za-z_0-9]*|[-+*/(),=]")


def _safe_sympy(text: str) -> bool:
    pos = 0
    while pos < len(text):
        m = _SYMPY_TOKEN.match(text, pos)
        if m is None:
            return False
        tok = m.group()
        if (tok[0].isalpha() or tok[0] == "_") and tok not in _SYMPY_NAMES:
            return False
        pos = m.end()
    return True


def _operator_ok(target: str) -> bool:
    """Mirrors torch's `deserialize_operator`: what the name resolves to must be an operator."""
    import torch._ops as ops

    if target.startswith("_operator"):
        obj: Any = operator
    elif target.startswith("torch"):
        obj = torch
    elif target.startswith("math"):
        obj = math
    else:  # "#namespace:op" extension operators, or a bare string torch keeps as the target
        return False
    for part in target.split(".")[1:]:
        if part.startswith("__") or not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    if isinstance(obj, (ops.OpOverload, ops.OpOverloadPacket, ops.HigherOrderOperator)):
        return True
    try:
        return obj in _SYM_OPS
    except TypeError:  # unhashable
        return False


def _walk(node: Any) -> Iterator[tuple[str | None, Any, Any]]:
    """(key, value, parent) for every dict entry and list item of a JSON tree."""
    stack = [node]
    while stack:
        cur = stack.pop()
        items = cur.items() if isinstance(cur, dict) else enumerate(cur) if isinstance(cur, list) else ()
        for k, v in items:
            yield (k if isinstance(k, str) else None), v, cur
            if isinstance(v, (dict, list)):
                stack.append(v)


def _check_program_json(text: bytes, where: str, error: Error) -> None:
    try:
        program = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise error(f"{where}: refused: models/{MODEL}.json is not JSON") from None
    if not isinstance(program, dict):
        raise error(f"{where}: refused: models/{MODEL}.json is not a torch.export program")
    if program.get("guards_code"):
        raise error(one_line(f"{where}: refused: it carries guard code (Python source torch would "
                             f"run at load): {str(program['guards_code'])[:80]}"))
    for key, value, parent in _walk(program):
        if key == "target" and isinstance(parent, dict) and "inputs" in parent:
            if not isinstance(value, str) or not _operator_ok(value):
                raise error(one_line(f"{where}: refused: the graph calls {str(value)[:80]!r}, which "
                                     "is not a torch operator"))
        elif key == "expr_str" and (not isinstance(value, str) or not _safe_sympy(value)):
            raise error(one_line(f"{where}: refused: a shape expression that is not sympy "
                                 f"syntax: {str(value)[:80]!r}"))
        elif key in ("as_string", "as_custom_obj", "custom_obj") and parent is not program:
            if key != "as_string" or _graph_input(parent, program):
                raise error(f"{where}: refused: a {key.removeprefix('as_').replace('_', ' ')} "
                            "among the program's inputs or values")
        elif key in ("min_val", "max_val") and value is not None and type(value) is not int:
            raise error(one_line(f"{where}: refused: a range bound {value!r} that is not an integer"))


def _graph_input(arg: Any, program: dict) -> bool:
    """Whether `arg` is one of the top graph's inputs: a string input becomes guard code."""
    try:
        return any(a is arg for a in program["graph_module"]["graph"]["inputs"])
    except (KeyError, TypeError):
        return False


def check_pt2(data: bytes, where: str, error: Error = KdsearchError) -> tuple[str, bool]:
    """Refuse a `.pt2` whose loading would unpickle, import, evaluate or exec anything.

    Returns the archive's top folder and whether it holds sample inputs (to be blanked).
    """
    z = open_zip(data, where, error, "a torch.export archive")
    root, names = one_root(z, where, error)
    if "archive_format" not in names:
        raise error(f"{where}: refused: not a torch.export.save archive (no archive_format); "
                    "the pre-2.8 format pickles its weights")
    members = set(names)
    for name in names:
        if name in _PT2_FIXED or name.startswith("extra/"):
            continue
        raw = next((p for d, p in _PT2_RAW.items() if name.startswith(d)), None)
        if raw and re.fullmatch(rf"{raw}[0-9]+", name.rsplit("/", 1)[1]):
            continue
        why = next(w for p, w in _PT2_WHY if name.startswith(p)) if name.startswith("data/") \
            else "not part of a torch.export.save archive"
        raise error(one_line(f"{where}: refused: member {name} ({why})"))
    if f"models/{MODEL}.json" not in members:
        raise error(f"{where}: does not load as a torch.export program (no models/{MODEL}.json)")
    for cfg, prefix in ((f"data/weights/{MODEL}_weights_config.json", "weight_"),
                        (f"data/constants/{MODEL}_constants_config.json", "tensor_")):
        if cfg not in members:
            continue
        try:
            config = json.loads(z.read(f"{root}/{cfg}"))["config"]
            entries = list(config.items())
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise error(f"{where}: refused: {cfg} is not a payload config") from None
        folder = cfg.rsplit("/", 1)[0]
        for fqn, meta in entries:
            ok = (isinstance(meta, dict) and meta.get("use_pickle") is False
                  and isinstance(meta.get("path_name"), str)
                  and re.fullmatch(rf"{prefix}[0-9]+", meta["path_name"]) is not None
                  and f"{folder}/{meta['path_name']}" in members and meta.get("tensor_meta"))
            if not ok:
                what = "pickled" if isinstance(meta, dict) and meta.get("use_pickle") else "not a raw tensor"
                raise error(one_line(f"{where}: refused: {cfg} entry {str(fqn)[:60]!r} is {what}"))
    _check_program_json(z.read(f"{root}/models/{MODEL}.json"), where, error)
    sample = f"data/sample_inputs/{MODEL}.pt"
    has_sample = sample in members and z.getinfo(f"{root}/{sample}").file_size > 0
    if has_sample:  # blanked before loading; still, anything but tensors is a sign of a payload
        check_tensor_archive(z.read(f"{root}/{sample}"), where, error, f"member {sample}")
    return root, has_sample


def _blank_sample_inputs(data: bytes, root: str) -> bytes:
    """The archive with its sample inputs emptied: torch then deserialises none (they only
    document how the program was traced, and are a pickle)."""
    sample = f"{root}/data/sample_inputs/{MODEL}.pt"
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, b"" if info.filename == sample else src.read(info))
    return out.getvalue()


@contextlib.contextmanager
def quiet_torch_logs() -> Iterator[None]:
    """torch.export logs warnings (with tracebacks) on a bad archive; kdsearch says it in one line."""
    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._export", "torch._export.serde")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def load_pt2(path: Path, what: str, error: Error = KdsearchError):
    """`torch.export.load` of a checked archive, from the bytes that were checked."""
    data = read_regular(path, what, error)
    root, has_sample = check_pt2(data, str(path), error)
    if has_sample:
        data = _blank_sample_inputs(data, root)
    try:
        with quiet_torch_logs():
            return torch.export.load(io.BytesIO(data))
    except Exception as e:
        raise error(one_line(f"{path}: does not load as a torch.export program: {first_line(e)}")) from None


def save_pt2(program, path: Path) -> None:
    """`torch.export.save` without sample inputs: the file holds the program and its weights only,
    nothing pickled, so it passes `check_pt2` (and never ships the data it was traced on)."""
    program.example_inputs = None
    torch.export.save(program, str(path))
