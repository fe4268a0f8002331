"""IcMoeSamModel: equivalence with the base SAM when fresh, freezing, routing, losses, input checks."""

from __future__ import annotations

import pytest
import torch
from transformers import SamModel

from helpers import train_steps
from modeling_icmoe import IcMoeAdapterConfig, IcMoeSamModel, get_icmoe_model
from modeling_icmoe.modeling_icmoe_sam import LOSS_TERMS, IcMoeProjectionHead
from modeling_icmoe.layer import IcMoeLayer

ADAPTER = IcMoeAdapterConfig(
    expert_rank=4, contrastive_loss_coef=0.01, contrastive_samples_per_class=8, projection_dim=8
)


def _icmoe_layers(model) -> list[IcMoeLayer]:
    return [m for m in model.modules() if isinstance(m, IcMoeLayer)]


@pytest.fixture
def model(base_sam) -> IcMoeSamModel:
    return get_icmoe_model(base_sam, ADAPTER).eval()


def _prompts(kind: str, boxes: torch.Tensor) -> dict:
    if kind == "box":
        return {"input_boxes": boxes}
    points = torch.stack([(boxes[..., :2] + boxes[..., 2:]) / 2], dim=2)  # (B, 1, 1, 2): box centres
    return {"input_points": points, "input_labels": torch.ones(points.shape[:3], dtype=torch.long)}


@pytest.mark.parametrize("prompt", ["box", "point"])
@pytest.mark.parametrize("multimask_output", [True, False])
def test_fresh_model_matches_base(base_sam, model, images, boxes, prompt, multimask_output):
    inputs = {"pixel_values": images, "multimask_output": multimask_output, **_prompts(prompt, boxes)}
    with torch.no_grad():
        expected = base_sam(**inputs)
        actual = model(**inputs)
    # The base must do real work, or the comparison would prove nothing.
    assert expected.pred_masks.abs().max() > 1e-2
    assert (actual.pred_masks - expected.pred_masks).abs().max() <= 1e-5
    assert (actual.iou_scores - expected.iou_scores).abs().max() <= 1e-5


def test_from_pretrained_sam_checkpoint_matches_base(tmp_path, base_sam, images, boxes):
    base_sam.save_pretrained(tmp_path / "sam")
    model = IcMoeSamModel.from_pretrained(tmp_path / "sam", icmoe_config=ADAPTER).eval()
    assert model.config.icmoe_config.base_model_name_or_path == str(tmp_path / "sam")
    with torch.no_grad():
        expected = base_sam(pixel_values=images, input_boxes=boxes).pred_masks
        actual = model(pixel_values=images, input_boxes=boxes).pred_masks
    assert (actual - expected).abs().max() <= 1e-5
    # Adapters were initialised by their own scheme, not SAM's 1e-10 range or left empty.
    experts = _icmoe_layers(model)[0].experts
    assert 0.05 < experts.down_proj.std() < 1.0
    assert torch.count_nonzero(experts.up_proj) == 0


def test_only_adapters_and_decoder_train(model):
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable
    for name in trainable:
        assert ".icmoe." in name or name.startswith(("icmoe_projection.", "mask_decoder.")), name
    assert any(name.startswith("mask_decoder.") for name in trainable)
    for name, p in model.named_parameters():
        if name.startswith(("vision_encoder.", "prompt_encoder.", "shared_image_embedding.")) and ".icmoe." not in name:
            assert not p.requires_grad, name


def test_frozen_decoder_option(base_sam):
    model = get_icmoe_model(base_sam, IcMoeAdapterConfig(expert_rank=4, train_mask_decoder=False))
    assert not any(p.requires_grad for p in model.mask_decoder.parameters())
    assert all(not k.startswith("mask_decoder.") for k in model.trainable_state_dict())


def _assert_gradients_reach_every_adapter_tensor(model) -> None:
    # The zero-initialised output projections open the path to the rest on the first step.
    for name, module in model.adapter_modules():
        for pname, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname}"


def test_training_reaches_adapters_and_leaves_base_bitwise_unchanged(base_sam, model, images, boxes, masks):
    base_state = {k: v.clone() for k, v in base_sam.state_dict().items()}
    train_steps(model, images, boxes, masks, steps=3, weight_decay=0.1)
    _assert_gradients_reach_every_adapter_tensor(model)
    state = model.state_dict()
    for key, value in base_state.items():
        if key.startswith("mask_decoder."):
            continue
        assert torch.equal(state[key], value), key
    assert any(not torch.equal(state[k], v) for k, v in base_state.items() if k.startswith("mask_decoder."))
    with torch.no_grad():
        assert model.eval()(pixel_values=images, input_boxes=boxes).pred_masks.sub(
            base_sam(pixel_values=images, input_boxes=boxes).pred_masks
        ).abs().max() > 1e-4


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_router_votes_are_top_k_and_sum_to_one(base_sam, images, boxes, top_k):
    model = get_icmoe_model(base_sam, IcMoeAdapterConfig(expert_rank=4, num_experts_per_tok=top_k)).eval()
    with torch.no_grad():
        outputs = model(pixel_values=images, input_boxes=boxes, output_router_probs=True)
    assert len(outputs.router_probs) == base_sam.config.vision_config.num_hidden_layers
    for votes in outputs.router_probs:
        assert votes.shape == (2, 8, 8, 5)  # the routed experts: 6 less the shared one
        assert torch.all((votes > 0).sum(dim=-1) == top_k)
        torch.testing.assert_close(votes.sum(dim=-1), torch.ones(votes.shape[:-1]))


