"""Pixel-probability voting, shared experts, the contrastive loss, one label rule, and the voting diagnostics."""

from __future__ import annotations

import pytest
import torch

from modeling_icmoe import IcMoeAdapterConfig, get_icmoe_model
from modeling_icmoe.layer import IcMoeLayer
from modeling_icmoe.losses import semantic_contrastive_loss
from modeling_icmoe.router import IcMoeVotingRouter, pixel_confidence_scores
from training.diagnostics import VotingStats, load_by_kind, training_diagnostics
from training.methods import model_loss

ADAPTER = IcMoeAdapterConfig(
    expert_rank=4, contrastive_loss_coef=0.01, contrastive_samples_per_class=8, projection_dim=8
)


def _router(pixel_vote_weight: float) -> IcMoeVotingRouter:
    torch.manual_seed(0)
    return IcMoeVotingRouter(
        hidden_size=8, num_experts=4, top_k=2, temperature=1.0, jitter_noise=0.0, pixel_vote_weight=pixel_vote_weight
    ).eval()


def test_pixel_confidence_is_log_of_the_surer_probability():
    logits = torch.tensor([-3.0, 0.0, 2.0])
    probs = logits.sigmoid()
    torch.testing.assert_close(pixel_confidence_scores(logits), torch.maximum(probs, 1 - probs).log())


def test_pixel_votes_pick_the_confident_experts_without_labels():
    hidden = torch.randn(1, 3, 3, 8, generator=torch.Generator().manual_seed(1))
    # Experts 2 and 3 are sure of their pixel vote everywhere, experts 0 and 1 cannot tell.
    pixel_logits = torch.tensor([0.0, 0.0, 12.0, -12.0]).expand(1, 3, 3, 4)
    plain_logits, plain_votes, _ = _router(0.0)(hidden, pixel_logits)
    logits, votes, top_k = _router(50.0)(hidden, pixel_logits)
    torch.testing.assert_close(logits, plain_logits)  # the router's own scores do not change
    assert torch.all(top_k.sort(dim=-1).values == torch.tensor([2, 3]))
    torch.testing.assert_close(votes.sum(dim=-1), torch.ones(1, 3, 3))
    assert not torch.equal(votes, plain_votes)


def test_router_without_pixel_logits_is_a_plain_top_k_router():
    hidden = torch.randn(2, 2, 2, 8)
    logits, votes, top_k = _router(1.0)(hidden)
    assert torch.equal(top_k, logits.topk(2, dim=-1).indices)


def test_pixel_heads_get_gradients_from_the_segmentation_loss_through_the_votes(base_sam, images, boxes, masks):
    config = IcMoeAdapterConfig(expert_rank=4, pixel_vote_weight=1.0, pixel_loss_coef=0.0, vote_loss_coef=0.0)
    model = get_icmoe_model(base_sam, config).train()
    with torch.no_grad():  # non-zero output projections, so that the votes change the output
        for _, module in model.adapter_modules():
            module.experts.up_proj.normal_(std=0.1)
    model(pixel_values=images, input_boxes=boxes, labels=masks).loss.backward()
    head = next(m for m in model.modules() if isinstance(m, IcMoeLayer)).experts.pixel_head
    assert head.grad is not None and head.grad.abs().sum() > 0


def test_shared_experts_are_always_on_and_outside_the_votes(base_sam, images, boxes):
    config = IcMoeAdapterConfig(expert_rank=4, num_shared_experts=2, num_basic_experts=1, num_experts_per_tok=1)
    model = get_icmoe_model(base_sam, config).eval()
    layer = next(m for _, m in model.adapter_modules() if isinstance(m, IcMoeLayer))
    assert layer.experts.num_experts == 7 and layer.router.num_experts == 5
    with torch.no_grad():
        layer.experts.up_proj.normal_(std=0.1)
        outputs = model(pixel_values=images, input_boxes=boxes, output_router_probs=True)
        routing = outputs.routing[0]
        assert routing.votes.shape[-1] == 5 and routing.pixel_logits.shape[-1] == 7
        # The mixture is both shared experts at weight 1 plus the routed top-1 (the layer alone, without the base
        # output it is added to).
        hidden = torch.randn(1, 4, 4, 32)
        output, routing = layer(hidden)
        activations = layer.experts.bottleneck(hidden)
        weights = torch.cat([torch.ones(1, 4, 4, 2), routing.votes], dim=-1)
        expected = layer.scale * torch.einsum("bhwer,erc,bhwe->bhwc", activations, layer.experts.up_proj, weights)
        torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-5)


