"""One volume on its voxel grid: the `Volume` both NIfTI files (`volumes.py`) and DICOM series (`dicom.py`) are read
into, in the closest canonical (RAS+) orientation; its slices; and the way back to the orientation it is stored in.

`volumes.py` and `dicom.py` both import this module, and it imports neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Largest disagreement (in mm) between a label map's affine and its image's that still counts as the same grid.
AFFINE_TOLERANCE_MM = 1e-3


def require_nibabel():
    """The `nibabel` module, or an `ImportError` that says which extra to install."""
    try:
        import nibabel
    except ImportError as err:  # an optional dependency: only volume users need it
        raise ImportError("Reading NIfTI volumes needs nibabel: pip install 'icmoe-sam[volumes]'.") from err
    return nibabel


@dataclass
class Volume:
    """A volume in the closest canonical (RAS+) orientation, with what is needed to write results back.

    data: the voxel array in canonical orientation (lazy until first read for large files).
    spacing: voxel size along the canonical axes, in mm.
    image: the NIfTI image as stored (its orientation, affine and header), the reference for writing back; for a
        DICOM series, the equivalent image built from it (voxel axes: columns, rows, slices).
    path: the file or series folder it came from.
    affine: the voxel-to-world (RAS, mm) matrix of `data`, in canonical orientation.
    dicom_sources: the series' DICOM datasets in slice order (without pixel data), for DICOM volumes.
    label_names: names of the labels, for label maps that carry them (DICOM SEG segment labels).
    """

    data: np.ndarray
    spacing: tuple[float, float, float]
    image: object
    path: str
    affine: np.ndarray | None = None
    dicom_sources: list | None = None
    label_names: dict[int, str] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)

    def num_slices(self, axis: int) -> int:
        return self.data.shape[axis]

    def slice(self, axis: int, index: int) -> np.ndarray:
        """The 2-D slice `index` along canonical `axis` (rows and columns: the other two axes, in order), as a view
        of `data`: `np.take` would copy the whole volume for each slice of nibabel's Fortran-ordered arrays."""
        return slice_view(self.data, axis, index)

    def slice_spacing(self, axis: int) -> tuple[float, float]:
        """Pixel spacing (rows, columns) of a slice along `axis`, in mm."""
        return tuple(s for i, s in enumerate(self.spacing) if i != axis)


def slice_view(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2-D slice `index` along `axis` of a 3-D array, a view (basic indexing)."""
    return array[(slice(None),) * axis + (index,)]


def rgb_slices(pixels: np.ndarray, axis: int, indices: Sequence[int]) -> list[np.ndarray]:
    """Slices `indices` of a uint8 volume as the `(H, W, 3)` images SAM's processor takes."""
    return [np.repeat(slice_view(pixels, axis, i)[..., None], 3, axis=-1) for i in indices]


def volume_from_image(image, path: str, dicom_sources: list | None = None) -> Volume:
    """A `Volume` of a 3-D nibabel image (from a file, or built from a DICOM series), read in canonical orientation."""
    nib = require_nibabel()
    try:
        canonical = nib.as_closest_canonical(image)
        data = np.asanyarray(canonical.dataobj)
    except Exception as err:  # truncated or corrupt data raise zlib, EOF, OS and value errors alike
        raise ValueError(f"{path}: cannot be read as a volume ({type(err).__name__}: {err}).") from err
    # From the affine (what places the voxels), not the header's pixdim, which may disagree with it.
    spacing = tuple(float(z) for z in np.linalg.norm(np.asarray(canonical.affine)[:3, :3], axis=0))
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ValueError(f"{path}: voxel sizes {spacing} are not positive; the header is broken.")
    return Volume(
        data=data, spacing=spacing, image=image, path=path, affine=np.asarray(canonical.affine),
        dicom_sources=dicom_sources,
    )


def checked_label_map(labels: Volume, reference: Volume) -> Volume:
    """`labels` as an integer map (integer files keep their type, float and bool ones become integers), after checking
    it lies on `reference`'s voxel grid (compared in canonical orientation, so a label map stored with another axis
    order but on the same grid is accepted)."""
    if labels.shape != reference.shape:
        raise ValueError(
            f"{labels.path}: label map shape {labels.shape} differs from its image {reference.path} {reference.shape} "
            "(both in canonical orientation)."
        )
    difference = np.abs(labels.affine - reference.affine).max()
    if difference > AFFINE_TOLERANCE_MM:
        raise ValueError(
            f"{labels.path}: its affine differs from that of its image {reference.path} by up to {difference:.4g} mm; "
            "the label map must lie on the image's voxel grid (resample it first)."
        )
    data = np.asarray(labels.data)
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all() or not np.equal(np.round(data), data).all():
            raise ValueError(f"{labels.path}: a label map must hold integer labels, found non-integral values.")
        data = data.astype(np.int64)
    elif data.dtype == np.bool_:
        data = data.astype(np.uint8)
    elif not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"{labels.path}: unsupported label map dtype {data.dtype}.")
    labels.data = data  # integers keep their type: an int64 copy of a 512 x 512 x 256 uint8 map is 512 MiB
    if labels.data.min() < 0:
        raise ValueError(f"{labels.path}: negative labels ({int(labels.data.min())}); labels must be >= 0.")
    return labels


def to_stored_orientation(array: np.ndarray, reference: Volume) -> np.ndarray:
    """A canonical-orientation array back in the orientation `reference` is stored in (the inverse of reading)."""
    nib = require_nibabel()
    stored = nib.orientations.io_orientation(reference.image.affine)
    canonical = nib.orientations.axcodes2ornt(("R", "A", "S"))
    return nib.orientations.apply_orientation(array, nib.orientations.ornt_transform(canonical, stored))
