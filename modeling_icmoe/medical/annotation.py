"""What the interactive app (`icmoe-sam app`, `app.py`) does, without its web page: open a 2-D image or a volume,
prompt a slice with a box and clicks, segment every class of a prompt-free model, propagate key-slice prompts
through a volume, draw the masks over the slice, and write the result.

`AppModel` is a loaded checkpoint with what the app needs to know about it (prompted or prompt-free, from its
config's model type, as `icmoe-sam predict` decides; its classes, the window and slice axis training recorded).
`AnnotationSession` holds one user's image or volume, prompts and label map; `modeling_icmoe/medical/app.py` is the
Gradio page around it. Neither file is imported by the package's `__init__`, so importing `modeling_icmoe` never needs
Gradio, and neither travels to the Hub as a model's remote code.

Slices of a volume are shown and prompted in the frame of `icmoe-sam predict --boxes`: slice `k` along the slice axis
of the canonical (RAS) volume, its rows along the first remaining axis and its columns (`x`) along the second, which
is also how training cut them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..imaging import load_medical_image, mask_box, resolve_window
from ..pipeline_icmoe_semantic import class_maps_at_original_size
from .checkpoint import SEMANTIC_MODEL_TYPE, load_model, model_config, training_record
from .propagation import SliceEmbeddings, SlicePoint
from .volumes import (
    SlicePrompt,
    Volume,
    is_nifti,
    label_values,
    load_volume,
    resolve_slice_axis,
    save_label_map,
    segment_volume,
    segment_volume_without_prompts,
    slice_view,
    to_uint8_volume,
)

CLICK_MODES = ("box", "positive point", "negative point")
EXPORT_FORMATS = ("PNG (this slice)", "NIfTI", "DICOM SEG")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Share of a class's colour in an overlaid pixel: the anatomy stays readable under the mask.
OVERLAY_ALPHA = 0.45
# Class colours, label value 1 first, repeating after ten; their names for the page's legend.
PALETTE = np.array([(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
                    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)], dtype=np.float32)
PALETTE_NAMES = ("red", "green", "blue", "orange", "purple", "cyan", "magenta", "lime", "pink", "teal")
PROMPT_COLOURS = {"box": (255, 225, 25), True: (0, 255, 0), False: (255, 0, 0)}


@dataclass
class AppModel:
    """A loaded checkpoint and what the app needs to know about it.

    prompt_free: whether the model segments its classes without prompts (`icmoe_sam_semantic`).
    class_names: label value -> name: a prompt-free model's classes (background left out), or the names a prompted
        model's training recorded (may be empty).
    label_values: a prompt-free model's label value of each class id (`config.label_values`, else the ids).
    window: the CT window (level, width) slices are scaled with, or `None` for percentiles over the volume.
    slice_axis: the canonical axis volumes are cut along.
    """

    model: torch.nn.Module
    processor: object
    source: str
    prompt_free: bool
    class_names: dict[int, str]
    label_values: list[int] | None
    window: tuple[float, float] | None
    slice_axis: int


def load_app_model(
    model: str, *, device: str | None = None, window: str | list | None = None, slice_axis: str | None = None
) -> AppModel:
    """Loads `model` (a folder or Hub id) as `icmoe-sam predict` does; `window` and `slice_axis` default to what its
    training recorded (`eval_results.json`), as they do there."""
    config = model_config(model)
    record = training_record(model)
    loaded, processor = load_model(model, device)
    prompt_free = config["model_type"] == SEMANTIC_MODEL_TYPE
    if prompt_free:
        values = config.get("label_values") or list(range(len(config["id2label"])))
        names = {values[int(i)]: str(name) for i, name in config["id2label"].items() if int(i) != 0}
    else:
        values, names = None, {int(k): str(v) for k, v in record.get("label_names", {}).items() if int(k) != 0}
    if window is None:
        window = record.get("window")
    elif isinstance(window, (list, tuple)) and len(window) == 1:
        window = window[0]
    return AppModel(
        model=loaded, processor=processor, source=str(model), prompt_free=prompt_free, class_names=names,
        label_values=values, window=resolve_window(window),
        slice_axis=resolve_slice_axis(slice_axis or record.get("slice_axis", "axial")),
    )


@dataclass
class Scan:
    """An opened image or volume as 8-bit pixels.

    pixels: `(H, W, 3)` for a 2-D image; for a volume, the canonical volume scaled once to uint8 (the window or the
        percentiles over the whole volume, as `icmoe-sam predict` scales it).
    volume: the volume as read (geometry for writing results back), `None` for a 2-D image.
    """

    pixels: np.ndarray
    volume: Volume | None
    axis: int
    name: str

    @property
    def num_slices(self) -> int:
        return 1 if self.volume is None else self.pixels.shape[self.axis]

    @property
    def is_dicom(self) -> bool:
        return self.volume is not None and self.volume.dicom_sources is not None

    def rgb(self, index: int) -> np.ndarray:
        """Slice `index` as the `(H, W, 3)` uint8 image SAM's processor takes."""
        if self.volume is None:
            return self.pixels
        return np.repeat(slice_view(self.pixels, self.axis, index)[..., None], 3, axis=-1)

    def plane(self, labels: np.ndarray, index: int) -> np.ndarray:
        """Slice `index` of a label map of this scan, a view."""
        return labels if self.volume is None else slice_view(labels, self.axis, index)


