"""The diagonal empirical Fisher of a probed layer: one micro-batch's term, by estimator (tensor maths only).

Role: the Fisher metric of the FIM-guided impact (paper eq. 11-12). The probe (`runtime.probe`) runs
the passes and the hooks; this module turns one micro-batch's mean gradient, and for linear layers the
layer's inputs x and output gradients delta, into that micro-batch's contribution to diag(F).

Estimators (`dids_fisher_estimator`):
- `batch`: the squared mean gradient of the micro-batch: the exact per-example Fisher at micro-batch 1,
  the reference code's estimator above it;
- `per_example`: sum over rows of the squared per-example gradient (delta_b^T x_b)^2, the exact per-example
  Fisher from one batched pass (one [out, in] GEMM per row);
- `per_token`: sum over rows and tokens of (delta_t^2)(x_t^2)^T, the per-example Fisher without the
  cross-token terms;
- `kfac`: per row, the diagonal of the K-FAC factors (sum_t delta_t^2)(sum_t x_t^2)^T / positions, summed
  over rows.
The last three are sums of single-row terms, so micro-batches of several rows give the micro-batch-1
value. A tensor outside a linear layer (no x, delta) always gets the squared gradient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

FISHER_ESTIMATORS = ("batch", "per_example", "per_token", "kfac")


def fisher_term(
    estimator: str, grad: torch.Tensor, io: list[torch.Tensor] | None, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """One micro-batch's diagonal Fisher term for a probed tensor.

    Args:
        estimator: one of `FISHER_ESTIMATORS`.
        grad: [out, in] mean over the micro-batch's examples of their gradients.
        io: the layer's input x [B, L, in] and output gradient delta [B, L, out] of the backpropagated
            sum of row mean losses, so row b's delta is that of its own mean loss (linear layers only).
        attention_mask: [B, L], real positions (None: all).
    """
    import torch  # here, not at import: validating a config reads FISHER_ESTIMATORS without torch

    if estimator == "batch" or io is None or len(io) != 2:
        return grad * grad
    x, delta = io[0].float(), io[1].float()
    if estimator == "per_example":
        term = torch.zeros_like(grad)
        for x_b, delta_b in zip(x, delta, strict=True):  # a row at a time: one [out, in] in memory
            term.add_((delta_b.T @ x_b) ** 2)
        return term
    if estimator == "per_token":
        return (delta**2).flatten(0, 1).T @ (x**2).flatten(0, 1)
    if estimator != "kfac":
        raise ValueError(f"fisher_estimator must be one of {FISHER_ESTIMATORS}, got {estimator!r}.")
    mask = (
        torch.ones(x.shape[:2], device=x.device) if attention_mask is None else (attention_mask > 0).float()
    )
    d2 = (delta**2).sum(1) / mask.sum(1).clamp_min(1)[:, None]  # [B, out]
    x2 = ((x**2) * mask[:, :, None]).sum(1)  # [B, in]
    return d2.T @ x2
