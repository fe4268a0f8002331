"""The prompt-free model's `image-segmentation` pipeline and the one logits-to-class-map rule it shares with training:
saved with the model, loaded with remote code (also where this package is not installed) and without it, batches,
medical inputs, and models of the wrong kind refused."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from hub_fixtures import sample_image
from remote_code import run_without_package
from semantic_fixtures import CLASSES, expected_class_map, segments_class_map, semantic_model
from transformers import SamProcessor, pipeline

from modeling_icmoe import (
    IcMoeAdapterConfig,
    IcMoeSamForSemanticSegmentation,
    IcMoeSamModel,
    IcMoeSamSemanticSegmentationPipeline,
    class_maps_at_original_size,
    save_pretrained_with_pipeline,
    save_semantic_pretrained_with_pipeline,
    scale_intensities,
    to_uint8_rgb,
)

CUSTOM_PIPELINES = {"image-segmentation": {"impl": "pipeline_icmoe_semantic.IcMoeSamSemanticSegmentationPipeline",
                                           "pt": ["AutoModelForSemanticSegmentation"], "type": "image"}}


@pytest.fixture(scope="module")
def model(tiny_base_dir):
    return semantic_model(tiny_base_dir)


@pytest.fixture(scope="module")
def processor(tiny_base_dir):
    return SamProcessor.from_pretrained(tiny_base_dir)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model, processor):
    folder = tmp_path_factory.mktemp("semantic_model")
    save_semantic_pretrained_with_pipeline(model, processor, folder)
    return folder


@pytest.fixture(scope="module")
def segmenter(model, processor):
    return IcMoeSamSemanticSegmentationPipeline(model=model, processor=processor, device=-1)


# ------------------------------------------------------------------------------------------ one post-processing rule
def test_class_maps_equal_sams_post_processing_and_training_uses_the_same_function(model, processor):
    from training import semantic

    assert semantic.class_maps_at_original_size is class_maps_at_original_size
    images = [to_uint8_rgb(sample_image(48, 56, seed=0)), to_uint8_rgb(sample_image(40, 64, seed=1))]
    inputs = processor(images=images, return_tensors="pt")  # two aspect ratios: two crops of the padded frame
    with torch.no_grad():
        logits = model(pixel_values=inputs["pixel_values"]).logits
    maps = class_maps_at_original_size(logits, 64, inputs["reshaped_input_sizes"], inputs["original_sizes"])
    for image, class_map in zip(images, maps, strict=True):
        expected, _ = expected_class_map(model, processor, image)
        assert class_map.dtype == np.uint8 and class_map.shape == image.shape[:2]
        assert np.array_equal(class_map, expected)
    assert len(np.unique(maps[0])) > 1  # the model is not trivially one class


# ----------------------------------------------------------------------------------------------------- pipeline
def test_pipeline_from_a_saved_folder_returns_transformers_segments(saved, model, processor):
    config = json.loads((saved / "config.json").read_text())
    assert config["custom_pipelines"] == CUSTOM_PIPELINES
    for name in ("pipeline_icmoe_semantic.py", "pipeline_icmoe_sam.py", "modeling_icmoe_semantic.py",
                 "processor_config.json", "model.safetensors"):
        assert (saved / name).is_file(), name
    segmenter = pipeline("image-segmentation", model=str(saved), trust_remote_code=True, device=-1)
    assert type(segmenter).__name__ == "IcMoeSamSemanticSegmentationPipeline"
    assert type(segmenter).__module__ != IcMoeSamSemanticSegmentationPipeline.__module__  # the folder's copy
    image = sample_image()
    segments = segmenter(image)
    expected, probabilities = expected_class_map(model, processor, to_uint8_rgb(image))
    present = sorted(np.unique(expected).tolist())
    assert [s["label"] for s in segments] == [CLASSES[c] for c in present]  # id order, the background included
    assert "background" in [s["label"] for s in segments] and len(segments) >= 2
    assert all(s["mask"].size == (56, 48) for s in segments)  # PIL gives (width, height): the original size
    assert np.array_equal(segments_class_map(segments, (48, 56)), expected)
    for segment, class_id in zip(segments, present, strict=True):
        assert isinstance(segment["score"], float)
        assert segment["score"] == pytest.approx(float(probabilities[class_id][expected == class_id].mean()), rel=1e-5)


def test_batches_and_medical_inputs(segmenter, model, processor):
    hu = np.random.default_rng(4).normal(-300.0, 400.0, (40, 64))
    hu[8:30, 10:40] = 60.0
    images = [sample_image(seed=2), PIL.Image.fromarray(to_uint8_rgb(sample_image(40, 64, seed=3))), hu]
    batched = segmenter(images, batch_size=2)
    assert isinstance(batched, list) and len(batched) == 3
    for image, segments in zip(images, batched, strict=True):
        single = segmenter(image)
        assert [s["label"] for s in single] == [s["label"] for s in segments]
        assert all(np.array_equal(np.asarray(a["mask"]), np.asarray(b["mask"])) for a, b in zip(single, segments))
    assert segmenter(tuple(images[:2]))[1][0]["mask"].size == (64, 40)
    # A CT window segments exactly what the windowed image gives the model.
    windowed = segmenter(hu, window="soft_tissue")
    expected, _ = expected_class_map(model, processor, to_uint8_rgb(scale_intensities(hu, window=(40.0, 400.0))))
    assert np.array_equal(segments_class_map(windowed, hu.shape), expected)
    with pytest.raises(ValueError, match="Unknown window preset"):
        segmenter(hu, window="kidney")
    with pytest.raises(ValueError, match="Unknown arguments.*input_boxes"):
        segmenter(hu, input_boxes=[[1, 2, 30, 30]])
    with pytest.raises(ValueError, match="empty list"):
        segmenter([])


def test_pipeline_without_remote_code_and_the_wrong_model_kind(saved, segmenter, processor, tiny_base_dir, tmp_path):
    # With this package installed: the folder's model through the package's own pipeline class, no remote code.
    local = pipeline("image-segmentation", model=str(saved), pipeline_class=IcMoeSamSemanticSegmentationPipeline,
                     device=-1)
    assert type(local) is IcMoeSamSemanticSegmentationPipeline
    assert type(local.model) is IcMoeSamForSemanticSegmentation
    image = sample_image(seed=5)
    assert np.array_equal(segments_class_map(local(image), image.shape), segments_class_map(segmenter(image), image.shape))
    prompted = IcMoeSamModel.from_pretrained(tiny_base_dir, icmoe_config=IcMoeAdapterConfig(expert_rank=4))
    with pytest.raises(ValueError, match="runs prompt-free IC-MoE models.*got IcMoeSamModel"):
        IcMoeSamSemanticSegmentationPipeline(model=prompted, processor=processor, device=-1)
    with pytest.raises(ValueError, match="must be a prompt-free IcMoeSamForSemanticSegmentation, got IcMoeSamModel"):
        save_semantic_pretrained_with_pipeline(prompted, processor, tmp_path / "a")
    with pytest.raises(ValueError, match="segments without prompts; save it with `save_semantic_pretrained"):
        save_pretrained_with_pipeline(segmenter.model, processor, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_pipeline_as_remote_code_without_this_package(saved, segmenter, tmp_path):
    image = sample_image(seed=6)
    PIL.Image.fromarray(image).save(tmp_path / "scan.png")  # 16-bit: the medical normalisation travels too
    result = run_without_package(f"""
        import json
        import numpy as np
        from transformers import pipeline

        segmenter = pipeline("image-segmentation", model={str(saved)!r}, trust_remote_code=True, device=-1)
        segments = segmenter({str(tmp_path / "scan.png")!r})
        print("SEGMENTS", json.dumps([[s["label"], int((np.asarray(s["mask"]) == 255).sum())] for s in segments]))
        print("MODEL", type(segmenter.model).__module__)
    """, tmp_path)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("SEGMENTS", "MODEL")))
    assert lines["MODEL"].startswith("transformers_modules.")
    expected = [[s["label"], int((np.asarray(s["mask"]) == 255).sum())] for s in segmenter(image)]
    assert json.loads(lines["SEGMENTS"]) == expected


def test_training_saves_the_semantic_model_with_its_pipeline(tmp_path, model, processor):
    from training.methods import save_trained

    save_trained(model, processor, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["custom_pipelines"] == CUSTOM_PIPELINES
    assert (tmp_path / "run" / "pipeline_icmoe_semantic.py").is_file()
    assert (tmp_path / "run" / "adapter").is_dir()
    loaded = pipeline("image-segmentation", model=str(tmp_path / "run"), trust_remote_code=True, device=-1)
    assert [s["label"] for s in loaded(sample_image())][0] == "background"
