"""Prompts on the slices of a volume: boxes (`SlicePrompt`) and clicks (`SlicePoint`), read from their JSON entries
(`icmoe-sam predict --boxes`, `--points`) and checked against the volume, with errors that name the entry, its class
and its slice.

`volumes.py` (slice-by-slice segmentation) and `propagation.py` (key slices propagated through the volume) both take
these prompts; this module imports neither.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..imaging import check_boxes, check_points
from .volume_grid import Volume


@dataclass
class SlicePrompt:
    """One prompt: the class `label` in slice `index` along the slice axis, as a box in that slice's pixels. `source`
    names where it came from (a file and entry), for error messages."""

    index: int
    label: int
    box: list[float]
    source: str = ""


@dataclass
class SlicePoint:
    """A click on slice `index` for class `label` at `point` = `[x, y]` (pixels of that slice, the frame of boxes):
    `positive` marks the class, negative marks what is not the class. `source` names where it came from (a file and
    entry), for error messages."""

    index: int
    label: int
    point: list[float]
    positive: bool = True
    source: str = ""


def entry_number(entry: dict, key: str, where: str, *, integral: bool) -> float | int:
    """`entry[key]` as a finite number (an int where `integral`), or a `ValueError` naming `where`."""
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            integral and value != int(value)):
        raise ValueError(f"{where}: {key!r} must be {'an integer' if integral else 'a finite number'}, got {value!r}.")
    return int(value) if integral else float(value)


def parse_entry(entry, number: int, source: str, kind: str, fields: dict[str, str]) -> tuple[str, int, int]:
    """Checks a JSON prompt entry's form: a dict with exactly the keys of `fields` (key: description), integer
    `slice` and `label` > 0. Returns its origin (`SOURCE: Kind entry N`), slice and label."""
    origin = f"{source + ': ' if source else ''}{kind} entry {number}"
    form = "{" + ", ".join(f"{k!r}: {v}" for k, v in fields.items()) + "}"
    if not isinstance(entry, dict) or set(entry) != set(fields):
        raise ValueError(f"{origin} must be {form}, got {entry!r}.")
    index = entry_number(entry, "slice", origin, integral=True)
    label = entry_number(entry, "label", origin, integral=True)
    if label <= 0:
        raise ValueError(f"{origin}: class {label}, slice {index}: labels are > 0 (0 is the background).")
    return origin, index, label


def _where(item: SlicePrompt | SlicePoint, source: str = "") -> str:
    """`FILE entry N: class L, slice S` for error messages."""
    origin = getattr(item, "source", "") or source
    return f"{origin + ': ' if origin else ''}class {item.label}, slice {item.index}"


def check_key_prompts(
    prompts: Sequence[SlicePrompt], points: Sequence[SlicePoint], *, num_slices: int, slice_shape: tuple[int, int]
) -> None:
    """Raises `ValueError` naming the source, class and slice of the first bad prompt: a slice outside
    `0..num_slices - 1`, a box or point outside the `slice_shape` (rows, columns) slice, two boxes for one class on one
    slice, a point repeated or given both signs, or a point on a class without any key box."""
    boxes: dict[tuple[int, int], SlicePrompt] = {}
    for prompt in prompts:
        if not 0 <= prompt.index < num_slices:
            raise ValueError(f"{_where(prompt)}: the key slice is outside the volume's slices 0..{num_slices - 1}.")
        check_boxes(prompt.box, slice_shape, what=f"{_where(prompt)}: box", frame_name="slice")
        earlier = boxes.setdefault((prompt.label, prompt.index), prompt)
        if earlier is not prompt:
            raise ValueError(f"{_where(prompt)}: a second box for this class on this slice ({earlier.box} from "
                             f"{earlier.source or 'an earlier prompt'}); give one box per class and slice.")
    keyed = {label for label, _ in boxes}
    clicks: dict[tuple[int, int, float, float], SlicePoint] = {}
    for point in points:
        if not 0 <= point.index < num_slices:
            raise ValueError(f"{_where(point)}: the point's slice is outside the volume's slices 0..{num_slices - 1}.")
        x, y = point.point
        check_points(point.point, slice_shape, what=f"{_where(point)}: point", frame_name="slice")
        if point.label not in keyed:
            raise ValueError(f"{_where(point)}: a point for a class with no key box; points refine a propagated "
                             f"class, so give class {point.label} a key box (classes with one: {sorted(keyed)}).")
        earlier = clicks.setdefault((point.label, point.index, float(x), float(y)), point)
        if earlier is not point:
            kind = "repeats" if earlier.positive == point.positive else "contradicts"
            raise ValueError(f"{_where(point)}: point {point.point} {kind} {earlier.source or 'an earlier point'}.")


def prompts_from_boxes(entries: Sequence[dict], volume: Volume, axis: int, source: str = "") -> list[SlicePrompt]:
    """Prompts from `[{"slice": s, "label": l, "box": [x0, y0, x1, y1]}, ...]` in canonical slice pixels. Errors name
    `source` (the JSON file), the entry, its class and slice: a malformed entry, a slice outside the volume, a box
    outside the slice, two boxes for one class on one slice."""
    if isinstance(entries, dict) or not isinstance(entries, Sequence):
        raise ValueError(f"{source or 'boxes'}: expected a list of box entries, got {type(entries).__name__}.")
    prompts = []
    for number, entry in enumerate(entries):
        origin, index, label = parse_entry(entry, number, source, "Box",
                                           {"slice": "int", "label": "int", "box": "[x0, y0, x1, y1]"})
        where, box = f"{origin}: class {label}, slice {index}", entry["box"]
        if not isinstance(box, list) or len(box) != 4:
            raise ValueError(f"{where}: 'box' must be [x0, y0, x1, y1], got {box!r}.")
        box = [entry_number({"box": v}, "box", where, integral=False) for v in box]
        prompts.append(SlicePrompt(index, label, box, origin))
    check_key_prompts(prompts, [], num_slices=volume.num_slices(axis), slice_shape=volume.slice(axis, 0).shape)
    return prompts


def points_from_entries(entries: Sequence[dict], volume: Volume, axis: int, source: str = "") -> list[SlicePoint]:
    """Points from `[{"slice": s, "label": l, "point": [x, y], "positive": true}, ...]` in canonical slice pixels (the
    frame of box entries). A malformed entry or a point outside the volume raises a `ValueError` naming `source`, the
    entry, its class and slice; whether its class has a key box is checked against the boxes (`check_key_prompts`)."""
    if isinstance(entries, dict) or not isinstance(entries, Sequence):
        raise ValueError(f"{source or 'points'}: expected a list of point entries, got {type(entries).__name__}.")
    points = []
    for number, entry in enumerate(entries):
        origin, index, label = parse_entry(entry, number, source, "Point",
                                           {"slice": "int", "label": "int", "point": "[x, y]", "positive": "bool"})
        where, point, positive = f"{origin}: class {label}, slice {index}", entry["point"], entry["positive"]
        if not isinstance(point, list) or len(point) != 2:
            raise ValueError(f"{where}: 'point' must be [x, y], got {point!r}.")
        if not isinstance(positive, bool):
            raise ValueError(f"{where}: 'positive' must be true or false, got {positive!r}.")
        point = [entry_number({"point": v}, "point", where, integral=False) for v in point]
        points.append(SlicePoint(index, label, point, positive, origin))
    slice_shape = volume.slice(axis, 0).shape
    for point in points:  # the box checks need the boxes; the range checks do not
        if not 0 <= point.index < volume.num_slices(axis):
            raise ValueError(f"{_where(point)}: the point's slice is outside the volume's slices "
                             f"0..{volume.num_slices(axis) - 1}.")
        check_points(point.point, slice_shape, what=f"{_where(point)}: point", frame_name="slice")
    return points
