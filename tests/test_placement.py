"""Where the mixture sits: beside SAM's fused qkv projection (the default, on the whole token grid) or its MLP."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn import functional as F
from transformers import SamModel

from helpers import tiny_base_sam
from modeling_icmoe import IcMoeAdapterConfig, IcMoeSamModel, get_icmoe_model
from modeling_icmoe.layer import IcMoeLayer
from modeling_icmoe.placement import IcMoeAttentionQkv, _window_partition, _window_unpartition
from training.sam_init import tiny_sam_config

ATTENTION = IcMoeAdapterConfig(
    expert_rank=4, contrastive_loss_coef=0.01, contrastive_samples_per_class=8, projection_dim=8,
    expert_placement="attention",
)
PLACEMENTS = {"attention": ATTENTION, "mlp": dataclasses.replace(ATTENTION, expert_placement="mlp")}


def _layers(model: IcMoeSamModel) -> list[IcMoeLayer]:
    return [m for m in model.modules() if isinstance(m, IcMoeLayer)]


@pytest.fixture
def padded_base() -> SamModel:
    """A tiny SAM whose windowed block pads its 8 x 8 grid to 9 x 9 (window 3): padding tokens are attended to."""
    config = tiny_sam_config()
    config.vision_config.window_size = 3
    return tiny_base_sam(config)


def _randomise_outputs(model: IcMoeSamModel) -> None:
    with torch.no_grad():
        for layer in _layers(model):
            layer.experts.up_proj.normal_(0.0, 0.5)


def test_config_rejects_unknown_placement():
    with pytest.raises(ValueError, match="expert_placement"):
        IcMoeAdapterConfig(expert_placement="decoder")


def test_configs_written_before_the_placement_existed_load_as_mlp():
    legacy = IcMoeAdapterConfig().to_dict()
    del legacy["expert_placement"]
    assert IcMoeAdapterConfig.from_dict(legacy).expert_placement == "mlp"
    # A partial preset takes the current default.
    assert IcMoeAdapterConfig.from_dict({"expert_rank": 4}).expert_placement == "attention"


def test_window_partition_round_trip():
    tokens = torch.randn(2, 8, 7, 5)
    windows = _window_partition(tokens, 3)
    assert windows.shape == (2 * 3 * 3, 3, 3, 5)
    assert torch.equal(_window_unpartition(windows, 3, (8, 7)), tokens)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_fresh_model_matches_base(padded_base, images, boxes, placement):
    model = get_icmoe_model(padded_base, PLACEMENTS[placement]).eval()
    in_attention = [isinstance(block.attn.qkv, IcMoeAttentionQkv) for block in model.vision_encoder.layers]
    in_mlp = [hasattr(block.mlp, "icmoe") for block in model.vision_encoder.layers]
    assert all(in_attention if placement == "attention" else in_mlp)
    assert not any(in_mlp if placement == "attention" else in_attention)
    with torch.no_grad():
        expected = padded_base(pixel_values=images, input_boxes=boxes).pred_masks
        actual = model(pixel_values=images, input_boxes=boxes).pred_masks
    assert expected.abs().max() > 1e-2
    assert (actual - expected).abs().max() <= 1e-5


def test_windowed_mixture_equals_whole_grid_mixture(padded_base):
    """In a windowed block the mixture is computed on the whole grid and cut into windows; padding tokens keep the
    projection's own output (its bias), as in SAM."""
    model = get_icmoe_model(padded_base, ATTENTION).eval()
    _randomise_outputs(model)
    windowed = model.vision_encoder.layers[0].attn.qkv
    assert windowed.window_size == 3
    whole = IcMoeAttentionQkv(model.config.vision_config, ATTENTION, window_size=0).eval()
    whole.load_state_dict(windowed.state_dict())
    tokens = torch.randn(2, 8, 8, windowed.in_features)
    with torch.no_grad():
        expected = whole(tokens)
        actual = _window_unpartition(windowed(_window_partition(tokens, 3)), 3, (9, 9))
    assert (expected - F.linear(tokens, whole.weight, whole.bias)).abs().max() > 1e-2  # the mixture does work
    assert (actual[:, :8, :8] - expected).abs().max() <= 1e-5
    # Windows of the last row and column hold padding: there the output is the projection of a zero token.
    last = _window_unpartition(windowed(_window_partition(tokens, 3)), 3, (9, 9))[:, 8]
    assert torch.allclose(last, windowed.bias.expand_as(last), atol=1e-6)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_experts_train_and_route(padded_base, images, boxes, masks, placement):
    config = PLACEMENTS[placement]
    model = get_icmoe_model(padded_base, config).train()
    output = model(pixel_values=images, input_boxes=boxes, labels=masks, output_router_probs=True)
    output.loss.backward()
    assert len(output.routing) == len(model.vision_encoder.layers)
    for routing in output.routing:
        assert routing.pixel_logits.shape == (2, 8, 8, config.num_experts)
    width = model.config.vision_config.hidden_size
    for block, layer in zip(model.vision_encoder.layers, _layers(model)):
        experts = layer.experts
        assert experts.up_proj.shape[-1] == (3 * width if placement == "attention" else width)
        for name in ("up_proj", "down_proj", "semantic_kernel"):
            grad = getattr(experts, name).grad
            assert grad is not None and grad.abs().sum() > 0, name
        assert block.attn.qkv.weight.grad is None and block.mlp.lin1.weight.grad is None  # SAM stays frozen


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_checkpoint_round_trip(tmp_path, padded_base, images, boxes, placement):
    model = get_icmoe_model(padded_base, PLACEMENTS[placement]).eval()
    _randomise_outputs(model)
    model.save_pretrained(tmp_path / "model")
    loaded = IcMoeSamModel.from_pretrained(tmp_path / "model").eval()
    assert loaded.config.icmoe_config.expert_placement == placement
    with torch.no_grad():
        expected = model(pixel_values=images, input_boxes=boxes).pred_masks
        actual = loaded(pixel_values=images, input_boxes=boxes).pred_masks
    assert torch.allclose(actual, expected, atol=1e-6)
    # The SAM weights of an attention-placed model load back into SamModel under their own names.
    sam = SamModel.from_pretrained(tmp_path / "model")
    assert torch.equal(sam.vision_encoder.layers[0].attn.qkv.weight, padded_base.vision_encoder.layers[0].attn.qkv.weight)



