"""`training/run.py --prompt none`: class names, class-id masks checked up front, the prompt-free model trained and
scored per class, its checkpoints, one and two processes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForSemanticSegmentation

from helpers import CONFIGS, REPO, launch, results, train_args
from modeling_icmoe import IcMoeSamForSemanticSegmentation, load_icmoe_adapter
from training.arguments import parse_args
from training.loop import run
from training.semantic import class_names

CLASSES = ["background", "disc", "bar"]


@pytest.fixture(scope="module")
def class_dataset_dir(tmp_path_factory):
    """A folder dataset of 40 x 48 images holding a bright disc (class 1) and a dark bar (class 2), either may be
    missing; class-id masks and a labels.json."""
    folder = tmp_path_factory.mktemp("classes") / "data"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :48]
    rows = ["file_name,mask_file_name,split"]
    for i in range(12):
        mask = np.zeros((40, 48), np.uint8)
        if i % 4 != 3:
            cy, cx = rng.uniform(10, 30), rng.uniform(10, 22)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = 1
        if i % 4 != 2:
            top = int(rng.integers(4, 30))
            mask[top : top + 6, 30:44] = 2
        image = (rng.normal(100, 15, mask.shape) + 90 * (mask == 1) - 70 * (mask == 2)).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / "images" / f"{i}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{i}.png")
        rows.append(f"images/{i}.png,masks/{i}.png,{'train' if i < 8 else 'test'}")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    (folder / "labels.json").write_text(json.dumps(dict(enumerate(CLASSES))))
    return folder


def _args(base, data, out, *extra):
    return parse_args(train_args(base, data, out, "--prompt", "none", *extra))


@pytest.mark.slow
@pytest.mark.parametrize("method, decoder", [("icmoe", "mask_tokens"), ("icmoe", "queries"), ("adapter", "mask_tokens")])
def test_prompt_free_training_scores_every_class_and_saves_a_loadable_model(
    tmp_path, tiny_base_dir, class_dataset_dir, method, decoder
):
    out = tmp_path / "run"
    run(_args(tiny_base_dir, class_dataset_dir, out, "--method", method, "--semantic_decoder", decoder,
              "--max_train_steps", "3"))
    saved = json.loads((out / "eval_results.json").read_text())
    assert (saved["prompt"], saved["n_images"], saved["train_steps"]) == ("none", 4, 3)
    assert set(saved["per_class"]) <= {"disc", "bar"} and saved["per_class"]
    assert len(saved["per_image"]["dice"]) == len(saved["per_image_class_ids"]) > 0
    assert saved["dice"] == pytest.approx(np.mean([c["dice"] for c in saved["per_class"].values()]))
    assert saved["semantic"]["id2label"] == {"0": "background", "1": "disc", "2": "bar"}
    assert saved["semantic"]["semantic_decoder"] == decoder
    assert "zeroshot" not in saved["comparisons"]  # an untrained class head has nothing to show
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {"ce", "dice", "load_balance", "pixel"} <= set(log[0]["loss_terms"])
    assert "| disc |" in (out / "README.md").read_text() or "| bar |" in (out / "README.md").read_text()
    model = AutoModelForSemanticSegmentation.from_pretrained(out)
    assert type(model) is IcMoeSamForSemanticSegmentation and model.config.id2label[2] == "bar"
    adapter = load_icmoe_adapter(str(tiny_base_dir), out / "adapter")
    full_state, adapter_state = model.state_dict(), adapter.state_dict()
    assert all(torch.equal(full_state[key], adapter_state[key]) for key in full_state)  # the same weights, bit for bit
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # the same computation up to float rounding (kernels may differ with memory layout)
        assert torch.allclose(adapter(pixel_values=pixels).logits, model.eval()(pixel_values=pixels).logits, atol=1e-6)


def _encoder_state(model) -> dict:
    return {k: v for k, v in model.state_dict().items() if k.startswith("vision_encoder.")}


def test_every_method_gets_the_same_prompt_free_head(tiny_base_dir):
    """lora, decoder and full train the class head and decoder parts that IC-MoE trains, no more and no fewer, and
    adapt the encoder each in its own way; every trained parameter gets a gradient."""
    from modeling_icmoe import IcMoeAdapterConfig
    from training.methods import SEMANTIC_METHODS, build_model, count_trainable, encoder_trainable_params

    semantic = {"id2label": dict(enumerate(CLASSES)), "semantic_decoder": "queries"}
    outside = {}
    for method in SEMANTIC_METHODS:
        model = build_model(method, str(tiny_base_dir), icmoe_config=IcMoeAdapterConfig(expert_rank=4), lora_rank=2,
                            adapter_rank=4, semantic=semantic)
        outside[method] = count_trainable(model) - encoder_trainable_params(model)
        output = model(pixel_values=torch.randn(2, 3, 64, 64), labels=torch.randint(0, 3, (2, 16, 16)))
        output.loss.backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, (method, missing[:3])
        encoder = encoder_trainable_params(model)
        if method == "decoder":
            assert encoder == 0
        elif method == "full":
            assert encoder == sum(p.numel() for p in model.vision_encoder.parameters())
        else:
            assert 0 < encoder < sum(p.numel() for n, p in model.named_parameters() if "vision_encoder" in n) / 2
    assert len(set(outside.values())) == 1 and outside["decoder"] > 0, outside


@pytest.mark.parametrize("method", ["lora", "decoder", "full"])
def test_every_method_trains_and_saves_the_prompt_free_model(tmp_path, tiny_base_dir, class_dataset_dir, method):
    out = tmp_path / method
    run(_args(tiny_base_dir, class_dataset_dir, out, "--method", method, "--max_train_steps", "2",
              "--learning_rate", "1e-2"))
    saved = json.loads((out / "eval_results.json").read_text())
    assert (saved["method"], saved["prompt"], saved["n_images"]) == (method, "none", 4)
    assert saved["per_class"] and saved["semantic"]["id2label"]["2"] == "bar"
    assert ("lora_config" in saved) == (method == "lora")
    model = AutoModelForSemanticSegmentation.from_pretrained(out)
    assert type(model) is IcMoeSamForSemanticSegmentation and not model.adapter_modules()
    base = IcMoeSamForSemanticSegmentation.from_pretrained(
        str(tiny_base_dir), icmoe_config={"target_layers": []}, id2label=dict(enumerate(CLASSES)))
    changed = {k for k, v in _encoder_state(model).items() if not torch.equal(v, _encoder_state(base)[k])}
    if method == "decoder":  # SAM's encoder as it was, bit for bit
        assert not changed
    elif method == "lora":  # LoRA merged into the qkv projections only
        assert changed and all(".attn.qkv." in k for k in changed)
    else:
        assert any(".mlp." in k for k in changed)
    adapter = out / "adapter"
    if method == "full":  # the encoder's own weights changed: no adapter-only checkpoint could hold them
        assert not adapter.exists()
    elif method == "lora":  # PEFT's adapter, on the prompt-free model rebuilt as the run built it
        from training.methods import load_prompt_free_lora

        reloaded = load_prompt_free_lora(str(tiny_base_dir), adapter).eval()
        pixels = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            assert torch.allclose(reloaded(pixel_values=pixels).logits, model.eval()(pixel_values=pixels).logits,
                                  atol=1e-5)
    else:
        loaded = load_icmoe_adapter(str(tiny_base_dir), adapter)
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_class_names_come_from_labels_json_or_the_command_line(tmp_path, class_dataset_dir):
    assert class_names(str(class_dataset_dir), None) == dict(enumerate(CLASSES))
    assert class_names(str(class_dataset_dir), CLASSES) == dict(enumerate(CLASSES))
    with pytest.raises(ValueError, match="differ from"):
        class_names(str(class_dataset_dir), ["background", "bar", "disc"])
    with pytest.raises(ValueError, match="needs the class names"):
        class_names(str(tmp_path), None)
    assert class_names(str(tmp_path), ["background", "organ"]) == {0: "background", 1: "organ"}


def test_a_mask_value_that_is_no_named_class_is_refused_naming_the_file(tmp_path, tiny_base_dir, class_dataset_dir):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(class_dataset_dir, data)
    mask = np.array(Image.open(data / "masks" / "5.png"))
    mask[0, 0] = 7
    Image.fromarray(mask).save(data / "masks" / "5.png")
    with pytest.raises(ValueError, match=r"masks/5\.png\): the mask holds values \[7\] that are not named classes"):
        run(_args(tiny_base_dir, data, tmp_path / "out", "--max_train_steps", "1"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "zeroshot"], "there is no zero-shot prompt-free model"),
        (["--streaming", "--max_train_steps", "2"], "not --streaming"),
    ],
)
def test_prompt_free_arguments_are_checked(tiny_base_dir, class_dataset_dir, capsys, extra, message):
    with pytest.raises(SystemExit):
        _args(tiny_base_dir, class_dataset_dir, "out", *extra)
    assert message in capsys.readouterr().err


def test_class_names_without_prompt_none_are_refused(tiny_base_dir, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--base_model", str(tiny_base_dir), "--label_names", "background", "organ"])
    assert "--label_names and --semantic_decoder are for --prompt none" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_train_the_prompt_free_model(tmp_path, tiny_base_dir, class_dataset_dir):
    out = tmp_path / "ddp"
    launch(["--config_file", str(CONFIGS / "cpu_2proc.yaml")],
           train_args(tiny_base_dir, class_dataset_dir, out, "--prompt", "none", "--max_train_steps", "2"), tmp_path)
    saved = results(out)
    assert (saved["num_processes"], saved["weights_agree_across_processes"]) == (2, True)
    assert saved["n_images"] == 4 and saved["per_class"]


def test_the_decoder_probe_in_method_md_is_its_results_file():
    """Every number of METHOD.md's prompt-free probe table is the one in benchmarks/results/semantic_decoder_probe.json."""
    probe = json.loads((REPO / "benchmarks" / "results" / "semantic_decoder_probe.json").read_text())
    runs = {(r["semantic_decoder"], r["learning_rate"]): r for r in probe["runs"]}
    text = (REPO / "docs" / "METHOD.md").read_text()
    for decoder in ("mask_tokens", "queries"):
        low, high = runs[(decoder, 3e-4)], runs[(decoder, 1e-3)]
        row = f"| `{decoder}` | {low['dice']:.3f} | {high['dice']:.3f} | {high['train_seconds']:.1f} s |"
        assert row in text, row
    ratio = runs[("queries", 1e-3)]["train_seconds"] / runs[("mask_tokens", 1e-3)]["train_seconds"]
    assert f"`queries` cost {ratio:.2f}x the training time" in text
    gap = runs[("queries", 1e-3)]["dice"] - runs[("mask_tokens", 1e-3)]["dice"]
    assert f"the gap is {gap:.3f} on one seed" in text


@pytest.mark.slow
def test_the_readme_prompt_free_commands_train_on_the_embedded_data(tmp_path):
    """Each `--prompt none` training command of the README runs as written on the bundled data, at two steps."""
    import re
    import shlex

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    commands = [" ".join(block.replace("\\\n", " ").split()) for block in blocks]
    commands = [c for c in commands if "training/run.py" in c and "--prompt none" in c]
    assert len(commands) >= 2, commands  # images and volumes
    for number, command in enumerate(commands):
        argv = shlex.split(command.split("training/run.py", 1)[1])
        argv = [str(REPO / a) if a.startswith("training/data/") else a for a in argv]
        out = tmp_path / f"run{number}"
        run(parse_args([*argv, "--output_dir", str(out), "--max_train_steps", "2", "--max_eval_samples", "48",
                        "--dataloader_num_workers", "0", "--num_example_figures", "0"]))
        saved = json.loads((out / "eval_results.json").read_text())
        assert saved["prompt"] == "none" and saved["per_class"] and saved["train_steps"] == 2