def test_target_layers_limit_injection(base_sam, images, boxes):
    model = get_icmoe_model(base_sam, IcMoeAdapterConfig(expert_rank=4, target_layers=[1])).eval()
    layers = [
        i for i, block in enumerate(model.vision_encoder.layers) if any(isinstance(m, IcMoeLayer) for m in block.modules())
    ]
    assert layers == [1]
    with torch.no_grad():
        assert len(model(pixel_values=images, input_boxes=boxes, output_router_probs=True).router_probs) == 1


def test_eval_is_deterministic_and_needs_no_labels(model, images, boxes):
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    masks = torch.zeros(2, 64, 64)
    masks[:, 10:40, 10:40] = 1
    model(pixel_values=images, input_boxes=boxes, labels=masks).loss.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        first = model(pixel_values=images, input_boxes=boxes)
        second = model(pixel_values=images, input_boxes=boxes)
    assert first.loss is None and first.loss_terms is None
    assert torch.equal(first.pred_masks, second.pred_masks)


@pytest.mark.parametrize("fill", ["empty", "full", "mixed"])
def test_loss_and_terms_finite(model, images, boxes, fill):
    labels = torch.zeros(2, 64, 64) if fill != "full" else torch.ones(2, 64, 64)
    if fill == "mixed":
        labels[0, 8:30, 8:30] = 1
    model.train()
    outputs = model(pixel_values=images, input_boxes=boxes, labels=labels)
    assert torch.isfinite(outputs.loss)
    assert set(outputs.loss_terms) == set(LOSS_TERMS)
    for name, value in outputs.loss_terms.items():
        assert torch.isfinite(value), name
    outputs.loss.backward()
    head = model.icmoe_projection.dense
    assert head.grad is not None  # kept in the graph even when no image gives contrastive anchors


@pytest.mark.parametrize("encode", [lambda m: m.bool(), lambda m: m * 255, lambda m: m.long()])
def test_label_encodings_agree(model, images, boxes, masks, encode):
    torch.manual_seed(0)
    reference = model(pixel_values=images, input_boxes=boxes, labels=masks).loss_terms
    torch.manual_seed(0)
    other = model(pixel_values=images, input_boxes=boxes, labels=encode(masks)).loss_terms
    for name in ("dice", "bce", "iou", "pixel"):
        torch.testing.assert_close(reference[name], other[name])


def test_labels_at_other_resolution_and_per_prompt(model, images, boxes):
    two_boxes = torch.cat([boxes, boxes - 2], dim=1)  # (B, 2, 4)
    labels = torch.zeros(2, 2, 128, 128)  # twice the images' resolution, the same frame
    labels[:, :, 10:80, 10:70] = 1
    outputs = model(pixel_values=images, input_boxes=two_boxes, labels=labels)
    assert outputs.pred_masks.shape[:2] == (2, 2)
    assert torch.isfinite(outputs.loss)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.full((2, 64, 64), 3.0), r"`labels` values \[3\] are not binary"),
        (torch.zeros(3, 64, 64), "batch size 3 but the images have 2"),
        (torch.zeros(2, 2, 64, 64), "2 mask\\(s\\) per image but the prompts ask for 1"),
        (torch.zeros(64, 64), "shape \\(batch_size, height, width\\)"),
        (torch.full((2, 64, 64), float("nan")), "NaN"),
    ],
)
def test_bad_labels_raise(model, images, boxes, labels, message):
    with pytest.raises(ValueError, match=message):
        model(pixel_values=images, input_boxes=boxes, labels=labels)


def test_bad_pixel_values_raise(model, boxes):
    with pytest.raises(ValueError, match="pixel_values.*\\(batch_size, channels, height, width\\)"):
        model(pixel_values=torch.zeros(3, 64, 64), input_boxes=boxes)


def test_no_contrastive_head_when_coefficient_zero(base_sam, images, boxes, masks):
    model = get_icmoe_model(base_sam, IcMoeAdapterConfig(expert_rank=4, contrastive_loss_coef=0.0))
    assert model.icmoe_projection is None
    assert not any(isinstance(m, IcMoeProjectionHead) for _, m in model.adapter_modules())
    assert model(pixel_values=images, input_boxes=boxes, labels=masks).loss_terms["contrastive"] == 0


