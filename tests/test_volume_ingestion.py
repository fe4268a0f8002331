"""Volume ingestion that scales with depth: slices as views give the rows and pixels of `np.take` slicing; slicing
in parallel workers with the same rows and counts; the mask check remembered with the data; the benchmark."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import datasets
import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from volume_fixtures import save_nifti, write_decathlon

import modeling_icmoe.imaging as imaging
import modeling_icmoe.medical.volumes as volumes
import training.data
from benchmarks import ingestion
from modeling_icmoe.imaging import resolve_window, scale_intensities
from modeling_icmoe.medical.volumes import label_values, load_label_map, load_nifti, slice_view, to_uint8_volume
from training.arguments import parse_args
from training.data import check_masks
from training.volume_data import load_volume_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
COLUMNS = {"image_column": "image", "mask_column": "mask"}
CHECK = {**COLUMNS, "label_ids": None, "name": "train"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A `datasets` cache of the test's own (read when a builder is made), so that every test slices afresh."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    return tmp_path / "hf_cache"


@pytest.fixture
def decoded(monkeypatch):
    """Counts the images and masks `check_masks` decodes."""
    calls = []
    decode = training.data._decode

    def counting(encoded, what):
        calls.append(what)
        return decode(encoded, what)

    monkeypatch.setattr(training.data, "_decode", counting)
    return calls


def _stored(dataset: datasets.Dataset) -> list[dict]:
    """Every row with its image and mask as the stored PNG bytes."""
    for column in ("image", "mask"):
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset.to_list()


def _pixels(stored: dict) -> np.ndarray:
    """The pixels of a stored `datasets.Image` value, after checking that it is a grey-level PNG."""
    image = Image.open(io.BytesIO(stored["bytes"]))
    assert image.format == "PNG" and image.mode == "L"
    return np.asarray(image)


def _take_rows(folder: Path, case: str, axis: int, window) -> list[dict]:
    """The rows slicing wrote before it read slices as views: `np.take` on every slice (the whole volume copied)."""
    volume = load_nifti(folder / "imagesTr" / f"{case}_0000.nii.gz")
    labels = load_label_map(folder / "labelsTr" / f"{case}.nii.gz", volume)
    pixels = to_uint8_volume(volume, window=window)
    chosen = sorted(set(np.unique(labels.data).tolist()) - {0})
    rows = []
    for index in range(volume.num_slices(axis)):
        plane = np.take(labels.data, index, axis=axis)
        for label in chosen:
            mask = plane == label
            if mask.any():
                image = np.ascontiguousarray(np.take(pixels, index, axis=axis))
                rows.append({"case": case, "slice_index": index, "label_id": label, "image": image,
                             "mask": mask.astype(np.uint8)})
    return rows


@pytest.mark.parametrize("axis, window", [(0, None), (1, "soft_tissue"), (2, None), (2, (40.0, 400.0))])
def test_rows_are_those_of_np_take_slicing(tmp_path, cache, axis, window):
    # The fixtures' volumes are stored LPS-like: canonical reading flips two axes (views with negative strides).
    folder = write_decathlon(tmp_path / "Task", cases=2)
    data, _ = load_volume_dataset(str(folder), **COLUMNS, slice_axis=axis, window=window, validation_fraction=0.5)
    for split in data.values():
        rows = _stored(split)
        (case,) = {row["case"] for row in rows}
        expected = _take_rows(folder, case, axis, window)
        assert [(r["slice_index"], r["label_id"]) for r in rows] == [(r["slice_index"], r["label_id"]) for r in expected]
        for row, old in zip(rows, expected):
            assert np.array_equal(_pixels(row["image"]), old["image"])
            assert np.array_equal(_pixels(row["mask"]), old["mask"])


def test_slices_are_views_equal_to_np_take():
    array = np.asfortranarray(np.arange(4 * 5 * 6).reshape(4, 5, 6))[::-1, :, ::-1]  # nibabel's order, flipped
    for axis in range(3):
        for index in range(array.shape[axis]):
            view = slice_view(array, axis, index)
            assert np.shares_memory(view, array) and np.array_equal(view, np.take(array, index, axis=axis))


def test_label_values_match_np_unique(monkeypatch):
    monkeypatch.setattr(volumes, "COUNTED_SLAB", 7)  # counted a few voxels at a time
    rng = np.random.default_rng(0)
    labels = np.asfortranarray(rng.choice([0, 1, 3, 7], size=(6, 5, 4)))[::-1]
    assert label_values(labels) == np.unique(labels).tolist() == [0, 1, 3, 7]
    assert label_values(np.array([[0, 70000], [70000, 5]])) == [0, 5, 70000]  # too large to count: sorted
    assert label_values(np.zeros((2, 2), dtype=np.int64)) == [0]


def _whole_array_scaling(values: np.ndarray, window, intensity_percentiles=(0.5, 99.5)) -> np.ndarray:
    """The scaling rule computed over the whole array in one pass, as it was before it went a slab at a time."""
    window = resolve_window(window)
    floating = np.issubdtype(values.dtype, np.floating)
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    values = np.where(finite, values, values[finite].min())
    if window is not None:
        low, high = window[0] - window[1] / 2.0, window[0] + window[1] / 2.0
    elif floating and values.min() >= 0.0 and values.max() <= 1.0:
        low, high = 0.0, 1.0
    else:
        low, high = np.percentile(values, intensity_percentiles)
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((np.clip(values, low, high) - low) / (high - low) * 255.0).astype(np.uint8)


def test_slab_scaling_is_the_whole_array_rule(monkeypatch):
    monkeypatch.setattr(imaging, "SCALE_SLAB_VALUES", 100)  # many slabs of the small arrays below
    rng = np.random.default_rng(1)
    ct = np.asfortranarray(rng.normal(0, 300, (12, 10, 7)).astype(np.int16))
    mr = rng.gamma(2.0, 50.0, (9, 8, 6)).astype(np.float32)
    mr[0, 0, 0], mr[1, 2, 3], mr[4, 4, 4] = np.nan, np.inf, -np.inf
    unit = rng.uniform(0.0, 1.0, (11, 13))
    unit[3, 3] = np.nan
    wide = rng.integers(-(2**30), 2**30, (20, 30), dtype=np.int32)  # too wide a range to count its values
    arrays = [ct, ct[::-1, ::-1], ct.transpose(2, 0, 1), rng.integers(0, 65535, (20, 30), dtype=np.uint16), wide,
              mr, np.asfortranarray(mr), unit, np.full((4, 5, 3), 9.0), np.full((4, 5), 7, dtype=np.int16)]
    for values in arrays:
        for window in (None, "soft_tissue", (300.0, 50.0)):
            scaled = scale_intensities(values, window=window)
            assert scaled.dtype == np.uint8 and np.array_equal(scaled, _whole_array_scaling(values, window))
    assert np.array_equal(scale_intensities(mr, intensity_percentiles=(10.0, 90.0)),
                          _whole_array_scaling(mr, None, (10.0, 90.0)))
    with pytest.raises(ValueError, match="no finite value"):
        scale_intensities(np.array([np.nan, np.inf]))


def test_counted_percentiles_are_numpys(monkeypatch):
    monkeypatch.setattr(imaging, "SCALE_SLAB_VALUES", 64)  # counted a few values at a time
    rng = np.random.default_rng(2)
    ranges = [(np.int16, -1024, 3071), (np.int16, -32768, 32767), (np.uint16, 0, 65535), (np.int8, -128, 127),
              (np.uint32, 2**32 - 5000, 2**32 - 1), (np.int32, -(2**31), -(2**31) + 900_000)]
    for dtype, low, high in ranges:
        for size in (1, 2, 7, 500):
            drawn = rng.integers(low, high, size, endpoint=True).astype(dtype)
            extremes = np.where(np.arange(size) < size // 2, low, high).astype(dtype)  # the largest differences
            for values in (drawn, extremes):
                for q in ([0.5, 99.5], [0.0, 100.0], [13.7, 50.0]):
                    expected = np.percentile(values.astype(np.float64), q)
                    assert np.array_equal(imaging._percentiles(values, None, q), expected), (dtype, size, q)


def _counted_decathlon(folder: Path) -> Path:
    """Six training volumes: one with no label at all, one with a class-3 object too small for an 8-pixel label."""
    write_decathlon(folder, cases=6)
    empty = folder / "labelsTr" / "case001.nii.gz"
    save_nifti(np.zeros(nib.load(str(empty)).shape, dtype=np.uint8), empty)
    tiny = folder / "labelsTr" / "case004.nii.gz"
    labels = np.asarray(nib.load(str(tiny)).dataobj).copy()
    labels[2, 2, 0] = 3
    save_nifti(labels, tiny)
    return folder


def test_parallel_slicing_gives_the_same_rows_and_counts(tmp_path, cache, monkeypatch):
    folder = _counted_decathlon(tmp_path / "Task")
    options = {**COLUMNS, "validation_fraction": 0.34, "seed": 0, "label_size": 8}
    parallel, summary = load_volume_dataset(str(folder), num_proc=2, **options)
    assert all(len(split.cache_files) == 2 for split in parallel.values())  # each split sliced by two workers
    # Each worker counted its own share: together they are the whole split's.
    assert sum(c["volumes_without_label"] for c in summary.splits.values()) == 1
    assert sum(c["objects_too_small"] for c in summary.splits.values()) == 1
    assert sum(c["volumes"] for c in summary.splits.values()) == 6
    # Loaded from the cache (nothing is sliced), the combined counts are read back.
    _, cached = load_volume_dataset(str(folder), **options)
    assert cached.splits == summary.splits
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "another_cache"))
    alone, summary_alone = load_volume_dataset(str(folder), **options)
    assert summary_alone.splits == summary.splits and summary_alone.notes == summary.notes
    for split in parallel:
        assert len(alone[split].cache_files) == 1 and _stored(alone[split]) == _stored(parallel[split])


def test_bad_input_is_named_by_parallel_workers(tmp_path, cache):
    folder = write_decathlon(tmp_path / "Task", cases=4)
    with pytest.raises(ValueError, match=r"Split `train` .* has no slice with a chosen label \(3 volumes"):
        load_volume_dataset(str(folder), **COLUMNS, label_ids=[9], validation_fraction=0.25, seed=0, num_proc=2)
    (folder / "imagesTr" / "case002_0000.nii.gz").write_bytes(b"not a volume")
    for num_proc in (None, 2):
        with pytest.raises(ValueError, match=r"case002_0000\.nii\.gz: cannot be read as a NIfTI volume"):
            load_volume_dataset(str(folder), **COLUMNS, validation_fraction=0.25, seed=0, num_proc=num_proc)


def test_check_is_remembered_with_the_data(tmp_path, cache, decoded):
    folder = write_decathlon(tmp_path / "Task", cases=2)
    data, _ = load_volume_dataset(str(folder), **COLUMNS, validation_fraction=0.5, seed=0)
    train = data["train"]
    check_masks(train, **CHECK)
    assert len(decoded) == 2 * len(train)  # every image and mask
    check_masks(train, **CHECK)
    again, _ = load_volume_dataset(str(folder), **COLUMNS, validation_fraction=0.5, seed=0)
    check_masks(again["train"], **CHECK)  # a re-start: the same data, read from the cache
    assert len(decoded) == 2 * len(train)
    check_masks(train, **{**CHECK, "label_ids": [1]})  # checked by another rule: checked again
    assert len(decoded) == 4 * len(train)

    # The training volume changed on disk is sliced again, and its rows are checked again.
    path = folder / "labelsTr" / f"{train[0]['case']}.nii.gz"
    labels = np.asarray(nib.load(str(path)).dataobj).copy()
    labels[labels == 2] = 1
    save_nifti(labels, path)
    changed, _ = load_volume_dataset(str(folder), **COLUMNS, validation_fraction=0.5, seed=0)
    before = len(decoded)
    check_masks(changed["train"], **CHECK)
    assert len(changed["train"]) < len(train) and len(decoded) == before + 2 * len(changed["train"])


def test_changed_data_is_checked_again_and_its_bad_row_named(tmp_path, cache, decoded):
    folder = write_decathlon(tmp_path / "Task", cases=2)
    data, _ = load_volume_dataset(str(folder), **COLUMNS, validation_fraction=0.5, seed=0)
    check_masks(data["train"], **CHECK)

    def blank_row_3(row, index):
        if index == 3:
            row["mask"] = Image.fromarray(np.zeros_like(np.asarray(row["mask"])))
        return row

    bad = data["train"].map(blank_row_3, with_indices=True)
    assert bad.cache_files and bad._fingerprint != data["train"]._fingerprint
    for num_proc in (None, 2, None):  # a failed check leaves no mark: it is checked, and fails, again
        before = len(decoded)
        with pytest.raises(ValueError, match="train row 3 .*the mask is empty"):
            check_masks(bad, **CHECK, num_proc=num_proc)
        assert num_proc or len(decoded) == before + 2 * 4  # rows 0 to 3, in this process


def test_in_memory_data_is_checked_every_time(blob_dataset_dir, decoded):
    from training.data import load_raw_dataset

    train = load_raw_dataset(str(blob_dataset_dir), **COLUMNS)["train"]
    assert not train.cache_files  # its images are files that may change on disk
    check_masks(train, **CHECK)
    check_masks(train, **CHECK)
    assert len(decoded) == 4 * len(train)


def test_preprocessing_num_workers_argument(capsys):
    assert parse_args([]).preprocessing_num_workers is None
    assert parse_args(["--preprocessing_num_workers", "3"]).preprocessing_num_workers == 3
    with pytest.raises(SystemExit):
        parse_args(["--preprocessing_num_workers", "0"])
    assert "--preprocessing_num_workers must be positive" in capsys.readouterr().err


def test_documented_numbers_are_the_results_file():
    report = json.loads(ingestion.RESULT.read_text())
    text = ingestion.DEFAULT_REPORT.read_text()
    section = text[text.index(ingestion.MARK_BEGIN): text.index(ingestion.MARK_END) + len(ingestion.MARK_END)]
    assert section + "\n" == ingestion.render_section(report)
    assert report["size"] == 512 and report["depths"] == [64, 256] and report["before_ref"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None or not (REPO_ROOT / ".git").exists(), reason="needs the git history")
def test_benchmark_smoke(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    report = ingestion.main(["--smoke", "--before_ref", head, "--output", str(tmp_path / "ingestion.json"),
                             "--report_path", str(tmp_path / "BENCHMARKS.md")])
    assert json.loads((tmp_path / "ingestion.json").read_text()) == json.loads(json.dumps(report))
    for depth in ("4", "8"):
        runs = report["depths_measured"][depth]
        assert set(runs) == {"first", "restart", "num_proc", "before_first", "before_restart"}
        assert runs["first"]["rows"] == runs["restart"]["rows"] == runs["num_proc"]["rows"] > 0
        assert runs["first"]["volumes"] == 2 and runs["before_first"]["volumes"] == 1
        assert runs["first"]["slices_per_s"] == pytest.approx(2 * int(depth) / runs["first"]["seconds"])
    part = report["breakdown"]
    assert part["depth"] == 8 and part["masks"] >= part["images"] > 0
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert text.count(ingestion.MARK_BEGIN) == 1 and "| 8 | after, num_proc 2 | 2 |" in text
