"""IC-MoE experts: basic, semantic and adaptive bottleneck experts, stored stacked and computed together.

IC-MoE (Zhang et al., arXiv 2510.17684) builds three kinds of experts. Here every expert is a bottleneck of
rank r on the ViT token grid (B, H, W, C):

- basic:    down(C->r) -> GELU -> up(r->C)
- semantic: down -> depthwise 3x3 conv on the grid (dilation d) -> GELU -> up
- adaptive: down -> per-image channel modulation from pooled bottleneck features -> GELU -> up

All experts share one stacked down projection (E, C, r) and one stacked up projection (E, r, C): the routed
mixture `sum_e v_e * up_e(a_e)` is a single matmul of the vote-weighted bottleneck activations. The semantic
experts' dilated 3x3 kernels are laid into one (2 d_max + 1)^2 depthwise kernel, so they run as one grouped
convolution whatever their dilations. Each expert also owns a pixel-probability head, its own vote on
"is this token foreground".
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init


class IcMoeExperts(nn.Module):
    """Stacked IC-MoE experts of the three kinds, ordered basic, semantic, adaptive along the expert axis."""

    def __init__(
        self,
        *,
        hidden_size: int,
        rank: int,
        num_basic: int,
        num_semantic: int,
        num_adaptive: int,
        semantic_dilations: list[int],
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.rank = rank
        self.num_basic = num_basic
        self.num_semantic = num_semantic
        self.num_adaptive = num_adaptive
        self.num_experts = num_basic + num_semantic + num_adaptive

        self.down_proj = nn.Parameter(torch.empty(self.num_experts, hidden_size, rank))
        self.down_bias = nn.Parameter(torch.empty(self.num_experts, rank))
        self.up_proj = nn.Parameter(torch.empty(self.num_experts, rank, hidden_size))
        self.pixel_head = nn.Parameter(torch.empty(self.num_experts, rank))
        self.pixel_bias = nn.Parameter(torch.empty(self.num_experts))

        # Semantic experts: one 3x3 depthwise kernel per expert channel, placed at its dilation inside one
        # (2 * max_dilation + 1)^2 kernel when the forward pass builds the grouped convolution.
        self.max_dilation = max(semantic_dilations, default=1)
        self.semantic_kernel = nn.Parameter(torch.empty(num_semantic, rank, 3, 3))
        self.semantic_bias = nn.Parameter(torch.empty(num_semantic, rank))
        # Flat positions of each semantic expert's 9 taps inside the large kernel. Kept as a Python list, not a
        # buffer: a non-persistent buffer would come back uninitialised from a meta-device load.
        size = 2 * self.max_dilation + 1
        self.semantic_taps = [
            [(self.max_dilation + d * dy) * size + (self.max_dilation + d * dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
            for d in semantic_dilations
        ]
        self._tap_index_cache: dict[torch.device, torch.Tensor] = {}

        # Adaptive experts: modulation m = 1 + tanh(pool(a) W + b), zero-initialised so it starts as identity.
        self.adaptive_weight = nn.Parameter(torch.empty(num_adaptive, rank, rank))
        self.adaptive_bias = nn.Parameter(torch.empty(num_adaptive, rank))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # The `transformers.initialization` functions skip tensors loaded from a checkpoint, so this is safe to call
        # from `initialize_weights` after loading. The initialiser range of SAM's vision config (1e-10) is not used:
        # adapters need a real scale to learn.
        bound = 1.0 / math.sqrt(self.hidden_size)
        init.uniform_(self.down_proj, -bound, bound)
        init.zeros_(self.down_bias)
        # Zero output projections: a freshly wrapped model computes exactly what the base SAM computes.
        init.zeros_(self.up_proj)
        init.normal_(self.pixel_head, std=1.0 / math.sqrt(self.rank))
        init.zeros_(self.pixel_bias)
        init.uniform_(self.semantic_kernel, -1.0 / 3.0, 1.0 / 3.0)
        init.zeros_(self.semantic_bias)
        init.zeros_(self.adaptive_weight)
        init.zeros_(self.adaptive_bias)

    def _tap_index(self, device: torch.device) -> torch.Tensor:
        # A per-device cache of a constant: building it on every call would copy host to device in each forward.
        # Built outside inference mode: an inference tensor cached during evaluation would break later training.
        if device not in self._tap_index_cache:
            with torch.inference_mode(False):
                self._tap_index_cache[device] = torch.tensor(self.semantic_taps, dtype=torch.long, device=device)
        return self._tap_index_cache[device]

    def _semantic(self, hidden: torch.Tensor) -> torch.Tensor:
        """Dilated depthwise 3x3 conv of (B, H, W, S, r) on the H x W grid, all semantic experts in one conv."""
        batch, height, width, num_semantic, rank = hidden.shape
        size = 2 * self.max_dilation + 1
        kernel = self.semantic_kernel.new_zeros(num_semantic, rank, size * size)  # (S, r, K*K)
        index = self._tap_index(kernel.device)[:, None, :].expand(num_semantic, rank, 9)  # (S, r, 9)
        kernel = kernel.scatter(2, index, self.semantic_kernel.reshape(num_semantic, rank, 9))
        kernel = kernel.reshape(num_semantic * rank, 1, size, size)  # (S*r, 1, K, K)
        grid = hidden.reshape(batch, height, width, num_semantic * rank).permute(0, 3, 1, 2)  # (B, S*r, H, W)
        grid = F.conv2d(
            grid, kernel, self.semantic_bias.reshape(-1), padding=self.max_dilation, groups=num_semantic * rank
        )
        return grid.permute(0, 2, 3, 1).reshape(batch, height, width, num_semantic, rank)  # (B, H, W, S, r)

    def _adaptive(self, hidden: torch.Tensor) -> torch.Tensor:
        """Per-image channel modulation of (B, H, W, A, r) from the image's pooled bottleneck features."""
        pooled = hidden.mean(dim=(1, 2))  # (B, A, r)
        modulation = torch.einsum("bar,ars->bas", pooled, self.adaptive_weight) + self.adaptive_bias  # (B, A, r)
        return hidden * (1.0 + torch.tanh(modulation))[:, None, None]  # (B, H, W, A, r)

    def bottleneck(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs every expert up to its bottleneck.

        Args:
            hidden_states (`torch.Tensor` of shape `(B, H, W, C)`): the normalised block input.

        Returns:
            activations (`torch.Tensor` of shape `(B, H, W, E, r)`): each expert's activated bottleneck.
            pixel_logits (`torch.Tensor` of shape `(B, H, W, E)`): each expert's foreground logit per token.
        """
        batch, height, width, channels = hidden_states.shape
        down = self.down_proj.permute(1, 0, 2).reshape(channels, self.num_experts * self.rank)  # (C, E*r)
        hidden = hidden_states @ down + self.down_bias.reshape(-1)  # (B, H, W, E*r)
        hidden = hidden.reshape(batch, height, width, self.num_experts, self.rank)  # (B, H, W, E, r)
        basic, semantic, adaptive = hidden.split([self.num_basic, self.num_semantic, self.num_adaptive], dim=3)
        parts = [basic]
        if self.num_semantic:
            parts.append(self._semantic(semantic))
        if self.num_adaptive:
            parts.append(self._adaptive(adaptive))
        activations = F.gelu(torch.cat(parts, dim=3) if len(parts) > 1 else basic)  # (B, H, W, E, r)
        pixel_logits = torch.einsum("bhwer,er->bhwe", activations, self.pixel_head) + self.pixel_bias  # (B, H, W, E)
        return activations, pixel_logits

    def combine(self, activations: torch.Tensor, votes: torch.Tensor) -> torch.Tensor:
        """The routed mixture `sum_e votes_e * up_e(activations_e)` as one matmul.

        Args:
            activations (`torch.Tensor` of shape `(B, H, W, E, r)`)
            votes (`torch.Tensor` of shape `(B, H, W, E)`): zero for experts outside a token's top-k.

        Returns:
            `torch.Tensor` of shape `(B, H, W, C)`.
        """
        batch, height, width, num_experts, rank = activations.shape
        weighted = (activations * votes.unsqueeze(-1)).reshape(batch, height, width, num_experts * rank)
        return weighted @ self.up_proj.reshape(num_experts * rank, self.hidden_size)  # (B, H, W, C)
