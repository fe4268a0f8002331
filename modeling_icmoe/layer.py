"""One IC-MoE layer: the experts, their pixel-probability votes and the voting router, beside one projection of a
ViT block (the fused qkv projection by default, `placement="attention"`; the MLP with `placement="mlp"`).

The layer computes every expert's activated bottleneck, each expert's pixel logit (its own vote on "is this
token foreground"), the router's votes (which read those pixel logits) and the mixture, and returns all of it
as data (`IcMoeRouting`): the training objective in `losses.py` is a pure function of what the layers return.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers.utils import ModelOutput

from .configuration_icmoe_sam import IcMoeAdapterConfig
from .experts import IcMoeExperts
from .router import IcMoeVotingRouter


@dataclass
class IcMoeRouting(ModelOutput):
    r"""
    What one IC-MoE layer computed besides its output. `E` counts every expert, `R` the routed ones (`E` minus the
    shared experts, which every token uses).

    router_logits (`torch.Tensor` of shape `(B, H, W, R)`):
        Router scores per token and routed expert, before the pixel-probability term.
    votes (`torch.Tensor` of shape `(B, H, W, R)`):
        Fused votes of the routed experts: top-k softmax of the router and pixel-probability scores, zero outside
        each token's top-k; each token's votes sum to 1.
    top_k_indices (`torch.LongTensor` of shape `(B, H, W, k)`):
        The routed experts each token is sent to (indices into the routed experts).
    pixel_logits (`torch.Tensor` of shape `(B, H, W, E)`):
        Every expert's foreground logit per token (shared experts first).
    """

    router_logits: torch.Tensor | None = None
    votes: torch.Tensor | None = None
    top_k_indices: torch.LongTensor | None = None
    pixel_logits: torch.Tensor | None = None

    @property
    def num_shared_experts(self) -> int:
        """How many shared experts lead `pixel_logits` (the experts the router does not score)."""
        return self.pixel_logits.shape[-1] - self.router_logits.shape[-1]

    @property
    def routed_pixel_logits(self) -> torch.Tensor:
        """`(B, H, W, R)`: the routed experts' foreground logits, in the order of `router_logits` and `votes`."""
        return self.pixel_logits[..., self.num_shared_experts :]


class IcMoeLayer(nn.Module):
    """One IC-MoE layer: experts and voting router, run on the input of the projection it joins (the block's qkv or
    its MLP) and added to that projection's output."""

    def __init__(self, *, hidden_size: int, config: IcMoeAdapterConfig, output_size: int | None = None):
        super().__init__()
        self.scale = config.expert_output_scale
        self.routed_scale = config.routed_scaling_factor
        self.num_shared = config.num_shared_experts
        self.experts = IcMoeExperts(
            hidden_size=hidden_size,
            rank=config.expert_rank,
            num_shared=config.num_shared_experts,
            num_basic=config.num_basic_experts,
            num_semantic=config.num_semantic_experts,
            num_adaptive=config.num_adaptive_experts,
            semantic_dilations=config.semantic_dilations,
            output_size=output_size,
            activation=config.expert_activation,
        )
        self.router = IcMoeVotingRouter(
            hidden_size=hidden_size,
            num_experts=config.num_routed_experts,
            top_k=config.num_experts_per_tok,
            temperature=config.vote_temperature,
            jitter_noise=config.router_jitter_noise,
            pixel_vote_weight=config.pixel_vote_weight,
        )

    def reset_parameters(self) -> None:
        self.experts.reset_parameters()
        self.router.reset_parameters()

    def input_projections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(weight (E*r + R, C), bias (E*r + R,))` of the two linear maps that read the layer's input: the experts'
        stacked down projections and the router. A caller that projects the same input with its own weights (SAM's
        qkv) can concatenate these to its own and pass the result as `projected`."""
        experts = self.experts
        down = experts.down_proj.reshape(experts.num_experts * experts.rank, experts.hidden_size)  # (E*r, C)
        weight = torch.cat([down, self.router.weight], dim=0)  # (E*r + R, C)
        bias = torch.cat([experts.down_bias.reshape(-1), experts.down_bias.new_zeros(self.router.num_experts)])
        return weight, bias

    def forward(
        self,
        hidden_states: torch.Tensor | None,
        base_output: torch.Tensor | None = None,
        projected: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, IcMoeRouting]:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(B, H, W, C)`): the block's normalised input (LN2 output, or LN1
                output for the attention placement). May be `None` when `projected` is given.
            base_output (`torch.Tensor` of shape `(B, H, W, O)`): what the mixture joins: the block MLP's output
                (`O = C`) or the qkv projection's (`O = 3 C`). `None` returns the scaled mixture alone.
            projected (`torch.Tensor` of shape `(B, H, W, E*r + R)`, *optional*): the input already multiplied by
                `input_projections()` (the fused inference path); the router's jitter is a training-time input
                perturbation and does not apply to it.

        Returns:
            `base_output + scale * MoE(hidden_states)` (`(B, H, W, O)`) and the layer's [`IcMoeRouting`].
        """
        if projected is None:
            activations = self.experts.bottleneck(hidden_states)  # (B, H, W, E, r)
            router_input, router_logits = hidden_states, None
        else:
            width = self.experts.num_experts * self.experts.rank
            down, router_logits = projected.split([width, self.router.num_experts], dim=-1)
            activations = self.experts.bottleneck(None, down=down)  # (B, H, W, E, r)
            router_input = None
        pixel_logits = self.experts.pixel_logits(activations)  # (B, H, W, E)
        router_logits, votes, top_k_indices = self.router(
            router_input, pixel_logits[..., self.num_shared :], router_logits=router_logits
        )
        weights = votes * self.routed_scale if self.routed_scale != 1.0 else votes
        weights = F.pad(weights, (self.num_shared, 0), value=1.0) if self.num_shared else weights  # (B, H, W, E)
        output = self.experts.combine(activations, weights, base_output, self.scale)  # (B, H, W, O)
        return output, IcMoeRouting(
            router_logits=router_logits, votes=votes, top_k_indices=top_k_indices, pixel_logits=pixel_logits
        )
