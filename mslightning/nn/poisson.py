"""Masked Poisson likelihood of neural responses, with a burn-in of the first time bins.

Predicted rates ``λ`` (spikes per bin, > 0) and observed spike counts ``y`` of shape
``(B, T, N)`` (batch, time bins, neurons). A recurrent model needs a few frames before its
state means anything, so the first ``burn_in`` bins of every window are left out of the loss
(and of the metrics, see :mod:`mslightning.metrics`); a boolean ``mask`` of the same shape
leaves out missing neurons or bins.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["MaskedPoissonLoss", "response_mask"]


def response_mask(responses: Tensor, mask: Tensor | None = None, burn_in: int = 0) -> Tensor:
    """Which entries of ``(B, T, N)`` responses count: ``mask`` and not in the first ``burn_in`` bins.

    Args:
        responses: ``(B, T, N)``.
        mask: Optional boolean ``(B, T, N)``; False leaves an entry out.
        burn_in: Leading time bins to leave out, ``0 <= burn_in < T``.

    Returns:
        Boolean ``(B, T, N)``.

    Raises:
        ValueError: For a ``burn_in`` not shorter than the window, or a mask of another shape.
    """
    if responses.ndim != 3:
        raise ValueError(f"responses must be (B, T, N), got {tuple(responses.shape)}.")
    if not 0 <= burn_in < responses.shape[1]:
        raise ValueError(
            f"burn_in must be in [0, T) for windows of T = {responses.shape[1]} time bins, got {burn_in}: "
            "every bin would be left out."
        )
    keep = torch.ones_like(responses, dtype=torch.bool) if mask is None else mask.bool()
    if keep.shape != responses.shape:
        raise ValueError(f"mask must have the responses' shape {tuple(responses.shape)}, got {tuple(keep.shape)}.")
    if burn_in:
        keep = keep.clone()
        keep[:, :burn_in] = False
    return keep


class MaskedPoissonLoss(nn.Module):
    """Mean Poisson negative log-likelihood ``λ - y log λ`` over the entries that count.

    The constant ``log y!`` is left out (as in ``torch.nn.functional.poisson_nll_loss`` with
    ``log_input=False, full=False``), so the value equals that function's mean over the kept
    entries. ``eps`` guards ``log λ`` for rates that underflow to 0.

    Args:
        burn_in: Leading time bins of every window left out.
        eps: Added to ``λ`` inside the log.

    Raises:
        ValueError: For a negative ``burn_in`` or a non-positive ``eps``.
    """

    def __init__(self, burn_in: int = 0, eps: float = 1e-8) -> None:
        super().__init__()
        if isinstance(burn_in, bool) or not isinstance(burn_in, int) or burn_in < 0:
            raise ValueError(f"burn_in must be an int >= 0, got {burn_in!r}.")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}.")
        self.burn_in = burn_in
        self.eps = eps

    def forward(self, rates: Tensor, responses: Tensor, mask: Tensor | None = None) -> Tensor:
        """The loss.

        Args:
            rates: Predicted rates ``(B, T, N)``, > 0.
            responses: Spike counts ``(B, T, N)``.
            mask: Optional boolean ``(B, T, N)``.

        Returns:
            A 0-dim tensor: the mean over kept entries (0, connected to the graph, if none).
        """
        if rates.shape != responses.shape:
            raise ValueError(f"rates {tuple(rates.shape)} and responses {tuple(responses.shape)} differ in shape.")
        keep = response_mask(responses, mask, self.burn_in)
        nll = rates - responses * torch.log(rates + self.eps)
        count = keep.sum()
        return (nll * keep).sum() / count.clamp(min=1)
