"""The prompt-driven segmentation pipeline: image normalisation, prompts, outputs, batches, saving and loading."""

from __future__ import annotations

import functools
import http.server
import json
import threading

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import pipeline

from helpers import tiny_base_sam, tiny_sam_processor, trained_icmoe
from hub_fixtures import BASE_REPO, sample_image
from modeling_icmoe import (
    ICMOE_PIPELINE_TASK,
    IcMoeSamSegmentationPipeline,
    load_medical_image,
    save_pretrained_with_pipeline,
    scale_intensities,
    to_uint8_rgb,
)


@pytest.fixture(scope="module")
def model():
    return trained_icmoe(tiny_base_sam(), base_model_name_or_path=BASE_REPO)


@pytest.fixture(scope="module")
def processor():
    return tiny_sam_processor()


@pytest.fixture(scope="module")
def segmenter(model, processor):
    return IcMoeSamSegmentationPipeline(model=model, processor=processor, device=-1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model, processor):
    folder = tmp_path_factory.mktemp("pipeline_model")
    save_pretrained_with_pipeline(model, processor, folder)
    return folder


def _expected(model, processor, image: np.ndarray, boxes: list) -> tuple[np.ndarray, np.ndarray]:
    """What the pipeline must return, computed with the processor and the model directly."""
    inputs = processor(images=to_uint8_rgb(image), input_boxes=[boxes], return_tensors="pt")
    with torch.no_grad():
        outputs = model(
            pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"].float(), multimask_output=False
        )
    masks = processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
    return masks[0][:, 0].numpy(), outputs.iou_scores[0, :, 0].numpy()


# ------------------------------------------------------------------------------------------ normalisation
@pytest.mark.parametrize(
    "image, expected",
    [
        (np.array([[0, 128], [255, 7]], dtype=np.uint8), np.array([[0, 128], [255, 7]])),
        (np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32), np.array([[0, 128], [255, 64]])),
        (np.array([[True, False], [False, True]]), np.array([[255, 0], [0, 255]])),
        (np.full((2, 2), 1000, dtype=np.uint16), np.zeros((2, 2))),
    ],
    ids=["uint8", "float-unit-range", "bool", "constant-16bit"],
)
def test_to_uint8_rgb_values(image, expected):
    result = to_uint8_rgb(image)
    assert result.dtype == np.uint8 and result.shape == (*image.shape, 3)
    assert np.array_equal(result[..., 0], expected) and np.array_equal(result[..., 0], result[..., 2])


def test_to_uint8_rgb_16bit_uses_full_range_and_clips_outliers():
    image = np.linspace(0, 4000, 100 * 100).reshape(100, 100).astype(np.uint16)
    image[0, 0] = 65535  # a hot pixel must not squeeze the rest into a few grey levels
    result = to_uint8_rgb(image)[..., 0]
    assert result.min() == 0 and result.max() == 255
    assert len(np.unique(result)) > 200


def test_to_uint8_rgb_ct_in_hounsfield_units():
    ct = np.full((32, 32), -1000, dtype=np.int16)
    ct[8:24, 8:24] = 40
    result = to_uint8_rgb(ct)
    assert result[0, 0, 0] == 0 and result[16, 16, 0] == 255


@pytest.mark.parametrize(
    "shape, layout",
    [((20, 30), "gray"), ((20, 30, 1), "gray"), ((20, 30, 3), "rgb"), ((20, 30, 4), "rgba"), ((3, 20, 30), "chw")],
)
def test_to_uint8_rgb_layouts(shape, layout):
    image = np.random.default_rng(0).integers(0, 255, size=shape).astype(np.uint8)
    result = to_uint8_rgb(image)
    assert result.shape == (20, 30, 3)
    if layout == "rgba":
        assert np.array_equal(result, image[..., :3])
    if layout == "chw":
        assert np.array_equal(result, np.moveaxis(image, 0, -1))


@pytest.mark.parametrize("shape", [(2, 20, 30), (20, 30, 5), (4,), (0, 5)])
def test_to_uint8_rgb_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="shape|empty"):
        to_uint8_rgb(np.zeros(shape, dtype=np.uint8))


def test_to_uint8_rgb_handles_nan_and_rejects_all_nan():
    image = np.array([[0.0, np.nan], [2.0, 4.0]])
    assert to_uint8_rgb(image)[0, 1, 0] == 0
    with pytest.raises(ValueError, match="finite"):
        to_uint8_rgb(np.full((2, 2), np.nan))


