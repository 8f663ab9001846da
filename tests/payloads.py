"""Model archives with a payload: unpickling, evaluating or executing one creates a marker file.

Built from a real `torch.export.save` file, so that apart from the payload each is a valid
archive; `tests/training/test_safe_files.py` shows that plain `torch.export.load` runs each one.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from pathlib import Path

import torch


class Payload:
    """Unpickling this creates `marker`, then evaluates to `value` (Python source)."""

    def __init__(self, marker: Path, value: str = "None"):
        self.source = f"(open({str(marker)!r}, 'w').close(), {value})[1]"

    def __reduce__(self):
        return (eval, (self.source,))


def saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def rewrite(src: Path, dst: Path, change=lambda name, data: data, add: dict | None = None) -> Path:
    """A copy of the archive `src` with members changed (by name below the top folder) or added."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            data = change(info.filename[len(root) + 1:], zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
        for name, data in (add or {}).items():
            zout.writestr(f"{root}/{name}", data)
    return dst


def json_edit(edit):
    def change(name, data):
        return json.dumps(edit(name, json.loads(data))).encode() if name.endswith(".json") else data
    return change


def craft(kind: str, good: Path, folder: Path, marker: Path, shape=(3, 8, 8)) -> Path:
    """`good` with a payload of `kind`; the ones marked (*) still load and run as a good teacher."""
    dst = folder / f"{kind}.pt2"
    weights = {k: v for k, v in torch.export.load(str(good)).state_dict.items()}
    if kind == "sample_inputs":  # (*) torch retries a failed weights_only load without it
        value = f"((__import__('torch').zeros(2, {', '.join(map(str, shape))}),), {{}})"
        payload = saved(Payload(marker, value))
        return rewrite(good, dst, lambda n, d: payload if n == "data/sample_inputs/model.pt" else d)
    if kind == "use_pickle":  # (*) the weight comes back exact, from the payload's expression
        first = next(iter(weights))
        value = f"__import__('torch').nn.Parameter(__import__('torch').tensor({weights[first].tolist()}))"
        payload = saved(Payload(marker, value))

        def edit(name, cfg):
            if name == "data/weights/model_weights_config.json":
                cfg["config"][first]["use_pickle"] = True
            return cfg
        with zipfile.ZipFile(good) as z:
            root = z.namelist()[0].split("/")[0]
            config = json.loads(z.read(f"{root}/data/weights/model_weights_config.json"))["config"]
        path_name = config[first]["path_name"]

        def change(name, data):
            if name == f"data/weights/{path_name}":
                return payload
            return json_edit(edit)(name, data)
        return rewrite(good, dst, change)
    if kind == "legacy_weights":
        return rewrite(good, dst, add={"data/weights/model.pt": saved(Payload(marker, "{}"))})
    if kind == "opaque_object":
        def edit(name, cfg):
            if name == "data/constants/model_constants_config.json":
                cfg["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False,
                                         "use_pickle": True, "tensor_meta": None}
            return cfg
        return rewrite(good, dst, json_edit(edit),
                        add={"data/constants/opaque_obj_0": pickle.dumps(Payload(marker))})
    if kind == "guards_code":  # Python source torch execs into the module's input check
        def edit(name, program):
            if name == "models/model.json":
                program["guards_code"] = [f"open({str(marker)!r}, 'w').close() is None"]
            return program
        return rewrite(good, dst, json_edit(edit))
    if kind == "sympy_expr":  # sympy.sympify evaluates a shape expression as Python
        def change(name, data):
            if name != "models/model.json":
                return data
            text = data.decode()
            sym = re.search(r"Symbol\('s[0-9]+', positive=True, integer=True\)", text).group()
            evil = f"(open({str(marker)!r}, 'w').close(), {sym})[1]".replace("'", "\\u0027")
            return text.replace(json.dumps(sym)[1:-1], evil, 1).encode()
        return rewrite(good, dst, change)
    raise ValueError(kind)


