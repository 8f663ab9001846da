"""One loader per teacher-file format: TorchScript, `torch.export`, ONNX, torchvision weights.

Each takes the `TeacherFile`, the data's classes and image shape and the device, and returns
(forward on prepared inputs, the fixed batch size the file declares or None). Model files are
read through `safe_files` / `safe_pt2`, which refuse anything that would run the file's code.
"""

from __future__ import annotations

import torch

from kdsearch.errors import TeacherFileError, one_line
from kdsearch.training import safe_files, safe_pt2


def describe(e: BaseException) -> str:
    """A foreign error as one short phrase: its type and first non-empty line.

    The TorchScript interpreter puts a traceback of the scripted code first and the error
    ("RuntimeError: Given groups=1, weight of size ...") last: that last line is taken.
    """
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        text = lines[-1]
    else:
        text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def describe_onnx(e: BaseException) -> str:
    """ONNX Runtime puts the useful part ("index: 1 Got: 8 Expected: 3") on the lines after
    the first, so its lines are joined rather than cut."""
    text = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
    text = text.replace("[ONNXRuntimeError] : ", "")
    return text if len(text) <= 300 else text[:297] + "..."


# --- one loader per format: each returns (forward on prepared inputs, fixed batch or None) ---


def _expected_dims(layout: str, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    c, h, w = input_shape
    return (c, h, w) if layout == "NCHW" else (h, w, c)


def _check_declared_shape(tf, declared: list, input_shape: tuple[int, int, int]) -> int | None:
    """Compare the input shape a graph declares with what kdsearch will feed; return its
    fixed batch size, if any. Named or unknown dimensions (str, None, symbolic) match anything."""
    given = _expected_dims(tf.layout, input_shape)
    shown = "(N, " + ", ".join(map(str, given)) + ")"
    expects = "(" + ", ".join(str(d) if isinstance(d, int) else "N" if i == 0 else "?"
                              for i, d in enumerate(declared)) + ")"
    if len(declared) != 4:
        raise TeacherFileError(f"{tf.path}: expects input of shape {expects}, given {shown} ({tf.layout}): "
                               f"kdsearch feeds a batch of images")

    def fits(dims: tuple[int, int, int]) -> bool:
        return all(not isinstance(d, int) or d == g for d, g in zip(declared[1:], dims, strict=True))

    if not fits(given):
        hint = ""
        other = "NHWC" if tf.layout == "NCHW" else "NCHW"
        if fits(_expected_dims(other, input_shape)):
            hint = f"; an {other} model? set layout = \"{other}\""
        raise TeacherFileError(f"{tf.path}: expects input of shape {expects}, given {shown} ({tf.layout}){hint}")
    return declared[0] if isinstance(declared[0], int) and declared[0] > 0 else None


def load_torchscript(tf, num_classes, input_shape, device):
    try:
        module = safe_files.load_torchscript(tf.path, "teacher file", TeacherFileError, map_location=device)
        module.eval()
    except TeacherFileError:
        raise
    except Exception as e:
        raise TeacherFileError(one_line(f"{tf.path}: does not load as TorchScript: {describe(e)}")) from None
    return module, None


def load_export(tf, num_classes, input_shape, device):
    program = safe_pt2.load_pt2(tf.path, "teacher file", TeacherFileError)
    try:
        with safe_pt2.quiet_torch_logs():
            module = program.module().to(device)  # train/eval mode was fixed at export: no .eval()
    except Exception as e:
        raise TeacherFileError(one_line(f"{tf.path}: does not load as a torch.export program: "
                                        f"{describe(e)}")) from None
    names = program.graph_signature.user_inputs
    if len(names) != 1:
        raise TeacherFileError(f"{tf.path}: takes {len(names)} inputs, kdsearch feeds one batch of images")
    node = next((n for n in program.graph.nodes if n.op == "placeholder" and n.name == names[0]), None)
    val = node.meta.get("val") if node is not None else None
    fixed = None
    if isinstance(val, torch.Tensor):
        # Static sizes are ints; dynamic ones (torch.export.Dim) are SymInts and match anything.
        fixed = _check_declared_shape(tf, [d if type(d) is int else None for d in val.shape], input_shape)
    return module, fixed


_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16"}


def load_onnx(tf, num_classes, input_shape, device):
    try:
        import onnxruntime  # noqa: F401  (a missing ORT is named here, in the teacher's words)
    except ImportError:
        raise TeacherFileError(f"{tf.path}: an ONNX teacher needs ONNX Runtime: pip install onnxruntime") from None
    from kdsearch.training.latency import onnx_session

    try:
        session = onnx_session(tf.path, device)
    except Exception as e:
        raise TeacherFileError(one_line(f"{tf.path}: does not load as ONNX: {describe_onnx(e)}")) from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise TeacherFileError(f"{tf.path}: takes {len(inputs)} inputs ({names}), kdsearch feeds one batch of images")
    inp = inputs[0]
    dtype = _ONNX_DTYPES.get(inp.type)
    if dtype is None:
        raise TeacherFileError(f"{tf.path}: expects {inp.type} input, kdsearch feeds float tensors "
                               f"(re-export the model with a float input)")
    fixed = _check_declared_shape(tf, list(inp.shape), input_shape)
    output = session.get_outputs()[0].name

    def forward(x: torch.Tensor) -> torch.Tensor:
        (out,) = session.run([output], {inp.name: x.cpu().numpy().astype(dtype, copy=False)})
        return torch.from_numpy(out)

    return forward, fixed


def load_torchvision(tf, num_classes, input_shape, device):
    import torchvision

    try:
        model = torchvision.models.get_model(tf.torchvision, num_classes=num_classes)
    except Exception as e:
        raise TeacherFileError(one_line(f"{tf.path}: torchvision model {tf.torchvision!r} with {num_classes} "
                                        f"classes cannot be built: {describe(e)}")) from None
    state = safe_files.load_state_dict(tf.path, "teacher weights file", TeacherFileError)
    # Training scripts often wrap the state dict or save it from DataParallel.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TeacherFileError(f"{tf.path}: expected a state dict of tensors, found {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    problems = [f"{k} is {tuple(v.shape)} in the weights, {tuple(own[k].shape)} in the model"
                for k, v in state.items() if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        problems.append(f"{len(missing)} missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected "
                        f"({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})")
    if problems:
        raise TeacherFileError(one_line(f"{tf.path}: weights do not fit torchvision {tf.torchvision} with "
                                        f"{num_classes} classes: {'; '.join(problems[:4])}"))
    model.load_state_dict(state)
    return model.to(device).eval(), None
