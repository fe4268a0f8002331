"""IC-MoE pixel-probability adaptive voting: the router.

The router scores the routed experts per token (`router_logits`), adds each expert's pixel-probability
confidence (how sure its own foreground vote is, `max(p, 1 - p)`), keeps the top-k combined scores,
renormalises them and returns what it computed. It needs no labels, so training and inference vote the same
way; label consistency enters through the losses in `losses.py` (the pixel heads learn to be right, the router
learns to predict the label-consistent vote), which are pure functions of the router's output.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init


def pixel_confidence_scores(pixel_logits: torch.Tensor) -> torch.Tensor:
    """`log max(p, 1 - p)` of each expert's foreground probability `p = sigmoid(z)`, as `-softplus(-|z|)`.

    In `[-log 2, 0]`: 0 for an expert sure of its pixel vote, `-log 2` for one that cannot tell.
    """
    return -F.softplus(-pixel_logits.abs())


def top_k_votes(scores: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.LongTensor]:
    """Softmax of each token's top-k scores, scattered back to `(..., E)` (zero outside the top-k)."""
    top_scores, top_k_indices = scores.topk(top_k, dim=-1)  # (..., k)
    # The softmax of the top-k scores equals the full softmax renormalised over the top-k.
    top_votes = torch.softmax(top_scores, dim=-1, dtype=torch.float32).to(scores.dtype)
    return torch.zeros_like(scores).scatter(-1, top_k_indices, top_votes), top_k_indices


class IcMoeVotingRouter(nn.Module):
    """Linear router with jitter, temperature, pixel-probability voting and top-k selection.

    Votes are `topk-softmax((g + lambda * log max(p, 1 - p)) / tau)`, with `g` the router logits, `p` each routed
    expert's pixel probability and `lambda` the `pixel_vote_weight`; `lambda = 0` is a plain top-k router.
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        temperature: float,
        jitter_noise: float,
        pixel_vote_weight: float,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_experts = num_experts
        self.top_k = top_k
        self.temperature = temperature
        self.jitter_noise = jitter_noise
        self.pixel_vote_weight = pixel_vote_weight
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Small random scores break the tie between experts from the first step.
        init.normal_(self.weight, std=1.0 / math.sqrt(self.hidden_size))

    def forward(
        self,
        hidden_states: torch.Tensor | None,
        pixel_logits: torch.Tensor | None = None,
        router_logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.LongTensor]:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(B, H, W, C)`)
            pixel_logits (`torch.Tensor` of shape `(B, H, W, E)`, *optional*): the routed experts' foreground
                logits; their confidence joins the router scores when `pixel_vote_weight > 0`.
            router_logits (`torch.Tensor` of shape `(B, H, W, E)`, *optional*): `W_r h` computed by the caller (the
                fused inference path); `hidden_states` is then not read.

        Returns:
            router_logits `(B, H, W, E)`, votes `(B, H, W, E)`, top_k_indices `(B, H, W, k)`.
        """
        if router_logits is None:
            if self.training and self.jitter_noise > 0:
                noise = torch.empty_like(hidden_states).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
                hidden_states = hidden_states * noise
            router_logits = F.linear(hidden_states, self.weight)  # (B, H, W, E)
        scores = router_logits
        if self.pixel_vote_weight > 0 and pixel_logits is not None:
            scores = torch.add(scores, pixel_confidence_scores(pixel_logits), alpha=self.pixel_vote_weight)
        if self.temperature != 1.0:
            scores = scores / self.temperature
        votes, top_k_indices = top_k_votes(scores, self.top_k)  # (B, H, W, E), (B, H, W, k)
        return router_logits, votes, top_k_indices
