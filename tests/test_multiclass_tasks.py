"""The simulated multi-class CT tasks (`benchmarks/tasks/make_multiclass_tasks.py`): the builder gives the same bytes
from the same seed, the embedded folders are complete and consistent and in the formats the project reads, their
READMEs' class tables are those of the files, and they are what the builder makes from the recorded seed (checked on
a sample: the whole build takes minutes)."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from modeling_icmoe.imaging import CT_WINDOWS, scale_intensities
from modeling_icmoe.medical.volumes import load_label_map, load_volume
from training.data import metadata_splits
from training.volume_data import discover_cases

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT / "training" / "data"
SLICE_SAMPLE = [0, 199, 200, 349]  # first and last train, first validation, last test
VOLUME_SAMPLE = [12]  # the first test case


@pytest.fixture(scope="module")
def builder():
    """`make_multiclass_tasks`, imported as the script imports its siblings (from `benchmarks/tasks/`, on the path
    for this module's tests)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO_ROOT / "benchmarks" / "tasks"))
        yield importlib.import_module("make_multiclass_tasks")


def _build(builder, folder: Path) -> Path:
    """The sample of both tasks built from the recorded seed and written as the builder writes them."""
    for task, write, indices in ((builder.SLICES, builder.write_slices, SLICE_SAMPLE),
                                 (builder.VOLUMES, builder.write_volumes, VOLUME_SAMPLE)):
        write(builder.build_task(task, seed=builder.DEFAULT_SEED, indices=indices), folder / task)
    return folder


@pytest.fixture(scope="module")
def rebuilt(builder, tmp_path_factory) -> Path:
    return _build(builder, tmp_path_factory.mktemp("rebuilt"))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _metadata(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L", f"{path}: mode {image.mode}, expected L"
        return np.asarray(image)


def _volume_cases(folder: Path) -> list[tuple[Path, Path]]:
    dataset = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    return [(folder / entry["image"], folder / entry["label"]) for entry in dataset["training"] + dataset["test"]]


@pytest.mark.slow
def test_same_seed_same_bytes(builder, rebuilt, tmp_path):
    again = _files(_build(builder, tmp_path))
    assert again == _files(rebuilt)
    assert len(again) == 2 * len(SLICE_SAMPLE) + 2 + 2 * len(VOLUME_SAMPLE) + 1  # + metadata, labels; + dataset.json


@pytest.mark.slow
def test_the_embedded_folders_are_what_the_builder_makes(builder, rebuilt):
    """Pixel for pixel, up to a last-bit difference of floating point between CPUs or numpy builds, which may flip the
    rounding of a rare voxel: at most one grey level (HU) and one pixel in a thousand."""

    def assert_close(made: np.ndarray, embedded: np.ndarray, what: str, *, intensities: bool) -> None:
        assert made.shape == embedded.shape and made.dtype == embedded.dtype, what
        differ = made != embedded
        assert differ.mean() <= 1e-3, f"{what}: {int(differ.sum())} pixels differ"
        if intensities:
            assert np.abs(made.astype(np.int32) - embedded).max() <= 1, what

    made_slices, embedded_slices = rebuilt / builder.SLICES, DATA / builder.SLICES
    for row in _metadata(made_slices):
        assert row in _metadata(embedded_slices)
        for column in ("file_name", "mask_file_name"):
            assert_close(_pixels(made_slices / row[column]), _pixels(embedded_slices / row[column]), row[column],
                         intensities=column == "file_name")
    made_volumes, embedded_volumes = rebuilt / builder.VOLUMES, DATA / builder.VOLUMES
    for image, label in _volume_cases(made_volumes):
        for path in (image, label):
            made, embedded = nib.load(path), nib.load(embedded_volumes / path.relative_to(made_volumes))
            np.testing.assert_allclose(made.affine, embedded.affine, atol=1e-4)
            assert_close(np.asarray(made.dataobj), np.asarray(embedded.dataobj), path.name, intensities=path == image)


def test_slice_folder_is_complete_and_consistent(builder):
    folder = DATA / builder.SLICES
    rows = _metadata(folder)
    expected = dict(builder.SLICE_SPLITS)
    assert {split: sum(row["split"] == split for row in rows) for split in expected} == expected
    assert json.loads((folder / "labels.json").read_text(encoding="utf-8")) == builder.LABELS
    ids = set(range(len(builder.LABELS)))
    listed = {row[column] for row in rows for column in ("file_name", "mask_file_name")}
    on_disk = {str(path.relative_to(folder)) for sub in ("images", "masks") for path in (folder / sub).iterdir()}
    assert listed == on_disk
    shown = {split: set() for split in expected}
    for row in rows:
        image, mask = _pixels(folder / row["file_name"]), _pixels(folder / row["mask_file_name"])
        assert image.shape == mask.shape == (builder.IMAGE_SIZE, builder.IMAGE_SIZE), row
        values = set(np.unique(mask).tolist())
        assert values <= ids and values - {0}, f"{row['mask_file_name']}: ids {sorted(values)}"
        shown[row["split"]] |= values
    assert all(classes == ids for classes in shown.values()), shown


def test_volume_folder_is_complete_and_consistent(builder):
    folder = DATA / builder.VOLUMES
    dataset = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    assert dataset["labels"] == builder.LABELS
    assert (dataset["numTraining"], dataset["numTest"]) == tuple(count for _, count in builder.VOLUME_SPLITS)
    for suffix, key in (("Tr", "training"), ("Ts", "test")):
        for kind in ("image", "label"):
            listed = {(folder / entry[kind]).resolve() for entry in dataset[key]}
            assert listed == set((folder / f"{kind}s{suffix}").resolve().iterdir()), (suffix, kind)
    for image_path, label_path in _volume_cases(folder):
        assert image_path.name == label_path.name
        image, labels = nib.load(image_path), nib.load(label_path)
        assert image.get_data_dtype() == np.int16 and labels.get_data_dtype() == np.uint8, image_path.name
        assert image.shape == labels.shape == (builder.VOLUME_SIZE, builder.VOLUME_SIZE, builder.NUM_SLICES)
        assert np.array_equal(image.affine, labels.affine), image_path.name
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
        spacing = np.asarray(image.header.get_zooms())
        assert spacing[2] >= builder.MIN_ANISOTROPY * spacing[:2].max(), spacing
        present = set(np.unique(np.asarray(labels.dataobj)).tolist())
        assert present == set(range(len(builder.LABELS))), f"{label_path.name}: {sorted(present)}"


def test_the_project_reads_both_folders(builder):
    splits = metadata_splits(DATA / builder.SLICES, image_column="image", mask_column="mask")
    assert {split: len(columns["image"]) for split, columns in splits.items()} == dict(builder.SLICE_SPLITS)
    notes = []
    cases, names = discover_cases(str(DATA / builder.VOLUMES), notes)
    assert {split: len(found) for split, found in cases.items()} == {"train": 12, "test": 6} and not notes
    assert names == {int(key): name for key, name in builder.LABELS.items()}
    volume = load_volume(cases["test"][0].image)  # canonical RAS+: the stored L and P axes flipped
    labels = np.asarray(load_label_map(cases["test"][0].label, volume).data)
    assert volume.data.shape == labels.shape and volume.data.dtype == np.int16
    assert volume.spacing[2] == builder.SLICE_MM  # axis 2, the reader's axial axis, runs along the slices
    liver, aorta = (np.nonzero(labels == organ)[0].mean() for organ in (1, 5))
    assert liver > aorta  # RAS+: the first axis grows towards the patient's right, where the liver lies


def test_the_slices_window_is_the_pipelines(builder):
    """The 2-D task's pixels are what the pipeline makes of the same CT numbers with `window="soft_tissue"`."""
    simulate_ct = importlib.import_module("simulate_ct")  # beside the builder
    assert simulate_ct.SOFT_TISSUE_WINDOW == CT_WINDOWS["soft_tissue"]
    hu = np.arange(-1024, 3072, dtype=np.int16).reshape(64, 64)
    np.testing.assert_array_equal(simulate_ct.soft_tissue_window(hu), scale_intensities(hu, window="soft_tissue"))


@pytest.mark.parametrize("task", ["ct_abdomen_organs", "ct_abdomen_volumes"])
def test_readme_class_tables_are_those_of_the_files(builder, task):
    statistics = builder.slice_statistics if task == builder.SLICES else builder.volume_statistics
    readme = (DATA / task / "README.md").read_text(encoding="utf-8")
    for row in statistics(DATA / task):
        assert row in readme, row


@pytest.mark.parametrize("break_it, message", [
    (lambda image, labels: (image.astype(np.int16), labels), "expected uint8"),
    (lambda image, labels: (image, np.where(labels == 1, 6, labels).astype(np.uint8)), "class id 6"),
    (lambda image, labels: (image, np.where(labels == 5, 0, labels).astype(np.uint8)), "no aorta"),
    (lambda image, labels: (image, np.ascontiguousarray(labels[:, ::-1])), "wrong side"),
])
def test_check_slice_rejects(builder, break_it, message):
    folder = DATA / builder.SLICES
    row = next(row for row in _metadata(folder) if 1 in _pixels(folder / row["mask_file_name"]))  # shows the liver
    image, labels = break_it(_pixels(folder / row["file_name"]), _pixels(folder / row["mask_file_name"]))
    with pytest.raises(ValueError, match=message):
        builder.check_slice(image, labels, name="broken")


@pytest.mark.parametrize("break_it, message", [
    (lambda image, labels, affine: (image, labels, np.diag([3.5, 3.5, 3.5, 1.0])), "not anisotropic"),
    (lambda image, labels, affine: (image, np.where(labels == 2, 0, labels).astype(np.uint8), affine),
     "spleen has 0 connected"),
    (lambda image, labels, affine: (image, np.ascontiguousarray(labels[::-1]), affine), "wrong side"),
])
def test_check_volume_rejects(builder, break_it, message):
    image_path, label_path = _volume_cases(DATA / builder.VOLUMES)[0]
    image = nib.load(image_path)
    arrays = np.asarray(image.dataobj), np.asarray(nib.load(label_path).dataobj), image.affine
    builder.check_volume(*arrays, name="intact")
    with pytest.raises(ValueError, match=message):
        builder.check_volume(*break_it(*arrays), name="broken")