def test_image_embeddings_path(model, images, boxes):
    with torch.no_grad():
        embeddings = model.get_image_embeddings(images)
        direct = model(pixel_values=images, input_boxes=boxes)
        cached = model(image_embeddings=embeddings, input_boxes=boxes)
    torch.testing.assert_close(direct.pred_masks, cached.pred_masks)


def test_get_icmoe_model_rejects_wrong_inputs(model):
    with pytest.raises(ValueError, match="already has IC-MoE adapters"):
        get_icmoe_model(model, ADAPTER)
    with pytest.raises(ValueError, match="needs a transformers SamModel"):
        get_icmoe_model(torch.nn.Linear(2, 2), ADAPTER)


def test_experts_are_stacked_not_module_lists(model):
    layer = next(m for _, m in model.adapter_modules() if isinstance(m, IcMoeLayer))
    assert layer.experts.down_proj.shape == (6, 4, 32)
    assert layer.experts.up_proj.shape == (6, 4, 3 * 32)  # the default placement adds to queries, keys and values
    assert not any(isinstance(m, torch.nn.ModuleList) for m in layer.modules())


def test_base_model_class_unchanged(model):
    assert isinstance(model, SamModel)
    sam_keys = set(SamModel(model.config).state_dict())
    assert sam_keys <= set(model.state_dict())


def test_training_after_inference_mode(model, images, boxes, masks):
    with torch.inference_mode():
        model(pixel_values=images, input_boxes=boxes)
    model.train()
    model(pixel_values=images, input_boxes=boxes, labels=masks).loss.backward()
    assert _icmoe_layers(model)[0].experts.semantic_kernel.grad is not None


def test_activation_checkpointing_gives_the_same_gradients(base_sam, images, boxes, masks):
    config = IcMoeAdapterConfig(expert_rank=4, router_jitter_noise=0.0, contrastive_loss_coef=0.0)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = get_icmoe_model(base_sam, config)
        with torch.no_grad():  # non-zero output projections, so that every adapter tensor gets a gradient
            for _, module in model.adapter_modules():
                module.experts.up_proj.normal_(std=0.1)
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(pixel_values=images, input_boxes=boxes, labels=masks).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and ".icmoe." in n})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_reentrant_checkpointing_is_refused(model):
    with pytest.raises(ValueError, match="non-reentrant"):
        model.activation_checkpointing_enable({"use_reentrant": True})


def test_absent_expert_kinds_have_no_parameters(base_sam, images, boxes, masks):
    config = IcMoeAdapterConfig(num_basic_experts=1, num_semantic_experts=0, num_adaptive_experts=0,
                                num_experts_per_tok=1, expert_rank=4)
    model = get_icmoe_model(base_sam, config).train()
    assert all(p.numel() > 0 for p in model.parameters())
    model(pixel_values=images, input_boxes=boxes, labels=masks).loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused  # DDP without find_unused_parameters needs every trainable tensor used


def test_config_return_dict_false_gives_the_tuple(base_sam, images, boxes):
    model = get_icmoe_model(base_sam, IcMoeAdapterConfig()).eval()
    with torch.no_grad():
        expected = model(pixel_values=images, input_boxes=boxes)
        model.config.return_dict = False
        output = model(pixel_values=images, input_boxes=boxes)
        assert isinstance(output, tuple)
        torch.testing.assert_close(output[0], expected.iou_scores)
        torch.testing.assert_close(output[1], expected.pred_masks)
        assert type(model(pixel_values=images, input_boxes=boxes, return_dict=True)).__name__ == "IcMoeSamOutput"


def test_labels_of_another_aspect_ratio_are_refused(base_sam, images, boxes):
    model = get_icmoe_model(base_sam, IcMoeAdapterConfig())
    stretched = torch.zeros(2, 64, 40)
    stretched[:, 10:30, 10:30] = 1
    with pytest.raises(ValueError, match=r"`labels` of size \(64, 40\) do not have the aspect ratio"):
        model(pixel_values=images, input_boxes=boxes, labels=stretched)
    model(pixel_values=images, input_boxes=boxes, labels=torch.nn.functional.pad(stretched, (0, 24)))  # same frame


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "empty"])
def test_corrupt_weights_file_is_named(base_sam, tmp_path, damage):
    get_icmoe_model(base_sam, IcMoeAdapterConfig()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "zeroed": bytes(200), "empty": b""}[damage])
    with pytest.raises(OSError, match=rf"{weights}: truncated or corrupt safetensors"):
        IcMoeSamModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("box, message", [
    ([[[4.0, 6.0, 40.0]], [[1.0, 1.0, 9.0]]], r"shape \(batch_size, num_boxes, 4\)"),
    ([[[4.0, 6.0, 40.0, float("nan")]], [[1.0, 1.0, 9.0, 9.0]]], "NaN or infinite"),
    ([[[40.0, 6.0, 4.0, 44.0]], [[1.0, 1.0, 9.0, 9.0]]], r"x0 <= x1 and y0 <= y1, got \[\[40.0, 6.0, 4.0, 44.0\]\]"),
    ([[[-3.0, 6.0, 40.0, 44.0]], [[1.0, 1.0, 9.0, 9.0]]], r"reach outside the input frame \(64 x 64 pixels"),
    ([[[4.0, 6.0, 40.0, 44.0]], [[1.0, 1.0, 9.0, 65.0]]], "reach outside the input frame"),
])
def test_bad_boxes_raise(base_sam, images, box, message):
    model = get_icmoe_model(base_sam, IcMoeAdapterConfig()).eval()
    with pytest.raises(ValueError, match=message):
        model(pixel_values=images, input_boxes=torch.tensor(box))