def test_load_medical_image_keeps_16bit_png_range(tmp_path):
    image = sample_image()
    path = tmp_path / "scan16.png"
    PIL.Image.fromarray(image).save(path)
    assert PIL.Image.open(path).mode.startswith("I")
    loaded = load_medical_image(str(path))
    assert np.array_equal(loaded, to_uint8_rgb(image))
    assert loaded[20, 20, 0] > 200 and loaded[0, 0, 0] < 100  # PIL's convert("RGB") would saturate everything


def test_load_medical_image_palette_and_missing_file(tmp_path):
    path = tmp_path / "palette.png"
    PIL.Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P").save(path)
    assert load_medical_image(path).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="neither an existing file"):
        load_medical_image(str(tmp_path / "missing.png"))


@pytest.fixture
def image_server(tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_pipeline_reads_urls(image_server, segmenter):
    folder, url = image_server
    image = sample_image()
    PIL.Image.fromarray(image).save(folder / "scan.png")
    from_url = segmenter(f"{url}/scan.png", input_boxes=[[12, 10, 40, 30]])
    from_array = segmenter(image, input_boxes=[[12, 10, 40, 30]])
    assert np.array_equal(from_url["masks"], from_array["masks"])


# ----------------------------------------------------------------------------------------------- outputs
def test_pipeline_masks_match_model(segmenter, model, processor):
    image = sample_image()
    boxes = [[12.0, 10.0, 40.0, 30.0], [2.0, 3.0, 20.0, 44.0]]
    result = segmenter(image, input_boxes=boxes)
    masks, scores = _expected(model, processor, image, boxes)
    assert result["masks"].dtype == np.bool_ and result["masks"].shape == (2, *image.shape)
    assert np.array_equal(result["masks"], masks)
    np.testing.assert_allclose(result["scores"], scores, rtol=1e-6)


@pytest.mark.parametrize(
    "prompts, num_prompts",
    [
        ({"input_points": [20, 15]}, 1),
        ({"input_points": [[20, 15], [30, 20]], "input_labels": [1, 0]}, 1),
        ({"input_points": [[[20, 15]], [[5, 5]]]}, 2),
        ({"input_boxes": [12, 10, 40, 30], "input_points": [[20, 15]]}, 1),
        ({"input_boxes": [12, 10, 40, 30]}, 1),
    ],
    ids=["one-point", "points-with-labels", "two-objects", "box-and-point", "one-box"],
)
def test_pipeline_prompt_forms(segmenter, prompts, num_prompts):
    result = segmenter(sample_image(), **prompts)
    assert result["masks"].shape == (num_prompts, 48, 56) and result["scores"].shape == (num_prompts,)


def test_pipeline_multimask_keeps_best(segmenter):
    result = segmenter(sample_image(), input_points=[20, 15], multimask_output=True)
    assert result["masks"].shape == (1, 48, 56)


def test_pipeline_batch_equals_single_calls(segmenter):
    images = [PIL.Image.fromarray(sample_image(40, 64, seed=2)), sample_image(seed=3) / 4000.0]
    boxes = [[[0, 0, 30, 30], [10, 5, 60, 35]], [[1, 1, 50, 40]]]
    batch = segmenter(images, input_boxes=boxes)
    assert isinstance(batch, list) and len(batch) == 2
    for image, image_boxes, result in zip(images, boxes, batch, strict=True):
        single = segmenter(image, input_boxes=image_boxes)
        assert np.array_equal(single["masks"], result["masks"])
    as_dict = segmenter({"image": images[1], "input_boxes": boxes[1]})
    assert np.array_equal(as_dict["masks"], batch[1]["masks"])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s, image: s(image), "prompt"),
        (lambda s, image: s(image, input_boxes=[[1, 2, 3]]), "input_boxes"),
        (lambda s, image: s(image, input_boxes=[[30, 2, 3, 40]]), r"x0 <= x1 and y0 <= y1, got \[\[30.0, 2.0, 3.0, 40.0\]\]"),
        (lambda s, image: s(image, input_boxes=[[1, 2, 30, 40], [-5, 2, 30, 40]]), r"Boxes \[\[-5.0.*outside the image \(56 x 48"),
        (lambda s, image: s(image, input_boxes=[[1, 2, 57, 40]]), "reach outside the image"),
        (lambda s, image: s(image, input_points=[[20, 49]]), r"Points \[\[20.0, 49.0\]\] lie outside the image"),
        (lambda s, image: s(image, input_boxes=[[1, 2, 30, 40]], input_points=[[[1, 1]], [[2, 2]]]), "each box"),
        (lambda s, image: s(image, input_points=[[1, 1], [2, 2]], input_labels=[1]), "one label"),
        (lambda s, image: s(image, input_labels=[1]), "needs `input_points`"),
        (lambda s, image: s([image, image], input_boxes=[[1, 2, 30, 40]]), "one entry per image"),
        (lambda s, image: s(image, input_boxes=[[1, 2, 30, float("nan")]]), "NaN"),
        (lambda s, image: s(image, input_boxes=[[1, 2, 30, 40]], colour="red"), "Unknown arguments"),
        (lambda s, image: s([], input_boxes=[]), "empty list"),
        (lambda s, image: s({"image": image, "boxes": [[1, 2, 30, 40]]}), "Unknown input keys"),
    ],
    ids=[
        "no-prompt",
        "box-size",
        "box-order",
        "box-negative",
        "box-past-edge",
        "point-outside",
        "box-point-count",
        "label-count",
        "labels-only",
        "batch",
        "nan",
        "kw",
        "empty",
        "dict-key",
    ],
)
def test_pipeline_input_errors(segmenter, call, match):
    with pytest.raises(ValueError, match=match):
        call(segmenter, sample_image())


