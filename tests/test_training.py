"""Short offline runs of training/run.py: every method, resume equivalence, Trainer (many processes:
test_distributed.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import train_args
from training.arguments import parse_args
from training.loop import run

REPO = Path(__file__).resolve().parents[1]


def _args(base, data, out, *extra):
    return parse_args(train_args(base, data, out, "--num_example_figures", "2", *extra, eval_batch_size=4))


@pytest.mark.parametrize("method", ["icmoe", "lora", "adapter", "decoder", "full", "zeroshot"])
def test_every_method_runs(tmp_path, tiny_base_dir, blob_dataset_dir, method):
    out = tmp_path / method
    results = run(_args(tiny_base_dir, blob_dataset_dir, out, "--method", method, "--max_train_steps", "2"))
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["method"] == method
    assert saved["n_images"] == 4  # the test split of the blob dataset
    assert saved["n_eval_source_images"] == 4 and saved["seed"] == 42 and saved["per_device_train_batch_size"] == 2
    assert saved["base_model_is_standin"] is False  # a test base, not the bundled stand-in
    for key in ("dice", "iou", "hd95", "train_seconds", "trainable_params", "base_model", "dataset"):
        assert key in saved, key
    assert 0.0 <= saved["dice"] <= 1.0
    for name in ("dice", "iou", "hd95"):  # every object's scores, whose mean is the reported one
        assert len(saved["per_image"][name]) == 4
    assert np.mean(saved["per_image"]["dice"]) == pytest.approx(saved["dice"], abs=1e-5)
    assert (out / "README.md").is_file() and (out / "figures" / "examples.png").is_file()
    if method == "zeroshot":
        assert saved["train_steps"] == 0 and not (out / "model.safetensors").exists()
        return
    assert saved["train_steps"] == 2 and saved["trainable_params"] > 0
    assert "zeroshot" in saved["comparisons"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    assert (out / "model.safetensors").is_file() and (out / "figures" / "loss.png").is_file()
    if method in ("icmoe", "adapter"):
        assert (out / "adapter" / "icmoe_adapter_model.safetensors").is_file()
        assert len(saved["expert_load"]) == 2  # one row per IC-MoE layer of the tiny encoder
        assert (out / "figures" / "expert_load.png").is_file()
        assert "expert_load" in log[0]
    if method == "lora":
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
        assert not (out / "adapter" / "README.md").exists()  # PEFT's empty template card is not kept
    assert results["dice"] == saved["dice"]


@pytest.mark.slow
def test_icmoe_zero_shot_equals_base_and_training_helps(tmp_path, tiny_base_dir, blob_dataset_dir):
    out = tmp_path / "run"
    results = run(
        _args(
            tiny_base_dir, blob_dataset_dir, out,
            "--max_train_steps", "40", "--learning_rate", "1e-2", "--per_device_train_batch_size", "4",
        )
    )
    zeroshot = run(_args(tiny_base_dir, blob_dataset_dir, tmp_path / "zs", "--method", "zeroshot"))
    assert results["comparisons"]["zeroshot"]["dice"] == pytest.approx(zeroshot["dice"], abs=1e-6)
    assert results["dice"] > zeroshot["dice"]


@pytest.mark.slow
def test_resume_gives_the_same_weights(tmp_path, tiny_base_dir, blob_dataset_dir):
    common = ("--max_train_steps", "6", "--checkpointing_steps", "3", "--no_zeroshot_eval", "--prompt", "box+point")
    run(_args(tiny_base_dir, blob_dataset_dir, tmp_path / "full", *common))
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_3", resumed_dir / "checkpoints" / "step_3")
    run(_args(tiny_base_dir, blob_dataset_dir, resumed_dir, *common, "--resume_from_checkpoint", "latest"))
    expected = load_file(tmp_path / "full" / "model.safetensors")
    actual = load_file(resumed_dir / "model.safetensors")
    assert expected.keys() == actual.keys()
    changed = 0
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), key
        changed += key.startswith("mask_decoder.")
    assert changed
    steps = [json.loads(line)["step"] for line in (resumed_dir / "train_log.jsonl").read_text().splitlines()]
    assert steps == [4, 5, 6]
    # Resuming in the interrupted run's own folder replaces the steps it logged after the checkpoint.
    step_3 = str(tmp_path / "full" / "checkpoints" / "step_3")
    run(_args(tiny_base_dir, blob_dataset_dir, tmp_path / "full", *common, "--resume_from_checkpoint", step_3))
    steps = [json.loads(line)["step"] for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_transformers_trainer_trains_icmoe(tmp_path, tiny_base_dir, blob_dataset_dir):
    from transformers import AutoProcessor, Trainer, TrainingArguments

    from modeling_icmoe import IcMoeAdapterConfig, IcMoeSamModel
    from training.data import SamPairTransform, load_raw_dataset

    processor = AutoProcessor.from_pretrained(tiny_base_dir)
    train = load_raw_dataset(str(blob_dataset_dir), image_column="image", mask_column="mask")["train"]
    train = train.with_transform(SamPairTransform(processor, image_column="image", mask_column="mask"))

    def collator(examples):
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "input_boxes": torch.stack([e["input_boxes"] for e in examples]),
            "labels": torch.stack([e["labels"] for e in examples]),
            "multimask_output": False,
        }

    model = IcMoeSamModel.from_pretrained(tiny_base_dir, icmoe_config=IcMoeAdapterConfig(expert_rank=4))
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-2,
            remove_unused_columns=False, report_to=[], logging_steps=1, save_strategy="no", use_cpu=True,
        ),
        train_dataset=train,
        data_collator=collator,
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(loss == loss for loss in losses)
    after = model.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_base_model_that_is_not_sam_is_named(tmp_path, tiny_base_dir, monkeypatch):
    from training.methods import check_base_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_base_model(str(tiny_base_dir))  # a SAM checkpoint passes
    with pytest.raises(ValueError, match="no such folder, and not a Hub id"):
        check_base_model(str(tmp_path / "missing" / "sam"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="is not a model checkpoint: it has no config.json"):
        check_base_model(str(empty))
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="is a 'bert' checkpoint; training needs a SAM checkpoint"):
        check_base_model(str(bert))


def test_example_figures_show_each_image_once_with_prompt_and_dice():
    from types import SimpleNamespace

    from training.evaluation import _examples

    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pixels[1] = pixels[0]  # rows 0 and 1: two objects of one image
    gt = np.zeros((3, 20, 20), bool)
    gt[:, 4:10, 4:12] = True
    predicted = gt.copy()
    predicted[0, 4:10, 4:8] = False  # row 0 predicts half of its object
    batch = {
        "pixel_values": pixels,
        "reshaped_input_sizes": torch.tensor([[32, 32]] * 3),
        "labels": torch.zeros(3, 1, 8, 8, dtype=torch.uint8),
        "gt_masks": list(gt),
    }
    inputs = {"input_boxes": torch.tensor([[[1.0, 2.0, 20.0, 30.0]]] * 3)}
    outputs = SimpleNamespace(pred_masks=torch.zeros(3, 1, 3, 8, 8), router_probs=None)
    processor = SimpleNamespace(image_processor=SimpleNamespace(image_mean=[0.5] * 3, image_std=[0.5] * 3))
    shown = set()
    examples = _examples(batch, inputs, outputs, torch.zeros(3, 1, dtype=torch.long), list(predicted), processor, 4, shown)
    assert len(examples) == 2  # row 1 repeats row 0's image
    assert examples[0].dice == pytest.approx(2 * 24 / (24 + 48))
    assert examples[1].dice == 1.0
    assert examples[0].box.tolist() == [1.0, 2.0, 20.0, 30.0] and examples[0].points is None
    assert _examples(batch, inputs, outputs, torch.zeros(3, 1, dtype=torch.long), list(predicted), processor, 4, shown) == []


@pytest.mark.parametrize("method", ["icmoe", "lora", "full"])
def test_mask_decoder_learning_rate_scale(tiny_base_dir, method):
    """`--mask_decoder_lr_scale` gives the trained mask decoder (PEFT's copy too) its own rate; nothing else moves."""
    from training.loop import _param_groups
    from training.methods import build_model, load_icmoe_config

    args = parse_args(["--base_model", str(tiny_base_dir), "--method", method, "--learning_rate", "1e-3",
                       "--mask_decoder_lr_scale", "0.1"])
    model = build_model(method, args.base_model, icmoe_config=load_icmoe_config(None, {}), lora_rank=4, adapter_rank=8)
    groups = _param_groups(model, args)
    assert len(groups) == 2 and "lr" not in groups[0] and groups[1]["lr"] == pytest.approx(1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("mask_decoder." in names[id(p)] for p in groups[1]["params"])
    assert not any("mask_decoder." in names[id(p)] for p in groups[0]["params"])
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad)


def test_mask_decoder_learning_rate_scale_must_be_positive(tiny_base_dir, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--base_model", str(tiny_base_dir), "--mask_decoder_lr_scale", "0"])
    assert "--mask_decoder_lr_scale must be positive" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "home"), [("prompt_inputs", "training.prompts"),
                                            ("routed_counts", "training.diagnostics")])
def test_step_helpers_moved_out_of_evaluation_keep_their_old_name(name, home):
    import importlib

    with pytest.warns(DeprecationWarning, match=f"moved to `{home}.{name}`"):
        from training import evaluation

        value = getattr(evaluation, name)
    assert value is getattr(importlib.import_module(home), name)
