"""The data pipeline and prompts: sources, splits, image and mask handling, clear errors on bad rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_icmoe.imaging import to_uint8_rgb
from training.data import binary_mask, check_masks, load_raw_dataset, select_splits
from training.prompts import jitter_boxes, mask_box, sample_points


def test_training_transform_matches_inference_conversion(tiny_base_dir):
    """A 16-bit image reaches the model exactly as the inference pipeline would prepare it."""
    from transformers import AutoProcessor

    from training.data import SamPairTransform

    processor = AutoProcessor.from_pretrained(tiny_base_dir)
    image = (np.arange(48 * 40, dtype=np.uint16) * 30).reshape(48, 40)
    mask = np.zeros((48, 40), np.uint8)
    mask[5:20, 6:30] = 255
    out = SamPairTransform(processor, image_column="image", mask_column="mask")({"image": [image], "mask": [mask]})
    expected = processor(images=to_uint8_rgb(image), return_tensors="pt")["pixel_values"][0]
    assert torch.equal(out["pixel_values"][0], expected)
    assert out["input_boxes"][0].shape == (1, 4) and out["labels"][0].max() == 1


@pytest.mark.parametrize("scale", [1, 255])
def test_binary_masks_accepted(scale):
    mask = np.zeros((5, 5), np.uint8)
    mask[1:3, 1:4] = scale
    assert binary_mask(mask).sum() == 6


def test_non_binary_mask_needs_label_ids():
    mask = np.array([[0, 1], [2, 2]])
    with pytest.raises(ValueError, match="not binary.*--label_ids"):
        binary_mask(mask)
    assert binary_mask(mask, [2]).tolist() == [[False, False], [True, True]]


def test_metadata_folder_and_splits(blob_dataset_dir):
    dataset = load_raw_dataset(str(blob_dataset_dir), image_column="image", mask_column="mask")
    assert sorted(dataset) == ["test", "train"] and len(dataset["train"]) == 8
    train, evaluation, name = select_splits(dataset, train_split="train", eval_split=None, validation_fraction=0.25, seed=0)
    assert name == "test" and len(evaluation) == 4


def test_hold_out_when_only_train(blob_dataset_dir, tmp_path):
    dataset = load_raw_dataset(str(blob_dataset_dir), image_column="image", mask_column="mask")
    only_train = type(dataset)({"train": dataset["train"]})
    only_train.save_to_disk(str(tmp_path / "saved"))
    reloaded = load_raw_dataset(str(tmp_path / "saved"), image_column="image", mask_column="mask")
    train, evaluation, name = select_splits(reloaded, train_split="train", eval_split=None, validation_fraction=0.25, seed=0)
    assert (len(train), len(evaluation)) == (6, 2) and "held-out" in name
    again = select_splits(reloaded, train_split="train", eval_split=None, validation_fraction=0.25, seed=0)[1]
    assert np.array_equal(np.asarray(evaluation[0]["mask"]), np.asarray(again[0]["mask"]))


def test_missing_split_and_column_errors(blob_dataset_dir, tmp_path):
    dataset = load_raw_dataset(str(blob_dataset_dir), image_column="image", mask_column="mask")
    with pytest.raises(ValueError, match="No split `valid`"):
        select_splits(dataset, train_split="train", eval_split="valid", validation_fraction=0.2, seed=0)
    dataset.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="no column `label`"):
        load_raw_dataset(str(tmp_path / "saved"), image_column="image", mask_column="label")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a `save_to_disk` folder nor a folder with a metadata.csv"):
        load_raw_dataset(str(tmp_path / "empty"), image_column="image", mask_column="mask")


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.zeros((48, 40), np.uint8), r"row 1 \(.*, mask .*bad\.png\): the mask is empty"),
        (np.full((48, 40), 7, np.uint8), r"row 1 \(.*, mask .*bad\.png\): Mask values \[7\] are not binary"),
        (np.full((20, 20), 255, np.uint8), r"row 1 \(.*, mask .*bad\.png\): image is 48x40 but mask is 20x20"),
    ],
)
def test_bad_rows_are_named(blob_dataset_dir, tmp_path, mask, message):
    import datasets

    good = load_raw_dataset(str(blob_dataset_dir), image_column="image", mask_column="mask")["train"]
    path = tmp_path / "bad.png"
    Image.fromarray(mask).save(path)
    bad = datasets.Dataset.from_dict(
        {"image": [good[0]["image"], good[1]["image"]], "mask": [good[0]["mask"], Image.open(path)]},
        features=good.features,
    )
    with pytest.raises(ValueError, match=message):
        check_masks(bad, image_column="image", mask_column="mask", label_ids=None, name="train")


def test_corrupt_image_file_is_named(blob_dataset_dir, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(blob_dataset_dir, copy)
    (copy / "masks" / "3.png").write_bytes(b"not a png")
    dataset = load_raw_dataset(str(copy), image_column="image", mask_column="mask")
    with pytest.raises(ValueError, match=r"mask .*masks/3\.png\): the mask file cannot be decoded"):
        check_masks(dataset["train"], image_column="image", mask_column="mask", label_ids=None, name="train")


def test_truncated_image_file_is_named_before_training(blob_dataset_dir, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(blob_dataset_dir, copy)
    image = next(p for p in sorted((copy / "images").iterdir()) if p.suffix == ".png")
    data = image.read_bytes()
    image.write_bytes(data[: len(data) * 2 // 3])  # the header is intact: only a full decode notices
    dataset = load_raw_dataset(str(copy), image_column="image", mask_column="mask")
    with pytest.raises(ValueError, match=rf"\({image}, mask .*\): the image file cannot be decoded: .*truncated"):
        check_masks(dataset["train"], image_column="image", mask_column="mask", label_ids=None, name="train")


def test_image_with_nan_pixels_is_refused_naming_the_file(tmp_path):
    import datasets

    pixels = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    pixels[:3, :5] = np.nan
    Image.fromarray(pixels, mode="F").save(tmp_path / "scan.tiff")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    dataset = datasets.Dataset.from_dict(
        {"image": [str(tmp_path / "scan.tiff")], "mask": [str(tmp_path / "mask.png")]},
        features=datasets.Features({"image": datasets.Image(), "mask": datasets.Image()}),
    )
    with pytest.raises(ValueError, match=r"scan\.tiff, mask .*mask\.png\): the image has 15 NaN or infinite pixel"):
        check_masks(dataset, image_column="image", mask_column="mask", label_ids=None, name="train")


def test_mask_box_and_empty_mask():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    assert mask_box(mask) == [3.0, 2.0, 8.0, 4.0]  # inclusive last column and row
    with pytest.raises(ValueError, match="empty mask"):
        mask_box(np.zeros((3, 3), bool))


def test_jitter_stays_inside_image_and_is_seeded():
    boxes = torch.tensor([[[10.0, 10.0, 30.0, 40.0]]])
    sizes = torch.tensor([[50, 35]])
    first = jitter_boxes(boxes, fraction=0.5, image_sizes=sizes, generator=torch.Generator().manual_seed(0))
    second = jitter_boxes(boxes, fraction=0.5, image_sizes=sizes, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, second) and not torch.equal(first, boxes)
    assert (first[..., 0] >= 0).all() and (first[..., 2] <= 35).all() and (first[..., 3] <= 50).all()
    assert (first[..., 2] > first[..., 0]).all() and (first[..., 3] > first[..., 1]).all()
    assert ((first - boxes).abs() <= 0.5 * torch.tensor([20.0, 30.0, 20.0, 30.0])).all()


def test_points_fall_inside_the_mask():
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, 0, 2:6, 3:9] = 1
    masks[1, 0, 10:15, 1:4] = 1
    for generator in (torch.Generator().manual_seed(0), None):
        points = sample_points(masks, num_points=3, input_size=64, generator=generator)
        assert points.shape == (2, 1, 3, 2)
        cells = (points / 4).floor().long()  # back to mask pixels
        for b in range(2):
            assert masks[b, 0, cells[b, 0, :, 1], cells[b, 0, :, 0]].all()
    central = sample_points(masks, num_points=1, input_size=64, generator=None)
    # The most interior pixel of the 4x6 block at rows 2-5, cols 3-8 is first found at row 3, col 4 (its centre).
    assert central[0, 0, 0].tolist() == [4 * 4.5, 4 * 3.5]


def test_full_mask_gives_a_central_point():
    points = sample_points(torch.ones(1, 1, 16, 16), num_points=1, input_size=64, generator=None)
    assert points[0, 0, 0].tolist() == [4 * 7.5, 4 * 7.5]


def test_object_vanishing_at_label_resolution_is_named(tmp_path):
    import datasets

    mask = np.zeros((512, 512), np.uint8)
    mask[100:102, 200:202] = 255  # 4 pixels: nothing left at a 64-pixel label resolution
    image = Image.fromarray(np.zeros((512, 512), np.uint8))
    dataset = datasets.Dataset.from_dict(
        {"image": [image], "mask": [Image.fromarray(mask)]},
        features=datasets.Features({"image": datasets.Image(), "mask": datasets.Image()}),
    )
    embedded = r"row 0 \(embedded \d+-byte image, mask embedded \d+-byte image\)"
    with pytest.raises(ValueError, match=embedded + r": the object \(4 pixels\) vanishes at SAM's label resolution"):
        check_masks(dataset, image_column="image", mask_column="mask", label_ids=None, name="train", label_size=64)
    check_masks(dataset, image_column="image", mask_column="mask", label_ids=None, name="train", label_size=512)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--push_to_hub"], "needs --hub_model_id"),
        (["--push_to_hub", "--hub_model_id", "a/b", "--method", "zeroshot"], "nothing to push"),
        (["--push_to_hub", "--hub_model_id", "a/b", "--method", "lora", "--push_adapter_only"], "has none"),
        (["--push_to_hub", "--hub_model_id", "a/b", "--push_adapter_only"], "needs --base_model to be a Hub id"),
        (["--box_jitter", "1.5"], "--box_jitter"),
        (["--per_device_train_batch_size", "0"], "must be positive"),
    ],
)
def test_bad_arguments_fail_before_training(capsys, argv, message):
    from training.arguments import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err
