"""A small DICOM CT series made from pydicom's bundled CT slice (real header, real pixels), with a bright object
added in some slices, and its label map."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

NUM_SLICES = 5


def write_ct_series(folder: Path, *, shuffle: bool = True) -> tuple[Path, np.ndarray]:
    """`NUM_SLICES` slices 5 mm apart, written in shuffled order; returns the folder and the object's mask in
    (slice, row, column) order of increasing position."""
    folder.mkdir(parents=True, exist_ok=True)
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid = generate_uid()
    rows, cols = source.Rows, source.Columns
    yy, xx = np.mgrid[:rows, :cols]
    masks = np.zeros((NUM_SLICES, rows, cols), dtype=bool)
    order = [3, 0, 4, 1, 2] if shuffle else list(range(NUM_SLICES))
    for k in order:
        ds = copy.deepcopy(source)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.PixelSpacing = [0.5, 0.8]  # rows 0.5 mm apart, columns 0.8 mm apart: the order matters
        position = [float(v) for v in source.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1], position[2] + 5.0 * k]
        ds.SliceLocation = position[2] + 5.0 * k
        if 1 <= k <= 3:  # an ellipse whose size changes with the slice
            masks[k] = ((yy - 50) / (12 + 2 * k)) ** 2 + ((xx - 70) / 16) ** 2 <= 1
        pixels = source.pixel_array.astype(np.int16).copy()
        pixels[masks[k]] = 1024 + 200  # stored value; 200 HU after the rescale intercept of -1024
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"slice_{k}.dcm")
    return folder, masks
