# Builds the embedded medical dataset `training/data/dsb2018_nuclei/`: real fluorescence-microscopy nuclei with
# expert instance masks, from the one 2018 Data Science Bowl (BBBC038v1) image that the `stardist` wheel ships
# (`stardist/data/images/img2d.tif` + `mask2d.tif`). The 512 x 512 field is cut into a grid of tiles; every row of
# `metadata.csv` is one tile and the binary mask of one nucleus lying wholly inside it, a box-prompt task. Whole
# tiles go to `train` or `test`, so no pixel is shared between the splits. CPU only, seconds, seeded.
#
#   pip download --no-deps --only-binary :all: -d /tmp/stardist_wheel stardist==0.9.2
#   python tools/make_embedded_dataset.py --stardist_wheel /tmp/stardist_wheel/stardist-0.9.2-*.whl

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_MEMBER = "stardist/data/images/img2d.tif"
MASK_MEMBER = "stardist/data/images/mask2d.tif"
# The files of stardist 0.9.2; a different checksum means a different image, so the README would no longer hold.
EXPECTED_SHA256 = {
    IMAGE_MEMBER: "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
    MASK_MEMBER: "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f",
}
GENERATED = ("images", "masks", "metadata.csv")
DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parents[1] / "training" / "data" / "dsb2018_nuclei"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build the embedded DSB 2018 nuclei dataset from the stardist wheel.")
    parser.add_argument("--stardist_wheel", type=Path, required=True, help="Path to a downloaded stardist wheel.")
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--tile_size", type=int, default=128, help="Side of the square tiles cut from the field.")
    parser.add_argument("--num_test_tiles", type=int, default=4, help="Tiles (all their nuclei) held out as `test`.")
    parser.add_argument("--max_nuclei_per_tile", type=int, default=8, help="Rows per tile at most (seeded choice).")
    parser.add_argument(
        "--min_nucleus_area", type=int, default=120, help="Pixels; smaller labels are debris or cut-off fragments."
    )
    parser.add_argument(
        "--border_margin", type=int, default=2, help="A nucleus must stay this many pixels clear of the tile edge."
    )
    parser.add_argument(
        "--intensity_percentiles",
        type=float,
        nargs=2,
        default=(0.5, 99.8),
        help="Percentiles of the whole 16-bit field mapped to 0 and 255 (a few mitotic nuclei saturate).",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing output folder.")
    args = parser.parse_args()

    if not args.stardist_wheel.is_file():
        parser.error(f"--stardist_wheel {args.stardist_wheel} is not a file")
    if args.tile_size <= 0 or 512 % args.tile_size != 0:
        parser.error(f"--tile_size must divide the 512-pixel field, got {args.tile_size}")
    num_tiles = (512 // args.tile_size) ** 2
    if not 0 < args.num_test_tiles < num_tiles:
        parser.error(f"--num_test_tiles must be in [1, {num_tiles - 1}], got {args.num_test_tiles}")
    if args.max_nuclei_per_tile < 1 or args.min_nucleus_area < 1 or args.border_margin < 0:
        parser.error("--max_nuclei_per_tile and --min_nucleus_area must be >= 1, --border_margin >= 0")
    low, high = args.intensity_percentiles
    if not 0.0 <= low < high <= 100.0:
        parser.error(f"--intensity_percentiles must satisfy 0 <= low < high <= 100, got {low} {high}")
    if any((args.output_dir / name).exists() for name in GENERATED) and not args.overwrite:
        parser.error(f"{args.output_dir} already holds a built dataset; pass --overwrite to rebuild it")
    return args


def read_member(wheel: zipfile.ZipFile, member: str) -> np.ndarray:
    """Reads one 16-bit TIFF from the wheel after checking it is the file the README describes."""
    data = wheel.read(member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != EXPECTED_SHA256[member]:
        raise ValueError(f"{member} has sha256 {digest}, expected {EXPECTED_SHA256[member]} (stardist 0.9.2)")
    return np.array(Image.open(io.BytesIO(data)))


def to_uint8(field: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    low, high = np.percentile(field, percentiles)
    scaled = (field.astype(np.float64) - low) / max(high - low, 1e-6)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def nuclei_inside(tile_labels: np.ndarray, *, min_area: int, margin: int) -> list[int]:
    """Labels of the nuclei wholly inside the tile (clear of its edge by `margin`) and at least `min_area` large."""
    size = tile_labels.shape[0]
    keep = []
    for label in np.unique(tile_labels[tile_labels > 0]):
        rows, cols = np.nonzero(tile_labels == label)
        inside = rows.min() >= margin and cols.min() >= margin and rows.max() < size - margin and cols.max() < size - margin
        if inside and rows.size >= min_area:
            keep.append(int(label))
    return keep


def main() -> None:
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    with zipfile.ZipFile(args.stardist_wheel) as wheel:
        field = read_member(wheel, IMAGE_MEMBER)
        labels = read_member(wheel, MASK_MEMBER)
    if field.shape != labels.shape:
        raise ValueError(f"image {field.shape} and label image {labels.shape} differ in shape")
    field8 = to_uint8(field, tuple(args.intensity_percentiles))

    # Only what this script writes is replaced; the hand-written README.md beside it stays.
    for name in GENERATED:
        path = args.output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    (args.output_dir / "images").mkdir(parents=True)
    (args.output_dir / "masks").mkdir()

    tiles_per_side = field.shape[0] // args.tile_size
    test_tiles = set(rng.permutation(tiles_per_side**2)[: args.num_test_tiles].tolist())
    rows = []
    for tile_index in range(tiles_per_side**2):
        tile_row, tile_col = divmod(tile_index, tiles_per_side)
        window = np.s_[
            tile_row * args.tile_size : (tile_row + 1) * args.tile_size,
            tile_col * args.tile_size : (tile_col + 1) * args.tile_size,
        ]
        tile_labels = labels[window]
        candidates = nuclei_inside(tile_labels, min_area=args.min_nucleus_area, margin=args.border_margin)
        if not candidates:
            continue
        chosen = sorted(rng.permutation(candidates)[: args.max_nuclei_per_tile].tolist())
        name = f"tile_r{tile_row}c{tile_col}"
        # Stored as RGB: SamProcessor and the `datasets` Image feature then see the same 3-channel input.
        Image.fromarray(field8[window]).convert("RGB").save(args.output_dir / "images" / f"{name}.png", optimize=True)
        split = "test" if tile_index in test_tiles else "train"
        for label in chosen:
            mask_name = f"{name}_nucleus{label:03d}.png"
            mask = np.where(tile_labels == label, 255, 0).astype(np.uint8)
            Image.fromarray(mask).save(args.output_dir / "masks" / mask_name, optimize=True)
            rows.append({"file_name": f"images/{name}.png", "mask_file_name": f"masks/{mask_name}", "split": split})

    with open(args.output_dir / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "mask_file_name", "split"])
        writer.writeheader()
        writer.writerows(rows)
    counts = {split: sum(row["split"] == split for row in rows) for split in ("train", "test")}
    print(f"wrote {len(rows)} rows ({counts['train']} train, {counts['test']} test) to {args.output_dir}")


if __name__ == "__main__":
    main()