def open_scan(paths: list[str | os.PathLike], app_model: AppModel, workdir: str | os.PathLike) -> Scan:
    """A 2-D image (PNG, JPEG, TIFF, BMP), a NIfTI volume, or the files of one DICOM series (copied into a folder of
    `workdir` together, since uploads arrive one folder each)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("Open an image (PNG, JPEG, TIFF), a NIfTI volume (.nii, .nii.gz) or a DICOM series' files.")
    if len(paths) == 1 and paths[0].suffix.lower() in IMAGE_SUFFIXES:
        pixels = load_medical_image(str(paths[0]), window=app_model.window)
        return Scan(pixels=pixels, volume=None, axis=app_model.slice_axis, name=paths[0].stem)
    if len(paths) == 1 and is_nifti(paths[0]):
        volume = load_volume(paths[0])
    elif len(paths) == 1 and paths[0].is_dir():
        volume = load_volume(paths[0])
    elif all(p.suffix.lower() in (".dcm", "") for p in paths):
        series = Path(tempfile.mkdtemp(prefix="series-", dir=workdir))
        for number, path in enumerate(paths):
            shutil.copy(path, series / f"{number:05d}_{path.name}")
        volume = load_volume(series)
    else:
        raise ValueError(f"Cannot open {', '.join(p.name for p in paths)}: give one image (PNG, JPEG, TIFF, BMP), "
                         "one NIfTI volume, or the .dcm files of one DICOM series.")
    pixels = to_uint8_volume(volume, window=app_model.window)
    name = paths[0].name.split(".")[0] if volume.dicom_sources is None else "series"
    return Scan(pixels=pixels, volume=volume, axis=app_model.slice_axis, name=name)


@dataclass
class ObjectPrompt:
    """The prompts of one class on one slice: a box `[x0, y0, x1, y1]` and clicks `(x, y, positive)`. `drawn` tells a
    box the user drew (a key box for propagation) from one taken from the mask being corrected."""

    box: list[float] | None = None
    points: list[tuple[float, float, bool]] = field(default_factory=list)
    drawn: bool = False


@dataclass
class SliceEmbedding:
    """A slice's image embedding and the sizes that map its prompts and masks, computed once for all its clicks."""

    embeddings: torch.Tensor
    original_sizes: torch.Tensor
    reshaped_input_sizes: torch.Tensor


@torch.no_grad()
def embed_slice(app_model: AppModel, image: np.ndarray) -> SliceEmbedding:
    model = app_model.model
    encoding = app_model.processor(images=image, return_tensors="pt")
    embeddings = model.get_image_embeddings(encoding["pixel_values"].to(model.device, model.dtype))
    return SliceEmbedding(embeddings, encoding["original_sizes"], encoding["reshaped_input_sizes"])


