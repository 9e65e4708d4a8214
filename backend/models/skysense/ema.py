"""The teacher of the teacher-student pretraining (Sec. 3.3): a copy of the student whose parameters follow
the student's by exponential moving average, theta' <- m theta' + (1 - m) theta [26]."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student`` in eval mode: no gradients, updated only by :func:`ema_update`."""
    teacher = copy.deepcopy(student)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """theta' <- m theta' + (1 - m) theta for every parameter; buffers (the prototypes, which are learned
    on the student branch only, and normalisation statistics) are copied from the student."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)