def test_contrastive_anchors_are_class_balanced_and_the_loss_can_reach_zero():
    labels = torch.zeros(2, 6, 6)
    labels[:, 1:3, 1:3] = 1  # 4 foreground against 32 background tokens per image
    separated = torch.zeros(2, 4, 6, 6)
    separated[:, 0] = 1 - labels
    separated[:, 1] = labels
    perfect = semantic_contrastive_loss(separated, labels, labels, samples_per_class=16, temperature=0.05)
    assert perfect < 1e-6
    mixed = torch.nn.functional.normalize(torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    assert semantic_contrastive_loss(mixed, labels, labels, samples_per_class=16, temperature=0.1) > 0.5


def test_contrastive_loss_falls_when_the_embeddings_learn():
    labels = torch.zeros(2, 8, 8)
    labels[0, 2:5, 2:6] = 1
    labels[1, 4:8, 1:4] = 1
    raw = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    optimizer = torch.optim.Adam([raw], lr=0.05)
    losses = []
    for step in range(30):
        loss = semantic_contrastive_loss(
            torch.nn.functional.normalize(raw, dim=1), labels, labels, samples_per_class=64, temperature=0.1,
            generator=torch.Generator().manual_seed(step),
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_baselines_and_icmoe_use_one_label_rule(base_sam, images, boxes):
    # Labels at another resolution than the masks: both paths must resize and binarise them the same way.
    labels = torch.zeros(2, 1, 100, 100, dtype=torch.uint8)
    labels[0, 0, 7:61, 11:57] = 255
    labels[1, 0, 30:90, 20:75] = 255
    fresh = get_icmoe_model(base_sam, ADAPTER).eval()  # computes what the base computes
    with torch.no_grad():
        icmoe_terms = fresh(pixel_values=images, input_boxes=boxes, labels=labels).loss_terms
        _, _, base_terms = model_loss(base_sam, {"pixel_values": images, "input_boxes": boxes}, labels)
    for name in ("dice", "bce", "iou"):
        torch.testing.assert_close(icmoe_terms[name], base_terms[name], msg=name)


@pytest.mark.parametrize("pixel_vote_weight", [0.0, 3.0])
def test_voting_diagnostics(base_sam, images, boxes, masks, pixel_vote_weight):
    config = IcMoeAdapterConfig(expert_rank=4, pixel_vote_weight=pixel_vote_weight)
    model = get_icmoe_model(base_sam, config).eval()
    with torch.no_grad():
        routing = model(pixel_values=images, input_boxes=boxes, output_router_probs=True).routing
    stats = VotingStats()
    stats.add(routing, masks[:, None], config)
    summary = stats.summary()
    assert stats.tokens == 2 * 8 * 8 * len(routing)
    assert 0 < summary["vote_entropy"] <= torch.log(torch.tensor(2.0)).item() + 1e-6
    if pixel_vote_weight == 0:
        assert summary["pixel_vote_agreement_gain"] == 0 and summary["pixel_vote_switch_rate"] == 0
    else:
        assert summary["pixel_vote_switch_rate"] > 0


def test_load_by_kind_and_loss_shares():
    config = IcMoeAdapterConfig()  # routed: basic, semantic, semantic, adaptive, adaptive
    load = [[0.1, 0.2, 0.2, 0.3, 0.2], [0.3, 0.2, 0.2, 0.1, 0.2]]
    assert load_by_kind(load, config) == {"basic": 0.2, "semantic": 0.4, "adaptive": 0.4}
    records = [
        {"step": 5, "loss_terms": {"dice": 0.5, "bce": 0.2, "iou": 0.1, "load_balance": 1.0, "contrastive": 2.0}},
        {"step": 10, "loss_terms": {"dice": 0.3, "bce": 0.1, "iou": 0.1, "load_balance": 1.0, "contrastive": 1.0}},
    ]
    result = training_diagnostics(records, config.loss_weights)
    assert sum(result["loss_term_share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert result["loss_term_share"]["load_balance"] == 0  # a perfectly balanced router has nothing left to reduce
    assert result["contrastive_loss_start"] == 2.0 and result["contrastive_loss_end"] == 1.0


def test_every_method_has_a_default_learning_rate():
    from training.arguments import parse_args
    from training.methods import DEFAULT_LEARNING_RATES, METHODS

    for method in METHODS:
        assert parse_args(["--method", method]).learning_rate == DEFAULT_LEARNING_RATES[method]
    assert parse_args(["--method", "icmoe", "--learning_rate", "5e-5"]).learning_rate == 5e-5
