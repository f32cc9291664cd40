"""Knowledge distillation loss (Hinton et al. 2015): CE + weight * T^2 * KL(teacher_T || student_T).

SNL uses it with T = 4 and weight 1 both in its mask search and its fine-tuning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["kd_loss", "DistillationLoss"]


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 4.0
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    t = temperature
    log_p = F.log_softmax(student_logits.float() / t, dim=1)
    log_q = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * t * t


class DistillationLoss:
    """``loss(logits, y, x, groups)`` = CE(logits, y) + weight * KD(logits, teacher(x)).

    The teacher runs in eval mode without gradients; it must live on the batch's device.
    """

    def __init__(
        self,
        teacher: nn.Module,
        *,
        temperature: float = 4.0,
        weight: float = 1.0,
        label_smoothing: float = 0.0,
        ce_offset: torch.Tensor | None = None,
    ) -> None:
        if temperature <= 0:
            raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
        # eval mode; no gradient flows into it (terms() runs it under no_grad). Its parameters'
        # requires_grad is left alone: the caller's model may be a student elsewhere
        self.teacher = teacher.eval()
        self.temperature, self.weight, self.label_smoothing = temperature, weight, label_smoothing
        # logit adjustment (Menon et al. 2021): the CE term reads logits + tau log prior(y)
        self.ce_offset = ce_offset

    def terms(
        self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-sample ``loss`` (CE + weight * KD), its ``ce`` and the teacher's own CE on the
        same samples (``teacher_ce``, no gradient: the dense-anchored objective reads it)."""
        with torch.no_grad():
            teacher_logits = self.teacher(x)
            teacher_ce = F.cross_entropy(teacher_logits.float(), y, reduction="none")
        ce_logits = (
            logits
            if self.ce_offset is None
            else logits + self.ce_offset.to(logits.device, logits.dtype)
        )
        ce = F.cross_entropy(ce_logits, y, label_smoothing=self.label_smoothing, reduction="none")
        t = self.temperature
        log_p = F.log_softmax(logits.float() / t, dim=1)
        log_q = F.log_softmax(teacher_logits.float() / t, dim=1)
        kd = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(1) * t * t
        return {"loss": ce + self.weight * kd, "ce": ce, "teacher_ce": teacher_ce}

    def per_sample(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """CE + weight * KD of each sample (the fairness objectives weigh or group these)."""
        return self.terms(logits, y, x)["loss"]

    def __call__(
        self,
        logits: torch.Tensor,
        y: torch.Tensor,
        x: torch.Tensor,
        groups: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.per_sample(logits, y, x).mean()