def test_zero_width_box_of_a_thin_object_is_accepted(base_sam, images):
    model = get_icmoe_model(base_sam, IcMoeAdapterConfig()).eval()
    with torch.no_grad():
        outputs = model(pixel_values=images, input_boxes=torch.tensor([[[10.0, 5.0, 10.0, 30.0]], [[0.0, 0.0, 64.0, 64.0]]]))
    assert torch.isfinite(outputs.pred_masks).all()


def test_linear_experts_are_linear_in_the_block_input():
    """`expert_activation="identity"`: the basic experts' bottleneck is the down projection itself; the default
    applies GELU to it; `"gelu_routed"` applies it to the routed experts only."""
    from modeling_icmoe.experts import IcMoeExperts

    torch.manual_seed(0)
    kwargs = dict(hidden_size=16, rank=4, num_shared=1, num_basic=1, num_semantic=0, num_adaptive=0,
                  semantic_dilations=[])
    linear, gelu = IcMoeExperts(**kwargs, activation="identity"), IcMoeExperts(**kwargs)
    gelu.load_state_dict(linear.state_dict())
    hidden = torch.randn(2, 3, 3, 16)
    down = torch.einsum("bhwc,erc->bhwer", hidden, linear.down_proj) + linear.down_bias
    torch.testing.assert_close(linear.bottleneck(hidden), down)
    torch.testing.assert_close(gelu.bottleneck(hidden), torch.nn.functional.gelu(down))
    mixed = IcMoeExperts(**kwargs, activation="gelu_routed")
    mixed.load_state_dict(linear.state_dict())
    # Shared expert first: linear; the routed basic expert keeps its GELU.
    torch.testing.assert_close(mixed.bottleneck(hidden)[..., 0, :], down[..., 0, :])
    torch.testing.assert_close(mixed.bottleneck(hidden)[..., 1, :], torch.nn.functional.gelu(down[..., 1, :]))
    with pytest.raises(ValueError, match="activation"):
        IcMoeExperts(**kwargs, activation="tanh")


@pytest.mark.parametrize("activation", ["identity", "gelu_routed"])
def test_linear_experts_train(base_sam, images, boxes, masks, activation):
    model = get_icmoe_model(base_sam, IcMoeAdapterConfig(expert_activation=activation))
    train_steps(model, images, boxes, masks, steps=2)
    _assert_gradients_reach_every_adapter_tensor(model)


def test_routed_scaling_factor_scales_the_routed_experts_alone():
    """`routed_scaling_factor` multiplies the routed experts' votes and nothing else: the routing is unchanged and the
    mixture is `shared + factor * routed`."""
    torch.manual_seed(0)
    layers = {f: IcMoeLayer(hidden_size=16, config=IcMoeAdapterConfig(expert_rank=4, routed_scaling_factor=f))
              for f in (1.0, 3.0)}
    state = layers[1.0].state_dict()
    state["experts.up_proj"] = torch.randn_like(state["experts.up_proj"])  # zero at initialisation
    shared_only = {**state, "experts.up_proj": state["experts.up_proj"].clone()}
    shared_only["experts.up_proj"][layers[1.0].num_shared:] = 0
    hidden = torch.randn(2, 5, 5, 16)

    def run(layer, weights):
        layer.load_state_dict(weights)
        with torch.no_grad():
            return layer.eval()(hidden)

    (plain, routing), (scaled, scaled_routing) = run(layers[1.0], state), run(layers[3.0], state)
    shared, _ = run(layers[1.0], shared_only)
    routed = plain - shared
    assert routed.abs().max() > 1e-3 and shared.abs().max() > 1e-3
    torch.testing.assert_close(scaled_routing.votes, routing.votes)
    torch.testing.assert_close(scaled, shared + 3.0 * routed)
