"""IC-MoE experts: basic, semantic and adaptive bottleneck experts, stored stacked and computed together.

IC-MoE (Zhang et al., arXiv 2510.17684) builds three kinds of experts. Here every expert is a bottleneck of
rank r on the ViT token grid (B, H, W, C):

- shared:   a basic expert that every token uses, outside the routing
- basic:    down(C->r) -> GELU -> up(r->C)
- semantic: down -> depthwise 3x3 conv on the grid (dilation d) -> GELU -> up
- adaptive: down -> per-image channel modulation from pooled bottleneck features -> GELU -> up

With `expert_activation="identity"` the GELU is left out (linear experts); with `"gelu_routed"` it is left out of the
shared experts only.

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

from .configuration_icmoe_sam import EXPERT_ACTIVATIONS


class IcMoeExperts(nn.Module):
    """Stacked IC-MoE experts, ordered shared, basic, semantic, adaptive along the expert axis.

    Shared experts are basic experts that every token uses; the router votes over the others (the routed experts).

    Projections are stored `(E, r, C)` so that the flattened `(E * r, C)` views feed `F.linear` and `addmm`
    without a copy: the forward pass is a handful of kernels whatever the number of experts.
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        rank: int,
        num_shared: int = 0,
        num_basic: int,
        num_semantic: int,
        num_adaptive: int,
        semantic_dilations: list[int],
        output_size: int | None = None,
        activation: str = "gelu",
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.output_size = output_size or hidden_size
        self.rank = rank
        self.num_shared = num_shared
        self.num_basic = num_basic
        self.num_semantic = num_semantic
        self.num_adaptive = num_adaptive
        self.num_experts = num_shared + num_basic + num_semantic + num_adaptive
        if activation not in EXPERT_ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {EXPERT_ACTIVATIONS}, got {activation!r}.")
        self.activation = activation

        self.down_proj = nn.Parameter(torch.empty(self.num_experts, rank, hidden_size))
        self.down_bias = nn.Parameter(torch.empty(self.num_experts, rank))
        self.up_proj = nn.Parameter(torch.empty(self.num_experts, rank, self.output_size))
        self.pixel_head = nn.Parameter(torch.empty(self.num_experts, rank))
        self.pixel_bias = nn.Parameter(torch.empty(self.num_experts))

        # Semantic experts: one 3x3 depthwise kernel per expert channel, placed at its dilation inside one
        # (2 * max_dilation + 1)^2 kernel, so that all semantic experts run as one grouped convolution.
        self.max_dilation = max(semantic_dilations, default=1)
        self.semantic_dilations = list(semantic_dilations)
        # Kinds with no expert get no parameters: a zero-size trainable tensor never gets a gradient, which DDP
        # reports as an unused parameter.
        self.semantic_kernel = nn.Parameter(torch.empty(num_semantic, rank, 3, 3)) if num_semantic else None
        self.semantic_bias = nn.Parameter(torch.empty(num_semantic, rank)) if num_semantic else None
        # Kept out of the state dict and rebuilt per device: a non-persistent buffer would come back uninitialised
        # from a meta-device load.
        self._placement_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

        # Adaptive experts: modulation a * (1 + tanh(pool(a) W + b)), zero-initialised so it starts as identity.
        self.adaptive_weight = nn.Parameter(torch.empty(num_adaptive, rank, rank)) if num_adaptive else None
        self.adaptive_bias = nn.Parameter(torch.empty(num_adaptive, 1, rank)) if num_adaptive else None
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
        if self.num_semantic:
            init.uniform_(self.semantic_kernel, -1.0 / 3.0, 1.0 / 3.0)
            init.zeros_(self.semantic_bias)
        if self.num_adaptive:
            init.zeros_(self.adaptive_weight)
            init.zeros_(self.adaptive_bias)

    def _placement(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(S, 9, K*K) 0/1 matrix placing each semantic expert's 3x3 taps at its dilation in the K x K kernel."""
        key = (device, dtype)
        if key not in self._placement_cache:
            size = 2 * self.max_dilation + 1
            # Built outside inference mode: an inference tensor cached during evaluation would break training.
            with torch.inference_mode(False):
                placement = torch.zeros(self.num_semantic, 9, size * size, dtype=dtype, device=device)
                for expert, d in enumerate(self.semantic_dilations):
                    for tap, (dy, dx) in enumerate((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)):
                        placement[expert, tap, (self.max_dilation + d * dy) * size + self.max_dilation + d * dx] = 1
            self._placement_cache[key] = placement
        return self._placement_cache[key]

    def _semantic(self, hidden: torch.Tensor) -> torch.Tensor:
        """Dilated depthwise 3x3 conv of (B, H, W, S*r) on the H x W grid, all semantic experts in one conv."""
        channels = self.num_semantic * self.rank
        size = 2 * self.max_dilation + 1
        taps = self.semantic_kernel.reshape(self.num_semantic, self.rank, 9)
        kernel = torch.bmm(taps, self._placement(taps.device, taps.dtype))  # (S, r, K*K)
        # Channels-last keeps the token layout (no transpose) and selects the fast NHWC depthwise kernels on GPUs.
        grid = hidden.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)  # (B, S*r, H, W)
        grid = F.conv2d(
            grid, kernel.reshape(channels, 1, size, size), self.semantic_bias.reshape(-1),
            padding=self.max_dilation, groups=channels,
        )
        return grid.permute(0, 2, 3, 1)  # (B, H, W, S*r)

    def _adaptive(self, hidden: torch.Tensor) -> torch.Tensor:
        """Per-image channel modulation of (B, H, W, A*r) from the image's pooled bottleneck features."""
        hidden = hidden.unflatten(-1, (self.num_adaptive, self.rank))  # (B, H, W, A, r), a view
        pooled = hidden.mean(dim=(1, 2)).transpose(0, 1)  # (A, B, r)
        gate = torch.tanh(torch.baddbmm(self.adaptive_bias, pooled, self.adaptive_weight))  # (A, B, r)
        modulated = torch.addcmul(hidden, hidden, gate.transpose(0, 1)[:, None, None])  # a * (1 + gate)
        return modulated.flatten(-2)  # (B, H, W, A*r)

    def bottleneck(self, hidden_states: torch.Tensor | None, down: torch.Tensor | None = None) -> torch.Tensor:
        """Runs every expert up to its activated bottleneck.

        Args:
            hidden_states (`torch.Tensor` of shape `(B, H, W, C)`): the normalised block input.
            down (`torch.Tensor` of shape `(B, H, W, E*r)`, *optional*): the down projections already applied (with
                their bias), as the fused inference path computes them; `hidden_states` is then not read.

        Returns:
            `torch.Tensor` of shape `(B, H, W, E, r)`.
        """
        if down is None:
            weight = self.down_proj.reshape(self.num_experts * self.rank, self.hidden_size)  # (E*r, C), a view
            down = F.linear(hidden_states, weight, self.down_bias.reshape(-1))  # (B, H, W, E*r)
        hidden = down
        sizes = [n * self.rank for n in (self.num_shared + self.num_basic, self.num_semantic, self.num_adaptive)]
        basic, semantic, adaptive = hidden.split(sizes, dim=-1)
        parts = [basic]
        if self.num_semantic:
            parts.append(self._semantic(semantic))
        if self.num_adaptive:
            parts.append(self._adaptive(adaptive))
        activations = torch.cat(parts, dim=-1) if len(parts) > 1 else hidden  # (B, H, W, E*r)
        if self.activation == "gelu":
            activations = F.gelu(activations)
        elif self.activation == "gelu_routed":
            shared = self.num_shared * self.rank
            activations = torch.cat([activations[..., :shared], F.gelu(activations[..., shared:])], dim=-1)
        return activations.unflatten(-1, (self.num_experts, self.rank))  # (B, H, W, E, r)

    def pixel_logits(self, activations: torch.Tensor) -> torch.Tensor:
        """Each expert's foreground logit per token, `(B, H, W, E)`, from its activated bottleneck."""
        return (activations * self.pixel_head).sum(dim=-1) + self.pixel_bias

    def combine(
        self, activations: torch.Tensor, votes: torch.Tensor, base: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        """`base + scale * sum_e votes_e * up_e(activations_e)` as one fused matmul.

        Args:
            activations (`torch.Tensor` of shape `(B, H, W, E, r)`)
            votes (`torch.Tensor` of shape `(B, H, W, E)`): each expert's weight per token (1 for shared experts,
                zero for routed experts outside the token's top-k).
            base (`torch.Tensor` of shape `(B, H, W, O)`): what the mixture is added to (the block MLP's output, or the
                qkv projection's), `O` being `output_size`; `None` for the scaled mixture alone.

        Returns:
            `torch.Tensor` of shape `(B, H, W, O)`.
        """
        # `flatten(-2)` and `reshape(-1, ...)` keep the token count symbolic, so traced graphs (ONNX) take any batch.
        weighted = (activations * votes.unsqueeze(-1)).flatten(-2)  # (B, H, W, E*r)
        up = self.up_proj.reshape(self.num_experts * self.rank, self.output_size)  # (E*r, O), a view
        if base is None:
            return torch.matmul(weighted, up).mul_(scale)  # (B, H, W, O)
        flat = weighted.reshape(-1, self.num_experts * self.rank)  # (B*H*W, E*r)
        return torch.addmm(base.reshape(-1, self.output_size), flat, up, alpha=scale).view_as(base)
