"""No model file runs code, and only regular files are read.

Each crafted archive below is a real `torch.export.save` file of a tiny model with one payload
added: unpickling, evaluating or executing it creates a marker file. A control test shows that
plain `torch.export.load` (and running the module) does run every payload, so the archives are
live; the tests after it show that kdsearch refuses each one in one line, the marker never
appearing, also for the archives that would otherwise load as a good teacher.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from kdsearch.errors import KdsearchError, TeacherFileError
from kdsearch.training import safe_files, safe_pt2
from kdsearch.training.teacher_file import TeacherFile, file_digest, load_teacher_file
from tests.helpers import kdsearch, study_text
from tests.payloads import Payload, craft, json_edit, rewrite, saved

SHAPE, CLASSES = (3, 8, 8), 3


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[Path, nn.Module]:
    """A plain torch.export.save file (sample inputs included) of a tiny 3-class model."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, CLASSES)).eval()
    path = tmp_path_factory.mktemp("pt2") / "good.pt2"
    program = torch.export.export(model, (torch.rand(2, *SHAPE),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return path, model


PAYLOADS = ["sample_inputs", "use_pickle", "legacy_weights", "opaque_object", "guards_code", "sympy_expr"]
GOOD_TEACHERS = ["sample_inputs", "use_pickle"]  # load and run as the model did, under torch alone


@pytest.fixture(scope="module")
def crafted(good, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("crafted")
    return {k: (craft(k, good[0], folder, folder / f"{k}.marker"), folder / f"{k}.marker")
            for k in PAYLOADS}


CONTROL = """
import json, sys, torch
out = {}
for path in sys.argv[1:]:
    try:
        y = torch.export.load(path).module()(torch.rand(4, 3, 8, 8))
        out[path] = list(y.shape)
    except Exception as e:
        out[path] = repr(e)[:200]
print(json.dumps(out))
"""


@pytest.mark.slow  # a process of plain torch: the control of the fast refusals below
def test_the_crafted_archives_run_their_payload_under_plain_torch_export_load(crafted, tmp_path):
    """Without kdsearch, each payload runs: the archives test what they claim to."""
    paths = [str(p) for p, _ in crafted.values()]
    proc = subprocess.run([sys.executable, "-c", CONTROL, *paths], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    for kind, (path, marker) in crafted.items():
        assert marker.exists(), f"{kind}: the payload did not run under torch.export.load ({loaded[str(path)]})"
        marker.unlink()
    for kind in GOOD_TEACHERS:  # and these load and run as a good teacher would
        assert loaded[str(crafted[kind][0])] == [4, CLASSES], loaded


@pytest.mark.parametrize("kind", PAYLOADS)
def test_each_payload_is_refused_in_one_line_and_never_runs(crafted, kind):
    path, marker = crafted[kind]
    marker.unlink(missing_ok=True)
    with pytest.raises(TeacherFileError) as e:
        teacher = load_teacher_file(TeacherFile(path), CLASSES, SHAPE)
        teacher(torch.zeros(2, *SHAPE, dtype=torch.uint8))  # a guard would run here
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "refused" in msg and "\n" not in msg, msg
    assert not marker.exists()


def test_a_good_export_loads_and_its_sample_inputs_are_never_unpickled(good, monkeypatch):
    path, model = good
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    teacher = load_teacher_file(TeacherFile(path, scale=1.0), CLASSES, SHAPE)
    x = torch.randint(0, 256, (5, *SHAPE), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), model(x.float()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("member", "data", "why"), [
    ("data/aotinductor/model/model.so", b"\x7fELF", "compiled native code"),
    ("data/constants/custom_obj_0", b"x", "a custom object"),
    ("data/executorch/x.pte", b"x", "an unknown payload"),
    ("code/__torch__/m.py", b"x", "not part of a torch.export.save archive"),
])
def test_members_outside_a_plain_archive_are_refused(good, tmp_path, member, data, why):
    path = rewrite(good[0], tmp_path / "m.pt2", add={member: data})
    with pytest.raises(KdsearchError, match=re.escape(f"member {member} ({why})")):
        safe_pt2.load_pt2(path, "model file")


@pytest.mark.parametrize("target", ["torch.load", "torch.serialization.os.system", "builtins.exec",
                                    "#ns:op", "torch.ops.aten.__class__.__init__"])
def test_a_graph_calling_anything_but_torch_operators_is_refused(good, tmp_path, target):
    def edit(name, program):
        if name == "models/model.json":
            program["graph_module"]["graph"]["nodes"][0]["target"] = target
        return program
    path = rewrite(good[0], tmp_path / "t.pt2", json_edit(edit))
    with pytest.raises(KdsearchError, match="is not a torch operator"):
        safe_pt2.load_pt2(path, "model file")


def test_shape_expressions_pass_only_in_srepr_syntax():
    ok = ["Symbol('s31', positive=True, integer=True)", "Add(Mul(Integer(2), Symbol('s3', "
          "positive=True, integer=True)), Integer(1))", "Max(Integer(2), Symbol('u0', integer=True))",
          "Float('2.5', precision=53)", "FloorDiv(Symbol('s0', integer=True), Integer(2))"]
    bad = ["__import__('os').system('true')", "open('x', 'w')", "Symbol('s0').func", "s0.__class__",
           "Integer(1)[0]", "eval(chr(49))", "Symbol('__import__')", "lambda: 1", "Integer(1); 2"]
    assert all(safe_pt2._safe_sympy(s) for s in ok)
    assert not any(safe_pt2._safe_sympy(s) for s in bad)


def test_pickle_globals_are_read_not_run(tmp_path):
    marker = tmp_path / "m"
    for protocol in (2, 4, 5):
        names = safe_files.pickle_globals(pickle.dumps(Payload(marker), protocol=protocol))
        assert names[-1] in (("builtins", "eval"), ("__builtin__", "eval"))  # protocol 2 says __builtin__
    assert not marker.exists()
    state = saved({"w": torch.ones(2), "n": torch.tensor(3)})
    safe_files.check_tensor_archive(state, "x", KdsearchError)
    with pytest.raises(KdsearchError, match="it would import __builtin__.eval"):
        safe_files.check_tensor_archive(saved({"w": Payload(marker)}), "x", KdsearchError)
    assert not marker.exists()


def test_a_state_dict_with_a_payload_is_refused_before_torch_load(tmp_path, monkeypatch):
    marker = tmp_path / "m"
    path = tmp_path / "weights.pt"
    path.write_bytes(saved({"w": Payload(marker, "__import__('torch').ones(1)")}))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(KdsearchError, match="refused: it would import __builtin__.eval"):
        safe_files.load_state_dict(path, "model file")
    assert not marker.exists()


def test_kdsearch_own_pt2_has_nothing_pickled(good, tmp_path):
    from kdsearch.compress.folder import export_pt2

    path = tmp_path / "own.pt2"
    assert export_pt2(good[1], SHAPE, path) is None
    with zipfile.ZipFile(path) as z:
        sizes = {i.filename.split("/", 1)[1]: i.file_size for i in z.infolist()}
    assert sizes["data/sample_inputs/model.pt"] == 0
    root, has_sample = safe_pt2.check_pt2(path.read_bytes(), str(path))
    assert not has_sample


# --- only regular files --------------------------------------------------------------------


@pytest.fixture
def not_regular(tmp_path) -> dict[str, Path]:
    fifo = tmp_path / "teacher.pt2"
    os.mkfifo(fifo)
    link = tmp_path / "zero.onnx"
    link.symlink_to("/dev/zero")
    return {"a FIFO": fifo, "a character device": Path("/dev/zero"), "a link to a device": link}


@pytest.mark.timeout(120)
def test_fifos_devices_and_links_to_them_are_refused_before_they_are_opened(not_regular, tmp_path):
    readers = (file_digest, lambda p: TeacherFile(p).identity(),
               lambda p: load_teacher_file(TeacherFile(p), CLASSES, SHAPE),
               lambda p: load_teacher_file(TeacherFile(p, torchvision="resnet18"), CLASSES, SHAPE),
               lambda p: safe_files.load_state_dict(p, "model file", TeacherFileError),
               lambda p: safe_pt2.load_pt2(p, "model file", TeacherFileError))
    for kind, path in not_regular.items():
        want = "a FIFO" if kind == "a FIFO" else "a character device"
        for read in readers:
            with pytest.raises(TeacherFileError, match=f"^{re.escape(str(path))}: {want}, not a regular file"):
                read(path)


@pytest.mark.timeout(120)
def test_an_image_folder_with_a_fifo_is_refused(tmp_path):
    import numpy as np
    from PIL import Image

    from kdsearch.errors import DataError
    from kdsearch.spec import DataSpec
    from kdsearch.training.data import load_data

    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    os.mkfifo(tmp_path / "train" / "a" / "9.png")
    with pytest.raises(DataError, match=r"9\.png: a FIFO, not a regular file"):
        load_data(DataSpec(dataset="imagefolder", path=str(tmp_path), val_size=1))


def _teacher_study(file: Path) -> str:
    """A one-trial study whose teacher is `file`."""
    return study_text(
        description="a teacher file route",
        data='dataset = "synthetic"\nval_size = 50\nsynthetic = { n_train = 100, n_test = 50, '
             "channels = 3, height = 8, width = 8, num_classes = 3 }",
        teacher=f'file = "{file}"', teacher_train=None, teacher_input="scale = 1.0",
        student='family = "mlp"\ndepth = 1\nwidth = 4', student_train="epochs = 1",
        search="n_trials = 1")


def _one_line(proc, path: Path) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower() or "warn" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith("kdsearch: error:"), proc.stderr
    assert str(path) in errors[0]
    return errors[0]


@pytest.mark.slow  # CLI processes; the loader refuses the same files in process above
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("command", "kind"), [("teacher", "sample_inputs"), ("run-study", "use_pickle")])
def test_the_cli_refuses_a_payload_teacher_that_would_load_as_a_good_one(crafted, tmp_path, command, kind):
    path, marker = crafted[kind]
    marker.unlink(missing_ok=True)
    study = tmp_path / "byo.toml"
    study.write_text(_teacher_study(path))
    extra = ["--storage", f"sqlite:///{tmp_path / 's.db'}"] if command == "run-study" else []
    proc = kdsearch(command, str(study), "--cache-dir", str(tmp_path / "c"), *extra, check=False)
    assert "refused" in _one_line(proc, path)
    assert not marker.exists()


@pytest.mark.slow  # a CLI process; the readers refuse a FIFO in process above
@pytest.mark.timeout(300)
def test_the_cli_refuses_a_fifo_teacher_without_hanging(tmp_path):
    fifo = tmp_path / "teacher.pt2"
    os.mkfifo(fifo)
    study = tmp_path / "byo.toml"
    study.write_text(_teacher_study(fifo))
    proc = kdsearch("teacher", str(study), "--cache-dir", str(tmp_path / "c"), check=False, timeout=240)
    assert "a FIFO, not a regular file" in _one_line(proc, fifo)
