"""ONNX export: the image encoder with the experts and the prompt decoders match PyTorch under onnxruntime."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import SamProcessor

from helpers import child_env

from modeling_icmoe import IcMoeAdapterConfig, IcMoeSamModel
from modeling_icmoe.layer import IcMoeLayer
from modeling_icmoe.medical.export import export_onnx

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, tiny_base_dir):
    """A saved IC-MoE model whose experts do work (non-zero output projections and modulation)."""
    folder = tmp_path_factory.mktemp("trained")
    model = IcMoeSamModel.from_pretrained(tiny_base_dir, icmoe_config=IcMoeAdapterConfig(expert_rank=4))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in (m for m in model.modules() if isinstance(m, IcMoeLayer)):
            layer.experts.up_proj.copy_(torch.randn(layer.experts.up_proj.shape, generator=generator) * 0.3)
            layer.experts.adaptive_weight.copy_(torch.randn(layer.experts.adaptive_weight.shape, generator=generator))
    model.save_pretrained(folder)
    SamProcessor.from_pretrained(tiny_base_dir).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_exported_parts_match_pytorch_at_other_batch_sizes(tmp_path, trained_dir):
    model = IcMoeSamModel.from_pretrained(trained_dir).eval()
    report = export_onnx(model, SamProcessor.from_pretrained(trained_dir), tmp_path / "onnx")
    assert set(report["parts"]) == {"image_encoder", "prompt_decoder_boxes", "prompt_decoder_points"}
    out = tmp_path / "onnx"
    assert (out / "README.md").is_file() and (out / "processor_config.json").is_file()

    # Inputs other than the export's samples: batch 2, three boxes, one point per prompt.
    generator = torch.Generator().manual_seed(5)
    pixel_values = torch.randn(2, 3, 64, 64, generator=generator)
    boxes = torch.tensor([[[2.0, 3.0, 30.0, 40.0], [10.0, 10.0, 60.0, 50.0], [0.0, 0.0, 63.0, 63.0]]] * 2)
    points = torch.tensor([[[[20.0, 25.0]], [[40.0, 12.0]]]] * 2)
    labels = torch.ones(2, 2, 1, dtype=torch.long)
    with torch.no_grad():
        embeddings = model.get_image_embeddings(pixel_values)
        by_box = model(image_embeddings=embeddings, input_boxes=boxes, multimask_output=False)
        by_point = model(image_embeddings=embeddings, input_points=points, input_labels=labels, multimask_output=True)
    encoder = ort.InferenceSession(str(out / "image_encoder.onnx"))
    (onnx_embeddings,) = encoder.run(None, {"pixel_values": pixel_values.numpy()})
    np.testing.assert_allclose(onnx_embeddings, embeddings.numpy(), atol=1e-4)
    box_decoder = ort.InferenceSession(str(out / "prompt_decoder_boxes.onnx"))
    scores, masks = box_decoder.run(None, {"image_embeddings": onnx_embeddings, "input_boxes": boxes.numpy()})
    assert masks.shape == (2, 3, 1, 32, 32)
    np.testing.assert_allclose(masks, by_box.pred_masks.numpy(), atol=1e-3)
    np.testing.assert_allclose(scores, by_box.iou_scores.numpy(), atol=1e-3)
    assert np.array_equal(masks > 0, by_box.pred_masks.numpy() > 0) or np.abs(by_box.pred_masks.numpy()).min() < 1e-3
    point_decoder = ort.InferenceSession(str(out / "prompt_decoder_points.onnx"))
    scores, masks = point_decoder.run(
        None, {"image_embeddings": onnx_embeddings, "input_points": points.numpy(), "input_labels": labels.numpy()}
    )
    assert masks.shape == (2, 2, 3, 32, 32)
    np.testing.assert_allclose(masks, by_point.pred_masks.numpy(), atol=1e-3)


def test_export_refuses_what_it_cannot_export(tmp_path, trained_dir, tiny_base_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import SamModel

    processor = SamProcessor.from_pretrained(trained_dir)
    lora = get_peft_model(SamModel.from_pretrained(tiny_base_dir), LoraConfig(r=2, target_modules=["qkv"])).base_model.model
    with pytest.raises(ValueError, match="unmerged LoRA"):
        export_onnx(lora, processor, tmp_path / "lora")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("user file")
    with pytest.raises(ValueError, match="not empty"):
        export_onnx(IcMoeSamModel.from_pretrained(trained_dir), processor, tmp_path / "used")
    assert (tmp_path / "used" / "keep.txt").read_text() == "user file"


@pytest.mark.slow
def test_export_refuses_an_unfaithful_graph(tmp_path, trained_dir, monkeypatch):
    import modeling_icmoe.medical.export as export

    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no graph can meet it: the refusal path must clean up
    with pytest.raises(ValueError, match="image_encoder: onnxruntime and PyTorch differ"):
        export.export_onnx(IcMoeSamModel.from_pretrained(trained_dir), SamProcessor.from_pretrained(trained_dir),
                           tmp_path / "refused")
    assert not (tmp_path / "refused").exists() and not (tmp_path / "refused.partial").exists()


@pytest.mark.slow
def test_export_command(tmp_path, trained_dir):
    console = shutil.which("icmoe-sam", path=str(Path(sys.executable).parent))
    assert console is not None
    env = child_env()
    command = [console, "export", "--model", str(trained_dir), "--output", str(tmp_path / "onnx"), "--format", "onnx"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "largest difference from PyTorch" in result.stdout
    assert sorted(p.name for p in (tmp_path / "onnx").glob("*.onnx")) == [
        "image_encoder.onnx", "prompt_decoder_boxes.onnx", "prompt_decoder_points.onnx"
    ]
