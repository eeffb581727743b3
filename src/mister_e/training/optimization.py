"""The optimizer step of stage-2 training on a CPU: gradient clipping folded into a fused Adam(W) step, so that the
gradients are not rewritten by a pass of their own (`MisterETrainer._clip_grad_norm`)."""

from __future__ import annotations

import torch


def fused_adam(optimizer) -> torch.optim.Optimizer | None:
    """The torch Adam or AdamW with `fused=True` inside `optimizer` (accelerate wraps it), else None."""
    inner = getattr(optimizer, "optimizer", optimizer)
    fused = isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)) and inner.defaults.get("fused")
    return inner if fused else None


def clip_into_fused_step(optimizer, parameters, max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_`'s clipping, done by the fused Adam(W) step that follows: the factor goes to the optimizer as
    its `grad_scale` (the gradients are divided by it inside the step), so the gradients are read once for the norm
    and once by the step, not rewritten in a pass of their own. Returns the norm before clipping, as
    `clip_grad_norm_` does. At paper size that pass was a tenth of a CPU training step."""
    gradients = [param.grad for param in parameters if param.grad is not None]
    if gradients and all(gradient.dtype == torch.float32 and gradient.is_contiguous() for gradient in gradients):
        # BLAS's dot reads a CPU tensor at about twice the speed of `vector_norm`, which `clip_grad_norm_` uses.
        norm = torch.stack([torch.dot(gradient.view(-1), gradient.view(-1)) for gradient in gradients]).sum().sqrt()
    else:
        norm = torch.nn.utils.get_total_norm(gradients, foreach=True)
    fused_adam(optimizer).grad_scale = (norm + 1e-6).div(max_norm).clamp(min=1.0)  # 1 / clip_grad_norm_'s factor
    return norm


__all__ = ["clip_into_fused_step", "fused_adam"]
