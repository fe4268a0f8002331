"""IcMoeAdapterConfig / IcMoeSamConfig: defaults, validation and JSON round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from modeling_icmoe import IcMoeAdapterConfig, IcMoeSamConfig, IcMoeSamModel


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_experts_per_tok": 7}, "num_experts_per_tok"),
        ({"num_experts_per_tok": 0}, "num_experts_per_tok"),
        ({"expert_rank": 0}, "expert_rank"),
        ({"expert_rank": -3}, "expert_rank"),
        ({"num_basic_experts": 0, "num_semantic_experts": 0, "num_adaptive_experts": 0}, "at least one routed expert"),
        ({"num_basic_experts": -1}, "num_basic_experts"),
        ({"semantic_dilations": [1]}, "semantic_dilations"),
        ({"semantic_dilations": [0, 1]}, "semantic_dilations"),
        ({"target_layers": [1, 1]}, "target_layers"),
        ({"target_layers": [-1]}, "target_layers"),
        ({"router_jitter_noise": 1.5}, "router_jitter_noise"),
        ({"vote_temperature": 0.0}, "vote_temperature"),
        ({"contrastive_temperature": -1.0}, "contrastive_temperature"),
        ({"router_aux_loss_coef": -0.1}, "router_aux_loss_coef"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"expert_rank": 2.5}, r"`expert_rank` must be an integer, got 2.5"),
        ({"num_semantic_experts": True}, "`num_semantic_experts` must be an integer"),
        ({"num_experts_per_tok": "2"}, "`num_experts_per_tok` must be an integer"),
        ({"target_layers": [0, 1.5]}, "`target_layers` must be an integer, got 1.5"),
        ({"target_layers": 3}, "`target_layers` must be a list of integers"),
        ({"semantic_dilations": [1, float("nan")]}, "`semantic_dilations` must be an integer"),
        ({"vote_temperature": float("nan")}, "`vote_temperature` must be a finite number, got nan"),
        ({"contrastive_loss_coef": float("inf")}, "`contrastive_loss_coef` must be a finite number, got inf"),
        ({"expert_output_scale": float("nan")}, "`expert_output_scale` must be a finite number"),
        ({"expert_output_scale": 0.0}, "`expert_output_scale` must be > 0"),
        ({"routed_scaling_factor": 0.0}, "`routed_scaling_factor` must be > 0"),
        ({"routed_scaling_factor": float("inf")}, "`routed_scaling_factor` must be a finite number"),
        ({"pixel_vote_weight": "1"}, "`pixel_vote_weight` must be a finite number"),
        ({"expert_activation": "relu"}, "`expert_activation` must be one of"),
    ],
)
def test_bad_adapter_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IcMoeAdapterConfig(**kwargs)


def test_target_layer_beyond_encoder_raises(sam_config):
    with pytest.raises(ValueError, match=r"target_layers.*blocks \[5\].*2 blocks"):
        IcMoeSamConfig.from_sam_config(sam_config, icmoe_config={"target_layers": [5]})


def test_model_rejects_plain_sam_config(sam_config):
    with pytest.raises(ValueError, match="IcMoeSamConfig"):
        IcMoeSamModel(sam_config)


def test_unknown_field_in_dict_raises():
    with pytest.raises(ValueError, match="Unknown IC-MoE adapter config fields: \\['num_experts'\\]"):
        IcMoeAdapterConfig.from_dict({"num_experts": 4})


def test_adapter_config_json_round_trip(tmp_path):
    config = IcMoeAdapterConfig(num_semantic_experts=3, semantic_dilations=[1, 2, 4], target_layers=[1, 0])
    path = tmp_path / "icmoe.json"
    config.to_json_file(path)
    loaded = IcMoeAdapterConfig.from_json_file(path)
    assert loaded == config
    assert loaded.target_layers == [0, 1]
    assert loaded.num_experts == 2 + 3 + 2


def test_corrupt_adapter_json_raises(tmp_path):
    path = tmp_path / "icmoe.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid IC-MoE adapter config"):
        IcMoeAdapterConfig.from_json_file(path)


def test_sam_config_round_trip_keeps_adapter_config(tmp_path, sam_config):
    config = IcMoeSamConfig.from_sam_config(sam_config, icmoe_config={"expert_rank": 4, "target_layers": [1]})
    config.save_pretrained(tmp_path)
    loaded = IcMoeSamConfig.from_pretrained(tmp_path)
    assert loaded.icmoe_config == config.icmoe_config
    assert loaded.vision_config.hidden_size == sam_config.vision_config.hidden_size
    assert set(loaded.auto_map) == {"AutoConfig", "AutoModel", "AutoModelForMaskGeneration"}


def test_every_field_has_help():
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(IcMoeAdapterConfig))


PRESETS = sorted((Path(__file__).resolve().parents[1] / "configuration" / "icmoe").glob("*.json"))


@pytest.mark.parametrize("path", PRESETS, ids=[path.stem for path in PRESETS])
def test_presets_load(path):
    config = IcMoeAdapterConfig.from_json_file(path)
    assert config.num_experts >= config.num_experts_per_tok
    if path.stem == "default":
        assert config == IcMoeAdapterConfig()


def test_every_preset_is_listed_in_the_presets_readme():
    """Only measured presets are shipped, each in the README's table (`default` and `gated_linear`)."""
    readme = (PRESETS[0].parent / "README.md").read_text()
    assert {path.stem for path in PRESETS} == {"default", "gated_linear"}
    assert all(f"`{path.name}`" in readme for path in PRESETS)


def test_integral_floats_from_json_become_integers():
    config = IcMoeAdapterConfig(expert_rank=8.0, num_experts_per_tok=1.0, target_layers=[1.0, 0.0])
    assert config.expert_rank == 8 and isinstance(config.expert_rank, int)
    assert config.num_experts_per_tok == 1 and config.target_layers == [0, 1]
    assert IcMoeAdapterConfig(vote_temperature=1).vote_temperature == 1.0


def test_target_layers_follow_the_loaded_base_not_vit_b(tmp_path):
    """A 16-block base takes `target_layers=[14]` (ViT-B has 12 blocks); the error states the base's real depth."""
    from transformers import SamModel

    from training.sam_init import init_sam_from_scratch, tiny_sam_config

    init_sam_from_scratch(SamModel(tiny_sam_config(num_hidden_layers=16)), seed=0).save_pretrained(tmp_path)
    model = IcMoeSamModel.from_pretrained(tmp_path, icmoe_config={"target_layers": [14]})
    layers = [name for name, module in model.adapter_modules() if type(module).__name__ == "IcMoeLayer"]
    assert len(layers) == 1 and ".layers.14." in layers[0], layers
    with pytest.raises(ValueError, match=r"blocks \[16\].*16 blocks"):
        IcMoeSamModel.from_pretrained(tmp_path, icmoe_config={"target_layers": [16]})
