"""The prompt-free semantic model: config, both decoders, the loss, what trains and what stays frozen, loading from
SAM and from a prompted IC-MoE checkpoint, full and adapter-only checkpoints, remote code."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForSemanticSegmentation, SamModel

from modeling_icmoe import (
    IcMoeAdapterConfig,
    IcMoeSamForSemanticSegmentation,
    IcMoeSamModel,
    IcMoeSamSemanticConfig,
    load_icmoe_adapter,
    save_icmoe_adapter,
)
from modeling_icmoe.losses import semantic_losses
from remote_code import run_without_package

CLASSES = {0: "background", 1: "liver", 2: "kidney", 3: "spleen"}
DECODERS = ["mask_tokens", "queries"]


def _class_map(seed: int = 0) -> torch.LongTensor:
    """Two 64 x 64 class maps: three rectangles of classes 1-3 on background."""
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, 8:28, 6:30] = 1
    labels[:, 36:58, 10:26] = 2
    labels[0, 30:60, 34:60] = 3  # class 3 only in the first image
    return labels


def _images(labels: torch.LongTensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(labels.shape[0], 3, *labels.shape[-2:], generator=generator) * 0.3
    return images + labels[:, None].float() * 0.8  # each class its own brightness


@pytest.fixture(params=DECODERS)
def semantic(request, tiny_base_dir) -> IcMoeSamForSemanticSegmentation:
    return IcMoeSamForSemanticSegmentation.from_pretrained(
        tiny_base_dir, id2label=CLASSES, semantic_decoder=request.param,
        icmoe_config=IcMoeAdapterConfig(expert_rank=4),
    )


# ------------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"semantic_decoder": "tokens"}, "`semantic_decoder` must be one of"),
        ({"num_query_tokens": 0}, "`num_query_tokens` must be at least 1"),
        ({"ce_loss_coef": -1.0}, "`ce_loss_coef` must be a finite number >= 0"),
        ({"id2label": {0: "background"}}, "at least 2 classes"),
        ({"id2label": {0: "background", 2: "liver"}}, "must name the classes 0 .. num_labels - 1"),
        ({"id2label": {0: "organ", 1: "organ"}}, "Class names must differ"),
    ],
)
def test_bad_semantic_configs_are_refused(sam_config, changes, message):
    with pytest.raises(ValueError, match=message):
        IcMoeSamSemanticConfig.from_sam_config(sam_config, **{"id2label": CLASSES, **changes})


def test_the_config_round_trips(sam_config):
    config = IcMoeSamSemanticConfig.from_sam_config(sam_config, id2label=CLASSES, semantic_decoder="queries",
                                                    num_query_tokens=3)
    again = IcMoeSamSemanticConfig.from_dict(config.to_dict())
    assert again.id2label == CLASSES and again.label2id == {name: index for index, name in CLASSES.items()}
    assert (again.semantic_decoder, again.num_query_tokens, again.num_labels) == ("queries", 3, 4)
    assert again.auto_map["AutoModelForSemanticSegmentation"] == "modeling_icmoe_semantic.IcMoeSamForSemanticSegmentation"


# ---------------------------------------------------------------------------------------------- forward and loss
def test_logits_and_loss(semantic):
    labels = _class_map()
    out = semantic(pixel_values=_images(labels), labels=labels)
    assert out.logits.shape == (2, 4, 32, 32)  # 4 x the tiny encoder's 8 x 8 grid
    assert set(out.loss_terms) == {"ce", "dice", "load_balance", "router_z", "vote", "pixel", "contrastive"}
    assert out.loss_terms["load_balance"] > 0 and out.loss_terms["pixel"] > 0  # the router terms are trained
    assert torch.isfinite(out.loss)
    assert semantic(pixel_values=_images(labels)).loss is None


def test_every_trained_parameter_gets_a_gradient_and_sam_stays_frozen(semantic):
    labels = _class_map()
    semantic(pixel_values=_images(labels), labels=labels).loss.backward()
    trained = {name for name, p in semantic.named_parameters() if p.requires_grad}
    assert not [name for name, p in semantic.named_parameters() if p.requires_grad and p.grad is None]
    assert any(name.startswith("semantic_head.") for name in trained)
    assert any(".icmoe." in name for name in trained)
    assert not any(name.startswith(("prompt_encoder.", "mask_decoder.iou_prediction_head.")) for name in trained)
    frozen_encoder = [name for name in trained if name.startswith("vision_encoder.") and ".icmoe." not in name]
    assert not frozen_encoder, frozen_encoder


@pytest.mark.slow
@pytest.mark.parametrize("decoder", DECODERS)
def test_training_lowers_the_loss_and_leaves_sam_bitwise_unchanged(tiny_base_dir, decoder):
    torch.manual_seed(0)  # the class queries start random: the same start whatever ran before
    model = IcMoeSamForSemanticSegmentation.from_pretrained(tiny_base_dir, id2label=CLASSES, semantic_decoder=decoder)
    sam = SamModel.from_pretrained(tiny_base_dir).state_dict()
    labels = _class_map()
    images = _images(labels)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(25):
        loss = model(pixel_values=images, labels=labels).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < 0.8 * losses[0], losses
    state = model.state_dict()
    for key in (k for k in sam if k.startswith(("vision_encoder.", "prompt_encoder."))):
        assert torch.equal(state[key], sam[key]), key


def test_the_mask_token_head_starts_from_sams_decoder(tiny_base_dir):
    model = IcMoeSamForSemanticSegmentation.from_pretrained(tiny_base_dir, id2label=CLASSES)
    decoder = SamModel.from_pretrained(tiny_base_dir).mask_decoder
    for index in range(4):
        assert torch.equal(model.semantic_head.class_tokens[index], decoder.mask_tokens.weight[index % 4])
        sam_mlp = decoder.output_hypernetworks_mlps[index % 4].state_dict()
        for name, tensor in model.semantic_head.hypernetworks[index].state_dict().items():
            assert torch.equal(tensor, sam_mlp[name]), (index, name)


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.full((2, 64, 64), 4), r"values \[4\] that are not classes of this model \(ids 0 .. 3\)"),
        (torch.full((2, 64, 64), 0.5), "integer class ids"),
        (torch.zeros(2, 2, 64, 64, dtype=torch.long), r"shape \(batch_size, height, width\)"),
        (torch.zeros(3, 64, 64, dtype=torch.long), "batch size 3 but the images have 2"),
        (torch.zeros(2, 64, 32, dtype=torch.long), "do not have the aspect ratio"),
    ],
)
def test_bad_labels_are_named(semantic, labels, message):
    with pytest.raises(ValueError, match=message):
        semantic(pixel_values=torch.zeros(2, 3, 64, 64), labels=labels)


def test_semantic_losses_match_monai():
    from monai.losses import DiceLoss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 16, 16, generator=generator)
    labels = torch.randint(0, 4, (3, 16, 16), generator=generator)
    labels[:, :, :] = torch.where(labels == 3, 0, labels)  # class 3 absent from the batch
    terms = semantic_losses(logits, labels)
    reference = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True, smooth_nr=1e-5,
                         smooth_dr=1e-5)(logits, labels[:, None])
    assert terms["dice"].item() == pytest.approx(reference.item(), abs=1e-6)
    assert terms["ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), abs=1e-6)
    perfect = semantic_losses(torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 50, labels)
    assert perfect["dice"].item() < 1e-6 and perfect["ce"].item() < 1e-6


# --------------------------------------------------------------------------------------------------- loading
def test_built_from_a_prompted_icmoe_checkpoint_keeps_its_experts(tmp_path, tiny_base_dir):
    prompted = IcMoeSamModel.from_pretrained(tiny_base_dir, icmoe_config=IcMoeAdapterConfig(expert_rank=4))
    with torch.no_grad():
        for _, module in prompted.adapter_modules():
            for tensor in module.parameters():
                tensor.add_(0.01)  # trained experts, not fresh ones
        prompted.mask_decoder.transformer.layers[0].mlp.lin1.weight.add_(0.01)
    prompted.save_pretrained(tmp_path / "prompted")
    semantic = IcMoeSamForSemanticSegmentation.from_pretrained(tmp_path / "prompted", id2label=CLASSES)
    assert semantic.config.icmoe_config.expert_rank == 4
    state = semantic.state_dict()
    for key, tensor in prompted.state_dict().items():
        assert torch.equal(state[key], tensor), key
    with pytest.raises(ValueError, match="its experts are kept with their own configuration"):
        IcMoeSamForSemanticSegmentation.from_pretrained(tmp_path / "prompted", id2label=CLASSES,
                                                        icmoe_config=IcMoeAdapterConfig())
    with pytest.raises(ValueError, match="holds a `icmoe_sam_semantic` model; IcMoeSamModel loads"):
        semantic.save_pretrained(tmp_path / "semantic")
        IcMoeSamModel.from_pretrained(tmp_path / "semantic")


def _as_if_trained(model) -> None:
    with torch.no_grad():
        for tensor in (p for p in model.parameters() if p.requires_grad):
            tensor.add_(0.01 * torch.randn_like(tensor))


@pytest.mark.slow
def test_full_checkpoint_loads_through_the_auto_classes_and_as_remote_code(tmp_path, semantic):
    labels = _class_map()
    images = _images(labels)
    _as_if_trained(semantic)  # a loaded head must keep its trained tokens, not start again from SAM's
    semantic.eval()
    with torch.no_grad():
        expected = semantic(pixel_values=images).logits
    semantic.save_pretrained(tmp_path / "model")
    for auto_class in (AutoModelForSemanticSegmentation, AutoModel):
        loaded = auto_class.from_pretrained(tmp_path / "model").eval()
        assert type(loaded) is IcMoeSamForSemanticSegmentation
        with torch.no_grad():
            assert torch.equal(loaded(pixel_values=images).logits, expected)
    torch.save({"images": images, "expected": expected}, tmp_path / "io.pt")
    run_without_package(
        f"""
        import torch
        from transformers import AutoModel, AutoModelForSemanticSegmentation
        io = torch.load({str(tmp_path / "io.pt")!r})
        for auto_class in (AutoModelForSemanticSegmentation, AutoModel):
            model = auto_class.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
            assert type(model).__name__ == "IcMoeSamForSemanticSegmentation", type(model)
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            with torch.no_grad():
                logits = model(pixel_values=io["images"]).logits
            assert torch.equal(logits, io["expected"]), (logits - io["expected"]).abs().max()
        """,
        tmp_path,
    )


def test_adapter_only_checkpoint_round_trip(tmp_path, tiny_base_dir, semantic):
    labels = _class_map()
    images = _images(labels)
    _as_if_trained(semantic)
    semantic.eval()
    with torch.no_grad():
        expected = semantic(pixel_values=images).logits
    save_icmoe_adapter(semantic, tmp_path / "adapter")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter" / "icmoe_adapter_model.safetensors")
    assert any(key.startswith("semantic_head.") for key in saved)
    assert not any(key.startswith(("mask_decoder.iou_prediction_head.", "vision_encoder.patch_embed")) for key in saved)
    for base in (str(tiny_base_dir), SamModel.from_pretrained(tiny_base_dir)):
        loaded = load_icmoe_adapter(base, tmp_path / "adapter")
        assert type(loaded) is IcMoeSamForSemanticSegmentation
        assert loaded.config.id2label == CLASSES
        assert loaded.config.semantic_decoder == semantic.config.semantic_decoder
        with torch.no_grad():
            assert torch.equal(loaded(pixel_values=images).logits, expected)
