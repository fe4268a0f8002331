"""Where an IC-MoE layer joins a ViT block of SAM's image encoder: beside the MLP, or beside the attention's fused
qkv projection (`IcMoeAdapterConfig.expert_placement`). Each wrapper subclasses the SAM module it replaces, so SAM's
parameters keep their names and the layer sits under `...mlp.icmoe` or `...attn.qkv.icmoe`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.configuration_utils import PreTrainedConfig
from transformers.models.sam.modeling_sam import SamMLPBlock

from .configuration_icmoe_sam import IcMoeAdapterConfig
from .layer import IcMoeLayer


class IcMoeMLPBlock(SamMLPBlock):
    """A ViT block MLP with an IC-MoE layer beside it on the same input. SAM's `lin1`/`lin2` keep their names."""

    def __init__(self, vision_config: PreTrainedConfig, adapter_config: IcMoeAdapterConfig):
        super().__init__(vision_config)
        self.icmoe = IcMoeLayer(hidden_size=vision_config.hidden_size, config=adapter_config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        output, _ = self.icmoe(hidden_states, super().forward(hidden_states))  # routing: read by a hook if needed
        return output


def _window_unpartition(windows: torch.Tensor, window_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """`(B * nW, ws, ws, D)` windows, as SAM's windowed blocks lay them out (padded to whole windows), back to the
    `(B, H, W, D)` grid. Only the batch size is left to `-1`, so traced graphs (ONNX) take any batch."""
    height, width = grid
    rows, cols, depth = -(-height // window_size), -(-width // window_size), windows.shape[-1]
    tokens = windows.reshape(-1, rows, cols, window_size, window_size, depth).transpose(2, 3)
    return tokens.reshape(-1, rows * window_size, cols * window_size, depth)[:, :height, :width]


def _window_partition(tokens: torch.Tensor, window_size: int) -> torch.Tensor:
    """The inverse of `_window_unpartition`: `(B, H, W, D)` to zero-padded `(B * nW, ws, ws, D)` windows."""
    _, height, width, depth = tokens.shape
    tokens = F.pad(tokens, (0, 0, 0, -width % window_size, 0, -height % window_size))
    rows, cols = -(-height // window_size), -(-width // window_size)
    tokens = tokens.reshape(-1, rows, window_size, cols, window_size, depth).transpose(2, 3)
    return tokens.reshape(-1, window_size, window_size, depth)


class IcMoeAttentionQkv(nn.Linear):
    """SAM's fused qkv projection with an IC-MoE layer beside it on the same input: `qkv(h) + scale * MoE(h)`.

    In windowed-attention blocks the projection sees the tokens cut into windows; the mixture runs on the whole
    grid (its semantic experts' convolutions and adaptive experts' pooling see across windows, and its routing is
    laid out like the MLP placement's) and is cut into the same windows. SAM's `weight`/`bias` keep their names.

    At inference (eval mode, no autograd) the projection, the experts' down projections and the router, which all read the same
    tokens, can run as one matrix product over concatenated weights (cached, rebuilt when a parameter changes) with
    `fused_inference = True`. Both paths compute the same outputs (tested to float tolerance).
    """

    def __init__(self, vision_config: PreTrainedConfig, adapter_config: IcMoeAdapterConfig, window_size: int):
        hidden_size = vision_config.hidden_size
        super().__init__(hidden_size, 3 * hidden_size, bias=vision_config.qkv_bias)
        self.window_size = window_size
        grid = vision_config.image_size // vision_config.patch_size
        self.grid = (grid, grid)
        self.icmoe = IcMoeLayer(hidden_size=hidden_size, output_size=3 * hidden_size, config=adapter_config)
        # Opt-in: in eval mode without autograd, qkv and the layer's input projections run as one matmul
        # (`_fused_forward`). Off by default: on CPU it measured slower than the separate products (SAM ViT-B at
        # 512 px, one thread, 5 interleaved passes: 1.16x SAM's forward time fused against 1.08x unfused); it is
        # kept for the GPU measurement, where fewer kernel launches may pay.
        self.fused_inference = False
        self._fused_cache: dict = {}

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.fused_inference and not self.training and not torch.is_grad_enabled():
            return self._fused_forward(hidden_states)
        base = super().forward(hidden_states)
        if self.window_size == 0:
            output, _ = self.icmoe(hidden_states, base)
            return output
        # Only the mixture is cut into windows: padding tokens keep the projection's own output, as in SAM.
        mixture, _ = self.icmoe(_window_unpartition(hidden_states, self.window_size, self.grid))
        return base + _window_partition(mixture, self.window_size)

    def _fused_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`[qkv; expert down projections; router]` as one `(3C + E*r + R, C)` matrix and its bias, cached and rebuilt
        whenever one of the parameters changed (in place or replaced)."""
        weight, bias = self.icmoe.input_projections()
        parts = (self.weight, self.bias, self.icmoe.experts.down_proj, self.icmoe.experts.down_bias,
                 self.icmoe.router.weight)
        key = tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in parts if p is not None)
        if self._fused_cache.get("key") != key:
            own_bias = self.bias if self.bias is not None else self.weight.new_zeros(self.out_features)
            self._fused_cache = {
                "key": key,
                "weight": torch.cat([self.weight, weight.to(self.weight.dtype)]).detach(),
                "bias": torch.cat([own_bias, bias.to(own_bias.dtype)]).detach(),
            }
        return self._fused_cache["weight"], self._fused_cache["bias"]

    def _fused_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Inference: one matrix product gives qkv, the experts' down projections and the router logits (they all
        read the same tokens), and in windowed blocks only those E*r + R extra channels go back to the whole grid."""
        weight, bias = self._fused_weights()
        projected = F.linear(hidden_states, weight, bias)
        base, extra = projected.split([self.out_features, weight.shape[0] - self.out_features], dim=-1)
        if self.window_size == 0:
            output, _ = self.icmoe(None, base, projected=extra)
            return output
        mixture, _ = self.icmoe(None, projected=_window_unpartition(extra, self.window_size, self.grid))
        return base + _window_partition(mixture, self.window_size)
