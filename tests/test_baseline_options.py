"""How the baselines can be built beyond their rank (LoRA's alpha, targets and dropout; the adapter's placement and
scale) and layer-wise learning-rate decay: each option reaches the model or the optimizer, is saved with the run,
and a wrong one is refused by name."""

from __future__ import annotations

import json
import re

import pytest
import torch

from helpers import results, train_args
from training.arguments import parse_args
from training.checkpointing import run_fingerprint
from training.loop import _param_groups, run
from training.methods import BaselineOptions, build_model, load_icmoe_config

EXPECTED_LORA_LAYERS = {"qkv": {"attn.qkv"}, "attention": {"attn.qkv", "attn.proj"},
                        "all": {"attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2"}}


def _build(method: str, base, **options):
    return build_model(method, str(base), icmoe_config=load_icmoe_config(None, {}), lora_rank=4, adapter_rank=8,
                       baseline=BaselineOptions(**options))


@pytest.mark.parametrize("targets", sorted(EXPECTED_LORA_LAYERS))
def test_lora_adapts_the_named_layers_of_every_block_with_its_alpha_and_dropout(tiny_base_dir, targets):
    model = _build("lora", tiny_base_dir, lora_targets=targets, lora_alpha=12.0, lora_dropout=0.1)
    adapted = {}
    for name, module in model.named_modules():
        match = re.search(r"vision_encoder\.layers\.(\d+)\.(\w+\.\w+)$", name)
        if match and hasattr(module, "lora_A"):
            adapted.setdefault(int(match.group(1)), set()).add(match.group(2))
            assert module.scaling["default"] == pytest.approx(12.0 / 4)
            assert module.lora_dropout["default"].p == pytest.approx(0.1)
    num_blocks = model.get_base_model().config.vision_config.num_hidden_layers
    assert adapted == {block: EXPECTED_LORA_LAYERS[targets] for block in range(num_blocks)}


def test_lora_defaults_are_samed_recipe(tiny_base_dir):
    config = _build("lora", tiny_base_dir).peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 4, 0.0)


@pytest.mark.parametrize("placement", ["mlp", "attention"])
def test_the_adapter_sits_where_it_is_placed_at_its_scale(tiny_base_dir, placement):
    model = _build("adapter", tiny_base_dir, adapter_placement=placement, adapter_scale=2.0)
    config = model.config.icmoe_config
    assert (config.expert_placement, config.expert_output_scale, config.expert_rank) == (placement, 2.0, 8)
    assert config.num_experts_per_tok == 1 and config.num_basic_experts == 1


def test_layer_lr_decay_gives_each_block_its_rate_and_keeps_the_decoder_group(tiny_base_dir):
    args = parse_args(["--base_model", str(tiny_base_dir), "--method", "full", "--learning_rate", "1e-3",
                       "--layer_lr_decay", "0.5", "--mask_decoder_lr_scale", "0.1"])
    model = _build("full", tiny_base_dir)
    num_blocks = model.config.vision_config.num_hidden_layers
    rate = {}
    for group in _param_groups(model, args):
        for param in group["params"]:
            rate[id(param)] = group.get("lr", args.learning_rate)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        block = re.search(r"vision_encoder\.layers\.(\d+)\.", name)
        if block:
            expected = 1e-3 * 0.5 ** (num_blocks - int(block.group(1)))
        elif "vision_encoder.patch_embed" in name or "vision_encoder.pos_embed" in name:
            expected = 1e-3 * 0.5 ** (num_blocks + 1)
        elif "mask_decoder." in name:
            expected = 1e-4
        else:
            expected = 1e-3  # the neck and the shared image embedding
        assert rate[id(param)] == pytest.approx(expected), name
    # The rates reach the optimizer's steps: one Adam step moves a parameter by about its rate.
    optimizer = torch.optim.AdamW(_param_groups(model, args), lr=args.learning_rate, weight_decay=0.0)
    first = model.vision_encoder.layers[0].attn.qkv.weight
    last = model.vision_encoder.layers[num_blocks - 1].attn.qkv.weight
    before = first.detach().clone(), last.detach().clone()
    for param in model.parameters():
        param.grad = torch.ones_like(param) if param.requires_grad else None
    optimizer.step()
    moved = [(after.detach() - old).abs().mean().item() for after, old in zip((first, last), before)]
    assert moved[0] / moved[1] == pytest.approx(0.5 ** (num_blocks - 1), rel=1e-3)


