"""The knowledge-distillation loss of Hinton, Vinyals & Dean (2015), "Distilling the
Knowledge in a Neural Network", arXiv:1503.02531.

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

Why T^2: the gradient of the soft term with respect to the student's logits scales as 1/T^2,
so without the factor a high temperature would silently turn the soft targets off. Scaling
the *loss* term by T^2 multiplies exactly the soft-target gradients by T^2 (differentiation is
linear), so "multiply the loss by T^2" and "multiply the soft gradients by T^2" are the same
update; `tests/test_distill.py::test_t_squared_in_loss_equals_scaling_soft_gradients` proves it.

Label smoothing (Szegedy et al. 2016), when the recipe asks for it, replaces the one-hot target
of the CE term only, by (1 - eps) on the true class and eps / K on each class. The soft term is
left alone: the teacher's distribution is already soft, and smoothing it too would blur what the
student is distilling. So with eps > 0 the hard term's target is itself a mixture, and
alpha still weighs the teacher against it: alpha = 0 is plain training with smoothed labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdsearch.record import KD  # noqa: F401 - the defaults live there, torch-free


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Hinton et al. (2015) distillation loss, averaged over the batch.

    Args:
        student_logits: (N, K) raw scores of the student.
        teacher_logits: (N, K) raw scores of the teacher for the same inputs.
        labels: (N,) true classes.
        temperature: T > 0; softens both distributions in the soft term.
        alpha: weight of the soft term in [0, 1]; 0 is plain training on the labels.
        label_smoothing: eps in [0, 1) for the hard term's target (see the module's docstring).
    """
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if alpha == 0:
        return hard
    t = float(temperature)
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * t * t * soft + (1.0 - alpha) * hard
