"""IC-MoE pixel-probability adaptive voting: the router and the IC-MoE layer that uses it.

The router scores every expert per token (`router_logits`), keeps the top-k votes, renormalises them and
returns what it computed; the losses in `losses.py` are pure functions of that output. Label consistency
(how well each expert's pixel-probability vote agrees with the ground truth) enters through the vote loss,
which teaches the router to predict label-consistent votes, so training and inference route the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_icmoe_sam import IcMoeAdapterConfig
from .experts import IcMoeExperts


@dataclass
class IcMoeRouting(ModelOutput):
    r"""
    What one IC-MoE layer's router computed.

    router_logits (`torch.Tensor` of shape `(B, H, W, E)`):
        Router scores per token and expert.
    votes (`torch.Tensor` of shape `(B, H, W, E)`):
        Fused votes: top-k softmax probabilities, zero outside each token's top-k; each token's votes sum to 1.
    top_k_indices (`torch.LongTensor` of shape `(B, H, W, k)`):
        The experts each token is routed to.
    expert_activations (`torch.Tensor` of shape `(B, H, W, E, r)`):
        Each expert's activated bottleneck, from which the loss reads its pixel-probability vote
        (`IcMoeExperts.pixel_logits`).
    """

    router_logits: torch.Tensor | None = None
    votes: torch.Tensor | None = None
    top_k_indices: torch.LongTensor | None = None
    expert_activations: torch.Tensor | None = None


class IcMoeVotingRouter(nn.Module):
    """Linear router with jitter, temperature and top-k selection."""

    def __init__(self, *, hidden_size: int, num_experts: int, top_k: int, temperature: float, jitter_noise: float):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_experts = num_experts
        self.top_k = top_k
        self.temperature = temperature
        self.jitter_noise = jitter_noise
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Small random scores break the tie between experts from the first step.
        init.normal_(self.weight, std=1.0 / math.sqrt(self.hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.LongTensor]:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(B, H, W, C)`)

        Returns:
            router_logits `(B, H, W, E)`, votes `(B, H, W, E)`, top_k_indices `(B, H, W, k)`.
        """
        if self.training and self.jitter_noise > 0:
            noise = torch.empty_like(hidden_states).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
            hidden_states = hidden_states * noise
        router_logits = F.linear(hidden_states, self.weight)  # (B, H, W, E)
        top_logits, top_k_indices = router_logits.topk(self.top_k, dim=-1)  # (B, H, W, k)
        # The softmax of the top-k logits equals the full softmax renormalised over the top-k.
        if self.temperature != 1.0:
            top_logits = top_logits / self.temperature
        top_votes = torch.softmax(top_logits, dim=-1, dtype=torch.float32).to(router_logits.dtype)
        votes = torch.zeros_like(router_logits).scatter(-1, top_k_indices, top_votes)  # (B, H, W, E)
        return router_logits, votes, top_k_indices


class IcMoeLayer(nn.Module):
    """One IC-MoE layer: experts and voting router, run beside a ViT block's MLP on the same input."""

    def __init__(self, *, hidden_size: int, config: IcMoeAdapterConfig):
        super().__init__()
        self.scale = config.expert_output_scale
        self.experts = IcMoeExperts(
            hidden_size=hidden_size,
            rank=config.expert_rank,
            num_basic=config.num_basic_experts,
            num_semantic=config.num_semantic_experts,
            num_adaptive=config.num_adaptive_experts,
            semantic_dilations=config.semantic_dilations,
        )
        self.router = IcMoeVotingRouter(
            hidden_size=hidden_size,
            num_experts=config.num_experts,
            top_k=config.num_experts_per_tok,
            temperature=config.vote_temperature,
            jitter_noise=config.router_jitter_noise,
        )

    def reset_parameters(self) -> None:
        self.experts.reset_parameters()
        self.router.reset_parameters()

    def forward(self, hidden_states: torch.Tensor, base_output: torch.Tensor) -> tuple[torch.Tensor, IcMoeRouting]:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(B, H, W, C)`): the block's normalised input (LN2 output).
            base_output (`torch.Tensor` of shape `(B, H, W, C)`): the block MLP's output, which the mixture joins.

        Returns:
            `base_output + scale * MoE(hidden_states)` and the layer's [`IcMoeRouting`].
        """
        activations = self.experts.bottleneck(hidden_states)  # (B, H, W, E, r)
        router_logits, votes, top_k_indices = self.router(hidden_states)
        output = self.experts.combine(activations, votes, base_output, self.scale)  # (B, H, W, C)
        return output, IcMoeRouting(
            router_logits=router_logits, votes=votes, top_k_indices=top_k_indices, expert_activations=activations
        )
