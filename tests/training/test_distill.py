import math

import torch
import torch.nn.functional as F

from kdsearch.training.distill import kd_loss


def _softmax(v, t):
    e = [math.exp(x / t) for x in v]
    return [x / sum(e) for x in e]


def test_values_match_a_hand_computed_reference():
    s = [1.0, 2.0, 0.5]
    t = [0.2, 3.0, -1.0]
    T, alpha, y = 4.0, 0.7, 1
    p_t, p_s = _softmax(t, T), _softmax(s, T)
    kl = sum(a * math.log(a / b) for a, b in zip(p_t, p_s, strict=True))
    ce = -math.log(_softmax(s, 1.0)[y])
    expected = alpha * T * T * kl + (1 - alpha) * ce
    got = kd_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), T, alpha)
    assert abs(got.item() - expected) < 1e-5
    # and a pinned number, so a change of convention is caught even if both sides move
    assert abs(got.item() - 0.5479608) < 1e-5


def test_alpha_zero_is_plain_cross_entropy_and_alpha_one_ignores_labels():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    assert torch.allclose(kd_loss(s, t, y, 3.0, 0.0), F.cross_entropy(s, y))
    y2 = (y + 1) % 5
    assert torch.allclose(kd_loss(s, t, y, 3.0, 1.0), kd_loss(s, t, y2, 3.0, 1.0))
    assert kd_loss(t, t, y, 3.0, 1.0).abs() < 1e-6  # identical logits: no soft loss


def test_t_squared_in_loss_equals_scaling_soft_gradients():
    """Multiplying the loss term by T^2 == multiplying the soft-target gradients by T^2."""
    torch.manual_seed(0)
    T, alpha = 5.0, 0.6
    net = torch.nn.Linear(6, 4)
    x, y = torch.randn(16, 6), torch.randint(0, 4, (16,))
    teacher = torch.randn(16, 4) * 3

    # (a) T^2 inside the loss
    net.zero_grad()
    kd_loss(net(x), teacher, y, T, alpha).backward()
    grads_loss = [p.grad.clone() for p in net.parameters()]

    # (b) no T^2 in the loss; instead the gradient flowing back from the soft term is scaled
    net.zero_grad()
    logits = net(x)
    soft_branch = logits.clone()
    soft_branch.register_hook(lambda g: g * T * T)
    soft = F.kl_div(F.log_softmax(soft_branch / T, 1), F.log_softmax(teacher / T, 1),
                    reduction="batchmean", log_target=True)
    (alpha * soft + (1 - alpha) * F.cross_entropy(logits, y)).backward()
    grads_hook = [p.grad.clone() for p in net.parameters()]

    for a, b in zip(grads_loss, grads_hook, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # without either scaling the gradients differ: the test can fail
    net.zero_grad()
    logits = net(x)
    soft = F.kl_div(F.log_softmax(logits / T, 1), F.log_softmax(teacher / T, 1),
                    reduction="batchmean", log_target=True)
    (alpha * soft + (1 - alpha) * F.cross_entropy(logits, y)).backward()
    assert not torch.allclose(net.weight.grad, grads_loss[0], atol=1e-4)


def test_soft_gradient_shrinks_as_one_over_t_squared_without_the_factor():
    """Why the factor exists: d KL / d logits ~ 1/T^2 for large T (Hinton et al. 2015, sec. 2.1)."""
    s = torch.tensor([[0.3, -0.2, 0.5]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0, -1.0]])
    norms = []
    for T in (10.0, 20.0):
        s.grad = None
        F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean",
                 log_target=True).backward()
        norms.append(s.grad.norm().item())
    assert 3.6 < norms[0] / norms[1] < 4.4


def test_label_smoothing_softens_the_hard_term_only():
    """eps on the labels: the hard term's target is (1 - eps) one-hot + eps / K; the soft
    term, and so alpha = 1, is unchanged."""
    s, t = [1.0, 2.0, 0.5], [0.2, 3.0, -1.0]
    T, alpha, y, eps = 4.0, 0.7, 1, 0.1
    p_t, p_s = _softmax(t, T), _softmax(s, T)
    kl = sum(a * math.log(a / b) for a, b in zip(p_t, p_s, strict=True))
    target = [(1 - eps) * (k == y) + eps / 3 for k in range(3)]
    ce = -sum(q * math.log(p) for q, p in zip(target, _softmax(s, 1.0), strict=True))
    args = torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), T
    got = kd_loss(*args, alpha, label_smoothing=eps)
    assert abs(got.item() - (alpha * T * T * kl + (1 - alpha) * ce)) < 1e-5
    assert abs(got.item() - kd_loss(*args, alpha).item()) > 1e-3  # smoothing did change it
    assert torch.allclose(kd_loss(*args, 1.0, label_smoothing=eps), kd_loss(*args, 1.0))