@torch.no_grad()
def segment_slice(app_model: AppModel, embedding: SliceEmbedding, prompt: ObjectPrompt) -> tuple[np.ndarray, float]:
    """The mask `(H, W)` bool of one object prompted by a box and/or clicks, and its predicted IoU. A single click
    without a box is ambiguous: SAM proposes three masks and the one with the highest predicted IoU is kept."""
    if prompt.box is None and not prompt.points:
        raise ValueError("Draw a box (two clicks at opposite corners) or click a point first.")
    model, processor = app_model.model, app_model.processor
    (height, width), (new_height, new_width) = (embedding.original_sizes[0].tolist(),
                                                embedding.reshaped_input_sizes[0].tolist())
    scale = torch.tensor([new_width / width, new_height / height])  # original pixels to the model's input frame
    prompts = {}
    if prompt.box is not None:
        prompts["input_boxes"] = (torch.tensor(prompt.box).view(2, 2) * scale).view(1, 1, 4)  # (B, objects, 4)
    if prompt.points:
        points = torch.tensor([p[:2] for p in prompt.points], dtype=torch.float32) * scale
        prompts["input_points"] = points[None, None]  # (B, objects, N, 2)
        prompts["input_labels"] = torch.tensor([[[int(p[2]) for p in prompt.points]]])  # (B, objects, N)
    device, dtype = model.device, model.dtype
    outputs = model(
        image_embeddings=embedding.embeddings,
        **{key: value.to(device, dtype) if value.is_floating_point() else value.to(device)
           for key, value in prompts.items()},
        multimask_output=prompt.box is None and len(prompt.points) == 1,
    )
    masks = processor.post_process_masks(outputs.pred_masks.float().cpu(), embedding.original_sizes,
                                         embedding.reshaped_input_sizes)[0][0]  # (M, H, W)
    scores = outputs.iou_scores[0, 0].float().cpu()  # (M,)
    best = int(scores.argmax())
    return masks[best].numpy().astype(bool), float(scores[best])


@torch.no_grad()
def class_map_without_prompts(app_model: AppModel, image: np.ndarray) -> np.ndarray:
    """A prompt-free model's label map of one slice, in label values (the rule of `segment_volume_without_prompts`)."""
    model, processor = app_model.model, app_model.processor
    encoding = processor(images=[image], return_tensors="pt")
    pixel_values = encoding["pixel_values"].to(model.device, model.dtype)  # (1, 3, S, S)
    logits = model(pixel_values=pixel_values).logits.cpu()  # (1, L, h, w)
    class_map = class_maps_at_original_size(logits, pixel_values.shape[-1], encoding["reshaped_input_sizes"],
                                            encoding["original_sizes"])[0]
    return np.asarray(app_model.label_values, dtype=np.int32)[class_map]