# --------------------------------------------------------------------------------------- saving, loading
def test_save_pretrained_with_pipeline_writes_custom_pipelines(saved):
    config = json.loads((saved / "config.json").read_text())
    assert config["custom_pipelines"] == {
        ICMOE_PIPELINE_TASK: {
            "impl": "pipeline_icmoe_sam.IcMoeSamSegmentationPipeline",
            "pt": ["AutoModelForMaskGeneration"],
            "type": "image",
        }
    }
    assert config["auto_map"]["AutoModelForMaskGeneration"] == "modeling_icmoe_sam.IcMoeSamModel"
    for name in ("pipeline_icmoe_sam.py", "modeling_icmoe_sam.py", "processor_config.json", "model.safetensors"):
        assert (saved / name).is_file(), name


def test_pipeline_from_folder_with_remote_code(saved, segmenter):
    loaded = pipeline(ICMOE_PIPELINE_TASK, model=str(saved), trust_remote_code=True, device=-1)
    assert type(loaded).__name__ == "IcMoeSamSegmentationPipeline"
    image, boxes = sample_image(), [[12, 10, 40, 30]]
    assert np.array_equal(loaded(image, input_boxes=boxes)["masks"], segmenter(image, input_boxes=boxes)["masks"])


def test_pipeline_from_model_object_is_registered(model, processor, segmenter):
    built = pipeline(ICMOE_PIPELINE_TASK, model=model, processor=processor, device=-1)
    assert isinstance(built, IcMoeSamSegmentationPipeline)
    image, boxes = sample_image(), [[12, 10, 40, 30]]
    assert np.array_equal(built(image, input_boxes=boxes)["masks"], segmenter(image, input_boxes=boxes)["masks"])


def test_plain_sam_saves_with_pipeline(tmp_path, processor):
    """A SamModel (as a merged LoRA run leaves it) gets the same pipeline."""
    base = tiny_base_sam()
    save_pretrained_with_pipeline(base, processor, tmp_path)
    loaded = pipeline(ICMOE_PIPELINE_TASK, model=str(tmp_path), trust_remote_code=True, device=-1)
    assert type(loaded.model).__name__ == "SamModel"
    direct = IcMoeSamSegmentationPipeline(model=base, processor=processor, device=-1)
    image, boxes = sample_image(), [[12, 10, 40, 30]]
    assert np.array_equal(loaded(image, input_boxes=boxes)["masks"], direct(image, input_boxes=boxes)["masks"])


def test_mask_generation_pipeline(saved):
    pytest.importorskip("torchvision", reason="SAM's automatic mask generation needs torchvision's batched NMS")
    generator = pipeline("mask-generation", model=str(saved), device=-1)
    outputs = generator(
        PIL.Image.fromarray(to_uint8_rgb(sample_image())),
        points_per_batch=16,
        points_per_crop=4,
        pred_iou_thresh=-1e9,
        stability_score_thresh=0.0,
    )
    assert len(outputs["masks"]) == len(outputs["scores"]) >= 1
    assert outputs["masks"][0].shape == (48, 56)


def test_pipeline_applies_a_ct_window(segmenter, model, processor):
    """`window=` segments exactly what the windowed image gives the model, and not what the percentile rule gives."""
    rng = np.random.default_rng(4)
    hu = rng.normal(-600.0, 300.0, (48, 56))
    hu[10:30, 12:40] = rng.normal(60.0, 20.0, (20, 28))  # soft tissue inside lung-like background
    boxes = [[12, 10, 40, 30]]
    windowed = segmenter(hu, input_boxes=boxes, window="soft_tissue")
    expected_masks, _ = _expected(model, processor, scale_intensities(hu, window=(40.0, 400.0)), boxes)
    assert np.array_equal(windowed["masks"], expected_masks)
    with pytest.raises(ValueError, match="Unknown window preset"):
        segmenter(hu, input_boxes=boxes, window="kidney")
