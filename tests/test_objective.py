"""The training objective (`losses.icmoe_objective`) and the routing records' routed-only views."""

from __future__ import annotations

import torch

from modeling_icmoe import IcMoeAdapterConfig, IcMoeSamForSemanticSegmentation, get_icmoe_model
from modeling_icmoe.losses import AUXILIARY_TERMS, icmoe_objective, routing_losses
from modeling_icmoe.modeling_icmoe_sam import LOSS_TERMS, wrap_sam_model

CONFIG = {"expert_rank": 4, "num_shared_experts": 2, "contrastive_loss_coef": 0.1, "vote_loss_coef": 0.3}


def _hand_sum(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float32)
    for name, weight in weights.items():
        total = total + weight * terms[name]
    return total


def test_the_prompted_loss_is_the_weighted_sum_of_its_terms(base_sam, images, boxes, masks):
    model = get_icmoe_model(base_sam, IcMoeAdapterConfig(**CONFIG)).train()
    outputs = model(pixel_values=images, input_boxes=boxes, labels=masks)
    weights = model.config.icmoe_config.loss_weights
    assert tuple(outputs.loss_terms) == LOSS_TERMS == tuple(weights)
    assert outputs.loss_terms["contrastive"] > 0 and outputs.loss_terms["vote"] > 0
    assert torch.equal(outputs.loss.detach(), _hand_sum(outputs.loss_terms, weights))


def test_the_prompt_free_loss_is_the_weighted_sum_of_its_terms(base_sam, images, masks):
    classes = {0: "background", 1: "organ", 2: "lesion"}
    model = wrap_sam_model(base_sam, IcMoeAdapterConfig(**CONFIG), IcMoeSamForSemanticSegmentation,
                           id2label=classes).train()
    labels = masks.long()
    labels[0, 10:20, 10:20] = 2
    model.config.ce_loss_coef, model.config.dice_loss_coef = 0.7, 1.3
    outputs = model(pixel_values=images, labels=labels)
    weights = model.objective_weights()
    assert tuple(weights) == ("ce", "dice", *AUXILIARY_TERMS) == tuple(outputs.loss_terms)
    assert weights["ce"] == 0.7 and weights["dice"] == 1.3
    assert torch.equal(outputs.loss.detach(), _hand_sum(outputs.loss_terms, weights))


def test_the_objective_is_a_pure_function_of_the_routing(base_sam, images, boxes, masks):
    config = IcMoeAdapterConfig(**CONFIG)
    model = get_icmoe_model(base_sam, config).eval()
    with torch.no_grad():
        routings = model(pixel_values=images, input_boxes=boxes, output_router_probs=True).routing
    task = {"dice": torch.tensor(0.5), "bce": torch.tensor(0.25), "iou": torch.tensor(0.125)}
    loss, terms = icmoe_objective(task, config.loss_weights, routings=routings, foreground=masks,
                                  adapter_config=config)
    again, _ = icmoe_objective(task, config.loss_weights, routings=routings, foreground=masks, adapter_config=config)
    assert torch.equal(loss, again)
    assert {name: terms[name] for name in ("load_balance", "router_z", "vote", "pixel")} == routing_losses(
        routings, masks, config
    )
    assert terms["contrastive"] == 0  # no projection head's embeddings given
    no_layers, empty = icmoe_objective(task, config.loss_weights, routings=(), foreground=masks, adapter_config=config)
    assert torch.equal(no_layers, torch.tensor(0.875)) and all(empty[name] == 0 for name in AUXILIARY_TERMS)


def test_routing_records_expose_the_routed_experts(base_sam, images, boxes):
    model = get_icmoe_model(base_sam, IcMoeAdapterConfig(**CONFIG)).eval()
    with torch.no_grad():
        routing = model(pixel_values=images, input_boxes=boxes, output_router_probs=True).routing[0]
    assert routing.num_shared_experts == 2
    assert routing.routed_pixel_logits.shape == routing.votes.shape == routing.router_logits.shape
    assert torch.equal(routing.routed_pixel_logits, routing.pixel_logits[..., 2:])
    assert "routed_pixel_logits" not in routing.keys()  # a view, not a field of the output
