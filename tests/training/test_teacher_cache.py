import pytest
import torch

import kdsearch.training.teacher_cache as tc
from kdsearch.spec import parse_study
from kdsearch.training.data import load_data
from tests.helpers import tiny_study_text


@pytest.fixture
def setup(tmp_path):
    spec = parse_study(tiny_study_text(), tmp_path / "tiny.toml")
    return spec, load_data(spec.data), tmp_path / "cache"


def test_second_call_reuses_and_trains_nothing(setup, monkeypatch):
    spec, data, cache = setup
    logs = []
    first = tc.get_teacher(spec, data, cache, torch.device("cpu"), log=logs.append)
    assert not first.reused
    assert set(first.logits) == {"train", "val", "test"}
    assert first.logits["val"].shape == (len(data.val), data.num_classes)

    def fail(*a, **k):
        raise AssertionError("the cached teacher was retrained")

    monkeypatch.setattr(tc, "train_teacher", fail)
    second = tc.get_teacher(spec, data, cache, torch.device("cpu"), log=logs.append)
    assert second.reused
    assert any("reusing cached teacher" in m and "training nothing" in m for m in logs)
    assert torch.equal(second.logits["train"], first.logits["train"])
    # the reloaded weights reproduce the cached logits
    from kdsearch.training.engine import predict_logits

    assert torch.allclose(predict_logits(second.model, data.val, torch.device("cpu")),
                          first.logits["val"], atol=1e-5)


def test_key_depends_on_recipe_seed_and_data(setup):
    spec, data, _ = setup
    key = tc.teacher_key(spec, data)
    assert tc.teacher_key(spec.with_overrides(seed=1), data) != key
    recipe = spec.teacher_train.model_copy(update={"epochs": 3})
    assert tc.teacher_key(spec.model_copy(update={"teacher_train": recipe}), data) != key
    other = load_data(spec.data.model_copy(update={"split_seed": 5}))
    assert tc.teacher_key(spec, other) != key


@pytest.mark.parametrize("victim", ["model.pt", "logits.pt", "meta.json"])
def test_corrupt_or_truncated_cache_is_rebuilt_with_a_warning(setup, victim):
    spec, data, cache = setup
    first = tc.get_teacher(spec, data, cache, torch.device("cpu"), log=lambda m: None)
    path = first.path / victim
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    logs = []
    again = tc.get_teacher(spec, data, cache, torch.device("cpu"), log=logs.append)
    assert not again.reused
    assert any(m.startswith("warning: cached teacher") and "rebuilding" in m for m in logs)
    third = tc.get_teacher(spec, data, cache, torch.device("cpu"), log=logs.append)
    assert third.reused


def test_loads_with_weights_only(setup, monkeypatch):
    spec, data, cache = setup
    tc.get_teacher(spec, data, cache, torch.device("cpu"), log=lambda m: None)
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tc.torch, "load", spy)
    tc.get_teacher(spec, data, cache, torch.device("cpu"), log=lambda m: None)
    assert calls and all(c is True for c in calls)