def test_without_decay_the_groups_are_as_before(tiny_base_dir):
    args = parse_args(["--base_model", str(tiny_base_dir), "--method", "full"])
    groups = _param_groups(_build("full", tiny_base_dir), args)
    assert len(groups) == 2 and "lr" not in groups[0] and groups[1]["lr"] == args.learning_rate


@pytest.mark.parametrize("argv, message", [
    (["--method", "icmoe", "--lora_alpha", "8"], "--lora_alpha is for --method lora"),
    (["--method", "lora", "--adapter_scale", "2"], "--adapter_scale is for --method adapter"),
    (["--method", "lora", "--lora_dropout", "1"], "lora_dropout must be in"),
    (["--method", "lora", "--lora_alpha", "0"], "lora_alpha must be positive"),
    (["--method", "adapter", "--adapter_scale", "nan"], "adapter_scale must be positive and finite"),
    (["--method", "lora", "--lora_targets", "mlp"], "invalid choice"),
    (["--method", "full", "--layer_lr_decay", "1.5"], "--layer_lr_decay must be in"),
    (["--method", "icmoe", "--layer_lr_decay", "0.8"], "--layer_lr_decay is for --method full"),
])
def test_wrong_options_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_checkpoints_of_default_runs_keep_their_fingerprint():
    """Runs at the defaults fingerprint as before the options existed (so their checkpoints still resume); a
    changed option is part of the fingerprint."""
    def fingerprint(*argv):
        return run_fingerprint(parse_args(list(argv)), adapter_config=None, train_steps=1, warmup_steps=0,
                               num_processes=1)

    plain = fingerprint("--method", "lora")
    assert not {"lora_alpha", "lora_targets", "lora_dropout", "layer_lr_decay"} & set(plain)
    changed = fingerprint("--method", "lora", "--lora_targets", "all")
    assert changed["lora_targets"] == "all"
    assert fingerprint("--method", "full", "--layer_lr_decay", "0.8")["layer_lr_decay"] == 0.8
    assert fingerprint("--method", "adapter", "--adapter_placement", "attention")["adapter_placement"] == "attention"


@pytest.mark.slow
def test_runs_save_what_the_options_built(tiny_base_dir, blob_dataset_dir, tmp_path):
    """A LoRA run on every linear layer writes its adapter with those targets, alpha and dropout, and records them;
    an adapter run beside qkv saves a model that loads back with its placement and scale; a full run records its
    layer-wise decay."""
    from transformers import AutoModel

    out = tmp_path / "lora"
    run(parse_args(train_args(tiny_base_dir, blob_dataset_dir, out, "--method", "lora", "--lora_rank", "2", "--lora_targets",
                    "all", "--lora_alpha", "6", "--lora_dropout", "0.1", "--max_train_steps", "2",
                    "--no_zeroshot_eval", "--num_example_figures", "0")))
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"], saved["lora_dropout"]) == (2, 6.0, 0.1)
    assert "mlp" in saved["target_modules"] and "proj" in saved["target_modules"]
    assert results(out)["lora_config"]["lora_alpha"] == 6.0

    out = tmp_path / "adapter"
    run(parse_args(train_args(tiny_base_dir, blob_dataset_dir, out, "--method", "adapter", "--adapter_rank", "4",
                    "--adapter_placement", "attention", "--adapter_scale", "2", "--max_train_steps", "2",
                    "--no_zeroshot_eval", "--num_example_figures", "0")))
    loaded = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert (loaded.config.icmoe_config.expert_placement, loaded.config.icmoe_config.expert_output_scale) == (
        "attention", 2.0)
    assert "layer_lr_decay" not in results(out)  # recorded only where it is on

    out = tmp_path / "full"
    run(parse_args(train_args(tiny_base_dir, blob_dataset_dir, out, "--method", "full", "--layer_lr_decay", "0.7",
                              "--max_train_steps", "1", "--no_zeroshot_eval", "--num_example_figures", "0")))
    assert results(out)["layer_lr_decay"] == 0.7 and results(out)["mask_decoder_lr_scale"] == 1.0