class AnnotationSession:
    """One user's opened scan, prompts and label map (label values; 0 is the background).

    Where two classes' masks overlap on a slice, the class segmented last paints over the other, as in annotation
    tools: the user's latest action is what they see.
    """

    def __init__(self, app_model: AppModel, scan: Scan, workdir: str | os.PathLike):
        self.app_model, self.scan, self.workdir = app_model, scan, Path(workdir)
        shape = scan.pixels.shape[:2] if scan.volume is None else scan.pixels.shape
        self.labels = np.zeros(shape, dtype=np.int32)
        self.prompts: dict[tuple[int, int], ObjectPrompt] = {}  # (slice, label) -> its prompts
        self.pending_corner: tuple[int, int, float, float] | None = None  # (slice, label, x, y) of a box's first corner
        # Image embeddings, each computed once: a 2-D image's, or a volume's slices (shared by clicks and propagation).
        self._image_embedding: SliceEmbedding | None = None
        self._volume_embeddings: SliceEmbeddings | None = None

    # ------------------------------------------------------------------------------------------- prompting
    def click(self, index: int, x: float, y: float, mode: str, label: int) -> str:
        """A click at pixel `(x, y)` of slice `index` for class `label`: in `box` mode the first click is a corner and
        the second the opposite one (the box is then segmented, its earlier clicks dropped); a point adds a positive
        or negative click to that slice's prompts of the class and segments again. Returns a status line."""
        self._check_prompted()
        if label is None:
            raise ValueError("Choose a class (a label value > 0) first.")
        index, label = self._checked_slice(index), int(label)
        if label <= 0:
            raise ValueError(f"The class is a label value > 0 (0 is the background), got {label}.")
        if mode not in CLICK_MODES:
            raise ValueError(f"Unknown click mode {mode!r}; choose one of {CLICK_MODES}.")
        if mode == "box":
            if self.pending_corner is None or self.pending_corner[:2] != (index, label):
                self.pending_corner = (index, label, float(x), float(y))
                return f"Box corner at ({x:g}, {y:g}); click the opposite corner."
            _, _, x0, y0 = self.pending_corner
            self.pending_corner = None
            box = [min(x0, x), min(y0, y), max(x0, x), max(y0, y)]
            if box[2] <= box[0] or box[3] <= box[1]:
                return (f"The two corners ({x0:g}, {y0:g}) and ({x:g}, {y:g}) make an empty box; click two opposite "
                        "corners.")
            self.prompts[index, label] = ObjectPrompt(box=box, drawn=True)
        else:
            prompt = self.prompts.setdefault((index, label), ObjectPrompt())
            plane = self.scan.plane(self.labels, index)
            if prompt.box is None and (plane == label).any():
                # A correction of a propagated (or prompt-free) mask keeps the object: the mask's box stays its prompt.
                prompt.box = mask_box(plane == label)
            prompt.points.append((float(x), float(y), mode == "positive point"))
        return self.segment(index, label)

    def segment(self, index: int, label: int) -> str:
        """Segments class `label` on slice `index` from its prompts and paints it into the label map."""
        mask, score = segment_slice(self.app_model, self._embedding(index), self.prompts[index, label])
        plane = self.scan.plane(self.labels, index)
        plane[plane == label] = 0
        plane[mask] = label
        return f"Slice {index}, {self.class_name(label)}: mask of {int(mask.sum())} pixels, predicted IoU {score:.2f}."

    def clear(self, index: int, label: int) -> str:
        """Removes class `label` and its prompts from slice `index`."""
        index, label = self._checked_slice(index), int(label)
        plane = self.scan.plane(self.labels, index)
        plane[plane == label] = 0
        self.prompts.pop((index, label), None)
        self.pending_corner = None
        return f"Cleared {self.class_name(label)} on slice {index}."

    def propagate(self) -> str:
        """Segments the whole volume from the boxes drawn on key slices and every click (`segment_volume(...,
        propagate=True, points=...)`), each class from its own key slices; replaces the label map."""
        self._check_prompted()
        if self.scan.volume is None:
            raise ValueError("Propagation runs through a volume; a 2-D image has one slice.")
        keys = [SlicePrompt(index, label, prompt.box) for (index, label), prompt in sorted(self.prompts.items())
                if prompt.drawn]
        if not keys:
            raise ValueError("Draw a box on a key slice first: propagation starts from each class's key slices.")
        model, processor = self.app_model.model, self.app_model.processor
        points = [SlicePoint(index, label, [x, y], positive)
                  for (index, label), prompt in sorted(self.prompts.items()) for x, y, positive in prompt.points]
        self.labels = segment_volume(
            model, processor, self.scan.volume, keys, axis=self.scan.axis, window=self.app_model.window,
            propagate=True, points=points, embeddings=self._slice_embeddings(), progress=False,
        ).astype(np.int32)
        in_plane = tuple(a for a in range(3) if a != self.scan.axis)
        found = {v: int((self.labels == v).any(axis=in_plane).sum()) for v in sorted({p.label for p in keys})}
        return "Propagated: " + ", ".join(f"{self.class_name(v)} on {n} slices" for v, n in found.items()) + "."

    # ------------------------------------------------------------------------------------------ prompt-free
    def segment_everything(self, index: int, whole_volume: bool = False) -> str:
        """A prompt-free model's classes on slice `index`, or on every slice of the volume."""
        if not self.app_model.prompt_free:
            raise ValueError("This model needs prompts: draw a box or click points.")
        index = self._checked_slice(index)
        if whole_volume and self.scan.volume is not None:
            class_ids = segment_volume_without_prompts(self.app_model.model, self.app_model.processor,
                                                       self.scan.volume, axis=self.scan.axis,
                                                       window=self.app_model.window, progress=False)
            self.labels = np.asarray(self.app_model.label_values, dtype=np.int32)[class_ids]
            where = f"all {self.scan.num_slices} slices"
        else:
            self.scan.plane(self.labels, index)[...] = class_map_without_prompts(self.app_model,
                                                                                 self.scan.rgb(index))
            where = f"slice {index}"
        present = [self.class_name(v) for v in label_values(self.labels) if v != 0]
        return f"Segmented {where}; classes found: {', '.join(present) or 'none'}."

    # ----------------------------------------------------------------------------------------------- output
    def render(self, index: int, label: int | None = None) -> np.ndarray:
        """Slice `index` with every class's mask overlaid in its colour, and, for class `label`, its box (yellow), its
        clicks (green positive, red negative) and a box's pending first corner."""
        index = self._checked_slice(index)
        image = self.scan.rgb(index).astype(np.float32)
        plane = self.scan.plane(self.labels, index)
        for value in label_values(plane):
            if value != 0:
                inside = plane == value
                image[inside] = (1 - OVERLAY_ALPHA) * image[inside] + OVERLAY_ALPHA * PALETTE[colour_index(value)]
        image = image.round().astype(np.uint8)
        radius = max(1, min(image.shape[:2]) // 64)
        prompt = self.prompts.get((index, int(label))) if label is not None else None
        if prompt is not None and prompt.box is not None:
            _draw_box(image, prompt.box, PROMPT_COLOURS["box"])
        for x, y, positive in prompt.points if prompt is not None else ():
            _draw_dot(image, x, y, radius, PROMPT_COLOURS[positive])
        if self.pending_corner is not None and self.pending_corner[:2] == (index, label):
            _draw_dot(image, *self.pending_corner[2:], radius, PROMPT_COLOURS["box"])
        return image

    def export(self, fmt: str, index: int) -> Path:
        """Writes the result into the session's folder: the label map of slice `index` as a PNG of label values, the
        volume's as NIfTI at the input's geometry, or as a DICOM SEG referencing the input series."""
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"Unknown format {fmt!r}; choose one of {EXPORT_FORMATS}.")
        index = self._checked_slice(index)
        names = {value: self.class_name(value) for value in label_values(self.labels) if value != 0}
        if fmt == "PNG (this slice)":
            plane = self.scan.plane(self.labels, index)
            dtype = np.uint8 if plane.max(initial=0) < 256 else np.uint16
            stem = self.scan.name if self.scan.volume is None else f"{self.scan.name}_slice{index:03d}"
            path = self.workdir / f"{stem}_labels.png"
            PIL.Image.fromarray(plane.astype(dtype)).save(path)
            return path
        if self.scan.volume is None:
            raise ValueError("A 2-D image's result is a PNG; NIfTI and DICOM SEG are written for volumes.")
        if fmt == "DICOM SEG":
            if not self.scan.is_dicom:
                raise ValueError("A DICOM SEG references a DICOM series; this volume is NIfTI: export NIfTI.")
            if not names:
                raise ValueError("Nothing is segmented yet: a DICOM SEG needs at least one segment.")
            return save_label_map(self.labels, self.scan.volume, self.workdir / f"{self.scan.name}_seg.dcm", names)
        return save_label_map(self.labels, self.scan.volume, self.workdir / f"{self.scan.name}_labels.nii.gz", names)

    def class_name(self, value: int) -> str:
        name = self.app_model.class_names.get(int(value))
        return f"class {value} ({name})" if name else f"class {value}"

    def _slice_embeddings(self) -> SliceEmbeddings:
        if self._volume_embeddings is None:
            self._volume_embeddings = SliceEmbeddings(self.app_model.model, self.app_model.processor, self.scan.pixels,
                                                      axis=self.scan.axis)
        return self._volume_embeddings

    def _embedding(self, index: int) -> SliceEmbedding:
        if self.scan.volume is None:
            if self._image_embedding is None:
                self._image_embedding = embed_slice(self.app_model, self.scan.pixels)
            return self._image_embedding
        volume = self._slice_embeddings()
        embeddings = volume.fetch([index])  # (1, C, h, w)
        return SliceEmbedding(embeddings, torch.tensor([volume.original_size]), torch.tensor([volume.reshaped_size]))

    def _checked_slice(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < self.scan.num_slices:
            raise ValueError(f"Slice {index} is outside 0..{self.scan.num_slices - 1}.")
        return index

    def _check_prompted(self) -> None:
        if self.app_model.prompt_free:
            raise ValueError("This model segments without prompts: use 'Segment everything'.")


def colour_index(value: int) -> int:
    """The `PALETTE` entry of label value `value` (> 0)."""
    return (int(value) - 1) % len(PALETTE)


def _draw_box(image: np.ndarray, box: list[float], colour: tuple[int, int, int]) -> None:
    height, width = image.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, x1 = np.clip([x0, x1], 0, width - 1)
    y0, y1 = np.clip([y0, y1], 0, height - 1)
    image[y0, x0 : x1 + 1] = image[y1, x0 : x1 + 1] = colour
    image[y0 : y1 + 1, x0] = image[y0 : y1 + 1, x1] = colour


def _draw_dot(image: np.ndarray, x: float, y: float, radius: int, colour: tuple[int, int, int]) -> None:
    height, width = image.shape[:2]
    rows, cols = np.ogrid[:height, :width]
    image[(rows - y) ** 2 + (cols - x) ** 2 <= radius**2] = colour
