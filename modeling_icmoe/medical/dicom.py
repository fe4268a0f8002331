"""DICOM: a series folder in (pydicom), DICOM SEG label maps in and out (highdicom), on the same `Volume` as NIfTI.

A series becomes the equivalent NIfTI image: voxel axes (column, row, slice), slices ordered by their position along
the slice normal, intensities through the modality LUT (Hounsfield units for CT), and the affine from
ImagePositionPatient / ImageOrientationPatient / PixelSpacing turned from DICOM's LPS into NIfTI's RAS. A predicted
label map is written as a DICOM SEG (one segment per class, empty frames omitted) that references the source
series' instances, so viewers and PACS place it on the images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .volume_grid import Volume, checked_label_map, require_nibabel, to_stored_orientation, volume_from_image

# Largest relative spread of the gaps between consecutive slices that still counts as one regular grid.
SLICE_GAP_TOLERANCE = 0.01
# Largest relative difference between two slices' PixelSpacing that still counts as the same: decimal strings rounded
# by writers (0.703125 against 0.7031) pass; at 512 pixels it moves the far edge by a twentieth of a pixel.
PIXEL_SPACING_TOLERANCE = 1e-4
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
TRACKING_PREFIX = "icmoe-sam label "


def _pydicom():
    try:
        import pydicom
    except ImportError as err:
        raise ImportError("Reading DICOM needs pydicom: pip install 'icmoe-sam[volumes]'.") from err
    return pydicom


def _highdicom():
    try:
        import highdicom
    except ImportError as err:
        raise ImportError("DICOM SEG needs highdicom: pip install 'icmoe-sam[volumes]'.") from err
    return highdicom


def is_dicom_seg(path: str | os.PathLike) -> bool:
    pydicom = _pydicom()
    try:
        header = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (pydicom.errors.InvalidDicomError, OSError):
        return False
    return str(header.get("SOPClassUID", "")) == SEG_SOP_CLASS


def load_dicom_series(folder: str | os.PathLike) -> Volume:
    """Reads every file of `folder` as one DICOM series (a file that is not DICOM, or a second series, is an error)."""
    pydicom = _pydicom()
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{folder}: no DICOM file in the folder.")
    slices = []
    for path in files:
        try:
            dataset = pydicom.dcmread(str(path))
        except pydicom.errors.InvalidDicomError as err:
            raise ValueError(f"{path}: not a DICOM file; a series folder must hold only that series' files.") from err
        missing = [k for k in ("SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                               "PixelData") if k not in dataset]
        if missing:
            raise ValueError(
                f"{path}: not a single-frame image slice with a position ({', '.join(missing)} missing); enhanced "
                "multi-frame files are not read."
            )
        slices.append((path, dataset))
    series = sorted({str(ds.SeriesInstanceUID) for _, ds in slices})
    if len(series) > 1:
        raise ValueError(f"{folder} holds {len(series)} series ({', '.join(series)}); give one folder per series.")
    orientation = np.array(slices[0][1].ImageOrientationPatient, dtype=np.float64)
    for path, ds in slices:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=np.float64), orientation, atol=1e-4):
            raise ValueError(f"{path}: its ImageOrientationPatient differs from the rest of the series.")
        if (ds.Rows, ds.Columns) != (slices[0][1].Rows, slices[0][1].Columns):
            raise ValueError(f"{path}: {ds.Rows}x{ds.Columns} pixels, the series' first slice has another size.")
    _check_agreement(folder, slices)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = [float(np.dot(np.array(ds.ImagePositionPatient, dtype=np.float64), normal)) for _, ds in slices]
    order = np.argsort(positions)
    slices = [slices[i] for i in order]
    positions = np.array(positions)[order]
    gaps = np.diff(positions)
    if len(gaps) and gaps.min() <= 1e-3:
        duplicate = slices[int(np.argmin(gaps)) + 1][0]
        raise ValueError(f"{duplicate}: two slices of {folder} share one position.")
    if len(gaps) and (gaps.max() - gaps.min()) > SLICE_GAP_TOLERANCE * gaps.mean():
        raise ValueError(
            f"{folder}: slice gaps range from {gaps.min():.3f} to {gaps.max():.3f} mm; the series is not a regular grid "
            "(missing slices?)."
        )
    first = slices[0][1]
    if len(slices) > 1:
        step = (np.array(slices[-1][1].ImagePositionPatient, float) - np.array(first.ImagePositionPatient, float))
        step /= len(slices) - 1
    else:
        step = normal * float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_spacing  # voxel axis 0: along a row (increasing column)
    affine[:3, 1] = col_dir * row_spacing  # voxel axis 1: down a column (increasing row)
    affine[:3, 2] = step
    affine[:3, 3] = np.array(first.ImagePositionPatient, dtype=np.float64)
    arrays = []
    for path, ds in slices:
        try:
            pixels = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        except Exception as err:  # pixel decoding raises many types (missing codec, corrupt data)
            raise ValueError(f"{path}: its pixel data cannot be decoded ({err}).") from err
        arrays.append(pixels.T)  # (columns, rows)
    nib = require_nibabel()
    image = nib.Nifti1Image(np.stack(arrays, axis=-1), LPS_TO_RAS @ affine)
    image.header.set_xyzt_units("mm")
    sources = []
    for _, ds in slices:
        del ds.PixelData  # keep only the header for SEG references
        sources.append(ds)
    return volume_from_image(image, str(folder), dicom_sources=sources)


def _check_agreement(folder: Path, slices: list) -> None:
    """Every slice of `slices` ((path, dataset) pairs) has the first one's PixelSpacing (within
    `PIXEL_SPACING_TOLERANCE`) and FrameOfReferenceUID: the volume's geometry is read from the first slice, and a SEG
    references one frame of reference. Raises `ValueError` naming the slices that differ and their values."""
    first_path, first = slices[0]
    spacing = np.array(first.PixelSpacing, dtype=np.float64)
    differing = [
        (path, [float(v) for v in ds.PixelSpacing]) for path, ds in slices
        if np.shape(ds.PixelSpacing) != spacing.shape
        or not np.allclose(np.array(ds.PixelSpacing, dtype=np.float64), spacing, rtol=PIXEL_SPACING_TOLERANCE, atol=0)
    ]
    _refuse_differing(folder, "PixelSpacing", first_path, spacing.tolist(), differing)
    frame = first.get("FrameOfReferenceUID")
    differing = [(path, ds.get("FrameOfReferenceUID")) for path, ds in slices if ds.get("FrameOfReferenceUID") != frame]
    _refuse_differing(folder, "FrameOfReferenceUID", first_path, frame, differing)


def _refuse_differing(folder: Path, key: str, first_path: Path, expected, differing: list) -> None:
    if differing:
        listed = "; ".join(f"{path.name} has {found}" for path, found in differing[:5])
        more = f" (and {len(differing) - 5} more slices)" if len(differing) > 5 else ""
        raise ValueError(
            f"{folder}: its slices disagree on {key}: {first_path.name} has {expected}, but {listed}{more}; one "
            "series must share one geometry."
        )


def _check_series(reference: Volume, what: str) -> None:
    if not reference.dicom_sources:
        raise ValueError(f"{what} needs the image as a DICOM series folder; {reference.path} is not one.")


def load_dicom_seg(path: str | os.PathLike, reference: Volume) -> Volume:
    """A DICOM SEG of `reference`'s series as a label map: each segment's label id (from its TrackingID when this
    package wrote it, else its segment number) marks its voxels (overlapping segments are an error)."""
    highdicom = _highdicom()
    _check_series(reference, f"The DICOM SEG {path}")
    try:
        seg = highdicom.seg.segread(str(path))
    except Exception as err:
        raise ValueError(f"{path}: cannot be read as a DICOM SEG ({err}).") from err
    series = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    own = str(reference.dicom_sources[0].SeriesInstanceUID)
    if series and own not in series:
        raise ValueError(f"{path} segments series {sorted(series)}, not the image series {own} of {reference.path}.")
    uids = [str(ds.SOPInstanceUID) for ds in reference.dicom_sources]
    try:
        frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, combine_segments=True, assert_missing_frames_are_empty=True
        )  # (slices, rows, columns), segment numbers
    except (ValueError, RuntimeError, KeyError) as err:
        raise ValueError(f"{path}: its frames do not map onto {reference.path} ({err}).") from err
    nib = require_nibabel()
    numbers = np.stack([frame.T for frame in frames], axis=-1).astype(np.int32)  # (columns, rows, slices)
    ids, names = _segment_labels(seg.SegmentSequence)
    stored = np.zeros_like(numbers)
    for number, label in ids.items():
        stored[numbers == number] = label
    labels = volume_from_image(nib.Nifti1Image(stored, reference.image.affine), str(path))
    labels.label_names = names
    return checked_label_map(labels, reference)


def dicom_seg_label_names(path: str | os.PathLike) -> dict[int, str]:
    """The name (SegmentLabel) of each label id of a DICOM SEG, as `load_dicom_seg` gives them, from its header
    alone."""
    pydicom = _pydicom()
    header = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SegmentSequence"])
    return _segment_labels(header.get("SegmentSequence", []))[1]


def _segment_labels(segments) -> tuple[dict[int, int], dict[int, str]]:
    """Each segment number's label id, and each label id's name (SegmentLabel)."""
    # Segments written by `save_dicom_seg` carry their label id in TrackingID; other SEGs' segment numbers are labels.
    ids = {int(d.SegmentNumber): _tracked_label(d) or int(d.SegmentNumber) for d in segments}
    return ids, {ids[int(d.SegmentNumber)]: str(d.SegmentLabel) for d in segments}


def _tracked_label(description) -> int | None:
    """The label id `save_dicom_seg` wrote into a segment's TrackingID, if it is one of ours."""
    tracking = str(description.get("TrackingID", ""))
    label = tracking[len(TRACKING_PREFIX):]
    return int(label) if tracking.startswith(TRACKING_PREFIX) and label.isdigit() else None


