"""Reading model, weight and data files that may come from anyone, without running their code.

Two rules, one place:

- Only regular files are read. A FIFO, a device or a link to one would block a read (or never
  end one) before any format check could speak, so `os.stat` is asked first, and the file is
  opened non-blocking and asked again (`fstat`), so a swap between the two cannot hang either.
- Nothing is unpickled that could name a Python callable. State dicts (`model.pt`,
  torchvision weights) and TorchScript archives have their `data.pkl` read opcode by opcode
  (never executed) for the globals it names, then load through `torch.load(weights_only=True)`
  and `torch.jit.load`, from the same bytes, so the file cannot change in between.
  `torch.export` archives (`.pt2`) are inspected in `safe_pt2`.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickletools
import re
import stat
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from kdsearch.errors import KdsearchError, one_line

Error = type[KdsearchError]

# --- regular files ------------------------------------------------------------------------

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a folder"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def require_regular(path: Path, what: str, error: Error = KdsearchError) -> os.stat_result:
    """`os.stat` of `path` (links followed), refused unless it is a regular file."""
    try:
        st = os.stat(path)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
        raise error(one_line(f"{path}: cannot read {what}: "
                             f"{getattr(e, 'strerror', None) or e}")) from None
    if not stat.S_ISREG(st.st_mode):
        raise error(one_line(f"{path}: {_kind(st.st_mode)}, not a regular file; kdsearch reads "
                             f"a {what} only from a regular file"))
    return st


@contextlib.contextmanager
def open_regular(path: Path, what: str, error: Error = KdsearchError) -> Iterator[io.BufferedReader]:
    """A regular file opened for reading, checked again on the open descriptor."""
    require_regular(path, what, error)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(one_line(f"{path}: cannot read {what}: {e.strerror or e}")) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):  # replaced between the two checks
        os.close(fd)
        raise error(one_line(f"{path}: {_kind(mode)}, not a regular file; kdsearch reads "
                             f"a {what} only from a regular file"))
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as f:
        yield f


def read_regular(path: Path, what: str, error: Error = KdsearchError) -> bytes:
    with open_regular(path, what, error) as f:
        try:
            return f.read()
        except OSError as e:
            raise error(one_line(f"{path}: cannot read {what}: {e.strerror or e}")) from None


# --- pickles, read without running them ---------------------------------------------------

_DTYPES = frozenset(n for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype))
TENSOR_GLOBALS = frozenset({
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("torch", "Size"), ("torch", "device"),
})


def tensor_global(module: str, name: str) -> bool:
    """What a `torch.save` of tensors and dicts of them names: rebuild functions, storages."""
    return ((module, name) in TENSOR_GLOBALS
            or (module == "torch" and (name in _DTYPES or re.fullmatch(r"[A-Z][A-Za-z]*Storage", name)
                                       is not None)))


def torchscript_global(module: str, name: str) -> bool:
    """A TorchScript archive's `data.pkl` names its own scripted classes (resolved from its
    `code/`, in C++) and TorchScript's list builders, besides tensors."""
    return tensor_global(module, name) or module.startswith("__torch__.") or module == "torch.jit._pickle"


def pickle_globals(data: bytes) -> list[tuple[str, str]]:
    """The (module, name) pairs a pickle would import, read from its opcodes, never executed.

    Raises ValueError for a malformed pickle and for a global whose name is computed on the
    stack in a way not followed here (STACK_GLOBAL is followed through string pushes and the
    memo; INST, OBJ and the extension registry are refused outright).
    """
    found: list[tuple[str, str]] = []
    recent: list[Any] = []  # the values of the latest pushes, where they are strings
    memo: dict[int, Any] = {}
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            found.append((module, attr))
            recent.append(None)
        elif name == "STACK_GLOBAL":
            if len(recent) < 2 or not all(isinstance(v, str) for v in recent[-2:]):
                raise ValueError("a global named by a computed string")
            found.append((recent[-2], recent[-1]))
            recent[-2:] = [None]
        elif name in ("INST", "OBJ", "EXT1", "EXT2", "EXT4"):
            raise ValueError(f"opcode {name}")
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            recent.append(arg)
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = recent[-1] if recent else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            recent.append(memo.get(int(arg)))
        else:
            recent.append(None)
        del recent[:-4]
    return found


def check_pickle(data: bytes, allowed, where: str, error: Error, member: str = "it") -> None:
    """Refuse a pickle that names a global `allowed(module, name)` does not accept."""
    try:
        names = pickle_globals(data)
    except Exception as e:  # pickletools' ValueError, or anything a crafted stream provokes
        raise error(one_line(f"{where}: refused: {member} is not a pickle of tensors ({e})")) from None
    bad = next(((m, n) for m, n in names if not allowed(m, n)), None)
    if bad is not None:
        raise error(one_line(f"{where}: refused: {member} would import {bad[0]}.{bad[1]} when "
                             "unpickled; kdsearch loads tensors only and never runs a file's code"))


def one_root(z: zipfile.ZipFile, where: str, error: Error) -> tuple[str, list[str]]:
    """The archive's single top folder and its member names below it."""
    names = z.namelist()
    roots = {n.partition("/")[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise error(one_line(f"{where}: refused: not a torch archive (its members are not under "
                             "one folder)"))
    root = roots.pop()
    return root, [n[len(root) + 1:] for n in names]


def open_zip(data: bytes, where: str, error: Error, what: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError):
        raise error(one_line(f"{where}: not {what} (not a zip archive)")) from None


def check_tensor_archive(data: bytes, where: str, error: Error, member: str = "it") -> None:
    """A `torch.save` zip of tensors, dicts and numbers: refused if its pickle names anything else."""
    z = open_zip(data, where, error, "a torch.save file")
    root, names = one_root(z, where, error)
    if "data.pkl" not in names:
        raise error(f"{where}: refused: {member} is not a torch.save archive (no data.pkl)")
    check_pickle(z.read(f"{root}/data.pkl"), tensor_global, where, error, member)


def load_state_dict(path: Path, what: str, error: Error = KdsearchError) -> Any:
    """`torch.load(weights_only=True)` of a checked file, from the bytes that were checked."""
    data = read_regular(path, what, error)
    if zipfile.is_zipfile(io.BytesIO(data)):
        check_tensor_archive(data, str(path), error)
    # else: torch's legacy (pre-1.6) format, which weights_only reads with the same restriction
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise error(one_line(f"{path}: does not load as a state dict: {first_line(e)}")) from None


def load_torchscript(path: Path, what: str, error: Error = KdsearchError,
                     map_location: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """`torch.jit.load` of a file that is a TorchScript archive (code/ and a data.pkl that
    names only scripted classes and tensors), from the bytes that were checked."""
    data = read_regular(path, what, error)
    where = f"{path}: does not load as TorchScript"
    z = open_zip(data, where, error, "a TorchScript archive")
    root, names = one_root(z, where, error)
    if "data.pkl" not in names or not any(n.startswith("code/") for n in names):
        raise error(f"{where}: not a TorchScript archive (no code/ and data.pkl)")
    for pkl in ("data.pkl", "constants.pkl"):
        if pkl in names:
            check_pickle(z.read(f"{root}/{pkl}"), torchscript_global, where, error, pkl)
    with warnings.catch_warnings():  # torch.jit is deprecated; a user's file is still valid
        warnings.simplefilter("ignore")
        return torch.jit.load(io.BytesIO(data), map_location=map_location)


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= 240 else text[:237] + "..."