def _set_fused(model: IcMoeSamModel, fused: bool) -> None:
    for module in model.modules():
        if isinstance(module, IcMoeAttentionQkv):
            module.fused_inference = fused


def test_fused_inference_equals_the_unfused_path(padded_base, images, boxes):
    """qkv, the experts' down projections and the router as one matmul: same masks, same routing, and the cached
    weights follow parameter changes."""
    model = get_icmoe_model(padded_base, ATTENTION).eval()
    _randomise_outputs(model)

    def run(fused: bool):
        _set_fused(model, fused)
        with torch.no_grad():
            return model(pixel_values=images, input_boxes=boxes, output_router_probs=True)

    unfused, fused = run(False), run(True)
    assert (fused.pred_masks - unfused.pred_masks).abs().max() <= 1e-5
    for a, b in zip(fused.routing, unfused.routing):
        assert torch.equal(a.top_k_indices, b.top_k_indices)
        torch.testing.assert_close(a.router_logits, b.router_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.pixel_logits, b.pixel_logits, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # an in-place change (an optimizer step) must reach the cached concatenation
        for layer in _layers(model):
            layer.experts.down_proj.mul_(1.5)
            layer.router.weight.add_(0.3)
    unfused, fused = run(False), run(True)
    assert (fused.pred_masks - unfused.pred_masks).abs().max() <= 1e-5
    # With autograd on, the unfused path runs, so gradients reach every expert parameter.
    _set_fused(model, True)
    model(pixel_values=images, input_boxes=boxes).pred_masks.sum().backward()
    assert _layers(model)[0].experts.down_proj.grad is not None


@pytest.mark.slow
@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
def test_eval_forward_compiles_as_one_graph(padded_base, images, boxes, placement):
    """The experts, routing and votes trace without a graph break (`fullgraph=True` raises on any), so
    `torch.compile` can fuse the whole encoder; the compiled model computes the eager model's masks."""
    model = get_icmoe_model(padded_base, PLACEMENTS[placement]).eval()
    _randomise_outputs(model)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        with torch.no_grad():
            expected = model(pixel_values=images, input_boxes=boxes).pred_masks
            actual = compiled(pixel_values=images, input_boxes=boxes).pred_masks
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