def save_dicom_seg(
    labels: np.ndarray, reference: Volume, path: str | os.PathLike, label_names: dict[int, str] | None = None
) -> Path:
    """Writes a canonical-orientation label map as a DICOM SEG of `reference`'s series: one segment per label present
    (numbered 1..N in label order as DICOM requires, named `label_names` or `label <id>`, with the label id in its
    TrackingID so that `load_dicom_seg` gives the ids back), referencing the source instances."""
    highdicom = _highdicom()
    from pydicom.sr.codedict import codes

    _check_series(reference, "Writing a DICOM SEG")
    stored = to_stored_orientation(labels, reference)  # (columns, rows, slices)
    present = [int(v) for v in np.unique(stored) if v != 0]
    if not present:
        raise ValueError("The prediction is empty: a DICOM SEG needs at least one segmented voxel.")
    relabelled = np.zeros(stored.shape, dtype=np.uint8 if len(present) < 256 else np.uint16)
    for number, label in enumerate(present, start=1):
        relabelled[stored == label] = number
    frames = np.ascontiguousarray(np.moveaxis(relabelled, -1, 0).transpose(0, 2, 1))  # (slices, rows, columns)
    algorithm = highdicom.AlgorithmIdentificationSequence(
        name="icmoe-sam", version=_version(), family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = []
    for number, label in enumerate(present, start=1):
        name = (label_names or {}).get(label, f"label {label}")
        category, kind, laterality = segment_codes(name)
        description = highdicom.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"{TRACKING_PREFIX}{label}",  # DICOM numbers segments 1..N; the label id travels here
            tracking_uid=highdicom.UID(),
        )
        if laterality is not None:  # highdicom takes no modifier; DICOM puts it inside the property type's item
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                highdicom.sr.CodedConcept(laterality.value, laterality.scheme_designator, laterality.meaning)
            ]
        descriptions.append(description)
    seg = highdicom.seg.Segmentation(
        source_images=reference.dicom_sources,
        pixel_array=frames,
        segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=highdicom.UID(),
        series_number=int(reference.dicom_sources[0].get("SeriesNumber") or 0) + 1000,
        sop_instance_uid=highdicom.UID(),
        instance_number=1,
        manufacturer="icmoe-sam",
        manufacturer_model_name="icmoe-sam",
        software_versions=_version(),
        device_serial_number="none",
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(str(path))
    return path


def segment_codes(name: str) -> tuple:
    """The SNOMED CT codes (pydicom `Code`s) of a segment named `name`: (property category, property type,
    laterality or None).

    The name is lower-cased with underscores, hyphens and spaces as word breaks and looked up by its keyword
    (`inferior_vena_cava`: `InferiorVenaCava`) among DICOM's anatomical structure segmentation types (CID 7192:
    category Anatomical Structure) and lesion segmentation types (CID 7159: category Morphologically Abnormal
    Structure). A name found only without a leading or trailing `left` / `right` (`kidney_left`, `Left kidney`) is
    that structure with the laterality; `right ventricle` is a structure of its own. Any other name is coded
    Tissue / Tissue, a generic code."""
    from pydicom.sr.codedict import codes

    words = name.lower().replace("_", " ").replace("-", " ").split()
    readings = [(words, None)]
    if len(words) > 1 and words[0] in ("left", "right"):
        readings.append((words[1:], words[0]))
    elif len(words) > 1 and words[-1] in ("left", "right"):
        readings.append((words[:-1], words[-1]))
    for structure, laterality in readings:
        keyword = "".join(word.capitalize() for word in structure)
        for group, category in ((codes.cid7192, codes.SCT.AnatomicalStructure),
                                (codes.cid7159, codes.SCT.MorphologicallyAbnormalStructure)):
            if keyword and keyword in group:
                side = getattr(codes.cid244, laterality.capitalize()) if laterality else None
                return category, getattr(group, keyword), side
    return codes.SCT.Tissue, codes.SCT.Tissue, None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("icmoe-sam")
    except Exception:  # running from a source checkout that is not installed
        return "0+unknown"
