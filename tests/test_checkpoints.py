"""Checkpoints: full save/load through the Auto classes (also as remote code), adapter-only round trips."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForMaskGeneration, SamModel

from helpers import train_steps
from modeling_icmoe import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    IcMoeAdapterConfig,
    IcMoeSamConfig,
    IcMoeSamModel,
    get_icmoe_model,
    load_icmoe_adapter,
    save_icmoe_adapter,
)
from remote_code import run_without_package


@pytest.fixture
def trained(base_sam, images, boxes, masks) -> IcMoeSamModel:
    """An IC-MoE model after a few steps, so adapters and decoder differ from their initial values."""
    model = get_icmoe_model(base_sam, IcMoeAdapterConfig(expert_rank=4, projection_dim=8))
    return train_steps(model, images, boxes, masks, steps=3)


def _masks(model, images, boxes) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=images, input_boxes=boxes).pred_masks


def test_auto_classes_registered():
    assert AutoConfig.for_model("icmoe_sam").__class__ is IcMoeSamConfig


@pytest.mark.parametrize("auto_class", [AutoModel, AutoModelForMaskGeneration])
def test_save_and_auto_load_identical(tmp_path, trained, images, boxes, auto_class):
    trained.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "icmoe_sam"
    assert config["auto_map"]["AutoModelForMaskGeneration"] == "modeling_icmoe_sam.IcMoeSamModel"
    for code in ("modeling_icmoe_sam.py", "configuration_icmoe_sam.py", "layer.py", "router.py", "experts.py", "losses.py",
                 "placement.py"):
        assert (tmp_path / code).is_file(), code
    loaded = auto_class.from_pretrained(tmp_path)
    assert isinstance(loaded, IcMoeSamModel)
    assert torch.equal(_masks(loaded, images, boxes), _masks(trained, images, boxes))
    # Loading keeps the freezing of the original.
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == {
        n for n, p in trained.named_parameters() if p.requires_grad
    }


@pytest.mark.slow
def test_remote_code_in_fresh_process_without_package(tmp_path, trained, images, boxes):
    trained.save_pretrained(tmp_path / "model")
    torch.save({"images": images, "boxes": boxes, "expected": _masks(trained, images, boxes)}, tmp_path / "io.pt")
    run_without_package(
        f"""
        import torch
        from transformers import AutoModel, AutoModelForMaskGeneration
        io = torch.load({str(tmp_path / "io.pt")!r})
        for auto_class in (AutoModel, AutoModelForMaskGeneration):
            model = auto_class.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            with torch.no_grad():
                masks = model(pixel_values=io["images"], input_boxes=io["boxes"]).pred_masks
            assert torch.equal(masks, io["expected"]), (masks - io["expected"]).abs().max()
        """,
        tmp_path,
    )


def test_sam_weights_load_back_into_sam_model(tmp_path, base_sam, trained, images, boxes):
    trained.save_pretrained(tmp_path)
    sam = SamModel.from_pretrained(tmp_path)
    assert type(sam) is SamModel
    state = sam.state_dict()
    for key, value in base_sam.state_dict().items():
        expected = trained.state_dict()[key] if key.startswith("mask_decoder.") else value
        assert torch.equal(state[key], expected), key


def test_adapter_round_trip_exact(tmp_path, base_sam, trained, images, boxes):
    written = save_icmoe_adapter(trained, tmp_path / "adapter")
    assert sorted(p.name for p in written) == sorted([ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME])
    assert not (tmp_path / "adapter" / "adapter_config.json").exists()
    state = load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME)
    assert set(state) == set(trained.trainable_state_dict())
    assert not any(k.startswith(("vision_encoder.patch_embed", "prompt_encoder.")) for k in state)

    from_memory = load_icmoe_adapter(base_sam, tmp_path / "adapter")
    assert torch.equal(_masks(from_memory, images, boxes), _masks(trained, images, boxes))

    base_sam.save_pretrained(tmp_path / "base")
    from_disk = load_icmoe_adapter(str(tmp_path / "base"), tmp_path / "adapter")
    assert torch.equal(_masks(from_disk, images, boxes), _masks(trained, images, boxes))


def test_adapter_is_small(tmp_path, trained):
    trained.save_pretrained(tmp_path / "full")
    save_icmoe_adapter(trained, tmp_path / "adapter")
    full = (tmp_path / "full" / "model.safetensors").stat().st_size
    adapter = (tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME).stat().st_size
    assert adapter < full


def test_adapter_errors(tmp_path, base_sam, trained):
    with pytest.raises(ValueError, match="is not an IC-MoE adapter folder"):
        load_icmoe_adapter(base_sam, tmp_path)
    save_icmoe_adapter(trained, tmp_path / "adapter")
    (tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_icmoe_adapter(base_sam, tmp_path / "adapter")
    other = get_icmoe_model(base_sam, IcMoeAdapterConfig(expert_rank=2, train_mask_decoder=False))
    save_icmoe_adapter(other, tmp_path / "small")
    config = json.loads((tmp_path / "small" / ADAPTER_CONFIG_NAME).read_text())
    config["expert_rank"] = 4
    (tmp_path / "small" / ADAPTER_CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="has shape"):
        load_icmoe_adapter(base_sam, tmp_path / "small")


def test_wrapping_an_icmoe_checkpoint_again_raises(tmp_path, trained):
    trained.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="already an IC-MoE checkpoint"):
        IcMoeSamModel.from_pretrained(tmp_path, icmoe_config={"expert_rank": 2})
