"""Latency at batch 1: the median's interval by hand, and what a measurement leaves behind.

No test compares a latency with a threshold: timings are measured, never asserted.
"""

from __future__ import annotations

import torch

from kdsearch.architecture import MLPArch
from kdsearch.training.latency import MIN_REPEATS, measure_latency, median_interval, ort_providers
from kdsearch.training.models import build_model


def test_median_interval_by_order_statistics():
    # n = 100: ranks 50 -/+ 1.96 * 10 / 2 = 9.8 -> the 40th and 60th values (0-based)
    times = [float(i) for i in range(100)]
    assert median_interval(times) == (40.0, 60.0)
    assert median_interval(list(reversed(times))) == (40.0, 60.0)  # order of arrival is moot
    assert median_interval([5.0] * 30) == (5.0, 5.0)


def test_measure_latency_records_its_method_and_leaves_the_model_and_rng_as_they_were():
    model = build_model(MLPArch(hidden=[8]), (1, 8, 8), 3, (0.5,), (0.25,))
    model.train()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    timed = measure_latency(model, (1, 8, 8), torch.device("cpu"), budget_s=0.2)
    assert torch.equal(torch.rand(3), expected)  # a trial's seeded draws are untouched
    assert model.training  # handed back in the mode it came in
    m = timed.method
    assert m["device"] == "cpu" and m["threads"] == torch.get_num_threads()
    assert m["torch"] == torch.__version__ and m["repeats"] >= MIN_REPEATS
    low, high = m["ci95_ms"]
    assert 0 < low <= timed.median_ms <= high
    assert m["stopped"].startswith(("median's 95% interval", "time budget", "repeat cap"))


def test_ort_follows_the_chosen_gpu_and_the_cpu_gets_only_the_cpu_provider():
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort_providers("cuda:1", both) == [("CUDAExecutionProvider", {"device_id": 1}),
                                             "CPUExecutionProvider"]
    assert ort_providers(torch.device("cuda:0"), both)[0] == ("CUDAExecutionProvider", {"device_id": 0})
    assert ort_providers("cpu", both) == ["CPUExecutionProvider"]
    assert ort_providers("cuda:1", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


_NOISY_SESSION = """
import sys
import onnx
from onnx import TensorProto, helper
from kdsearch.training.latency import onnx_session

# An initializer no node uses: ONNX Runtime warns about removing it, on stderr, from C++.
unused = helper.make_tensor("unused", TensorProto.FLOAT, [1], [0.0])
graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [unused])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.save(model, sys.argv[1])
onnx_session(sys.argv[1])  # first, in a fresh process: what ORT logs as it starts counts too
print(MARK, file=sys.stderr, flush=True)
import onnxruntime as ort
ort.set_default_logger_severity(2)  # ORT's own default, which kdsearch's session raised
ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
"""
MARK = "--- kdsearch's session above, a plain one below ---"


def test_onnx_runtime_warnings_never_reach_the_terminal(tmp_path):
    """One process (the interpreter and torch start once): kdsearch's session, then a plain
    one on the same model, which shows the model does make ORT warn."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    run = subprocess.run([sys.executable, "-c", f"MARK = {MARK!r}\n{_NOISY_SESSION}",
                          str(tmp_path / "m.onnx")], capture_output=True, text=True, env=env,
                         check=True)
    kdsearch, plain = run.stderr.split(MARK + "\n")
    assert "unused" in plain  # the model does make ORT warn ...
    assert kdsearch == ""  # ... and kdsearch's sessions keep it quiet
