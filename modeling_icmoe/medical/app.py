"""The interactive app: a Gradio page around `annotation.AnnotationSession`, started by `icmoe-sam app --model DIR`
or, as a Hugging Face Space, by the repository's top-level `app.py`.

Open a 2-D image, a NIfTI volume or a DICOM series' files; move through a volume with the slice slider. With a
prompted model (`icmoe_sam`, `sam`), two clicks in `box` mode are a box's opposite corners, and positive and negative
point clicks correct the mask of the chosen class on that slice; `Propagate` segments the volume from the key slices.
With a prompt-free model (`icmoe_sam_semantic`), `Segment everything` segments every class on the slice or in the
whole volume. `Export` writes the slice's label map as PNG, or the volume's as NIfTI or DICOM SEG.

Gradio is imported with this file, which neither the package's `__init__` nor a model's remote code imports: it is an
optional dependency (`pip install "icmoe-sam[app]"`).
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from .annotation import (
    CLICK_MODES,
    EXPORT_FORMATS,
    PALETTE_NAMES,
    AnnotationSession,
    AppModel,
    colour_index,
    load_app_model,
    open_scan,
)

try:
    import gradio as gr
except ImportError as err:  # an optional dependency: only the app needs it
    raise ImportError('The interactive app needs Gradio: pip install "icmoe-sam[app]".') from err

# Pixels of the page's slice view. The browser only scales images down, so smaller slices are shown enlarged by a
# whole factor (each pixel a square block), and clicks divided back to the slice's pixels.
VIEW_SIZE = 512
FILE_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii", ".gz", ".dcm"]


def _introduction(app_model: AppModel) -> str:
    classes = ", ".join(f"{value} = {name} ({PALETTE_NAMES[colour_index(value)]})"
                        for value, name in sorted(app_model.class_names.items()))
    if app_model.prompt_free:
        how = ("This model segments its classes without prompts: open an image or a volume and press "
               f"**Segment everything** (classes: {classes}).")
    else:
        how = ("Open an image or a volume. In **box** mode, click two opposite corners of the object; then correct "
               "the mask with **positive point** and **negative point** clicks. Choose the class (a label value) "
               "before prompting" + (f" (classes named in training: {classes})" if classes else "") + ". On a volume, "
               "box the object on one or more key slices and press **Propagate**.")
    name = Path(app_model.source).name if Path(app_model.source).exists() else app_model.source  # no local path shown
    return f"## IC-MoE SAM: {name}\n{how} Volume slices are shown as the model was trained on them."


def build_app(model: str | AppModel, *, device: str | None = None, window: str | list | None = None,
              slice_axis: str | None = None) -> gr.Blocks:
    """The app's page for `model` (a folder, a Hub id or a loaded `AppModel`), loaded once and shared by every visitor;
    each visitor's scan and prompts live in their own session state."""
    app_model = model if isinstance(model, AppModel) else load_app_model(
        model, device=device, window=window, slice_axis=slice_axis)
    workdir = tempfile.mkdtemp(prefix="icmoe-sam-app-")
    with gr.Blocks(title="IC-MoE SAM", analytics_enabled=False) as demo:
        gr.Markdown(_introduction(app_model))
        session = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Image, NIfTI volume or DICOM series files", file_count="multiple",
                                file_types=FILE_TYPES, elem_id="scan-input")
                slice_index = gr.Slider(0, 1, value=0, step=1, label="Slice", visible=False, elem_id="slice-slider")
                mode = gr.Radio(list(CLICK_MODES), value="box", label="A click adds", elem_id="click-mode",
                                visible=not app_model.prompt_free)
                label = gr.Number(value=min(app_model.class_names, default=1), precision=0, minimum=1,
                                  label="Class (label value)", elem_id="class-value",
                                  visible=not app_model.prompt_free)
                clear = gr.Button("Clear this class on this slice", visible=not app_model.prompt_free)
                propagate = gr.Button("Propagate through the volume", visible=False, elem_id="propagate")
                everything_slice = gr.Button("Segment everything on this slice", visible=app_model.prompt_free,
                                             elem_id="everything-slice")
                everything_volume = gr.Button("Segment everything in the volume", visible=False,
                                              elem_id="everything-volume")
                fmt = gr.Radio(list(EXPORT_FORMATS), value=EXPORT_FORMATS[0], label="Export as",
                               elem_id="export-format")
                export = gr.Button("Export", variant="primary", elem_id="export")
                result = gr.File(label="Result", interactive=False, elem_id="result-file")
            with gr.Column(scale=2):
                view = gr.Image(label="Slice (click to prompt)", type="numpy", format="png", interactive=False,
                                height=VIEW_SIZE + 8, elem_id="slice-view")
                status = gr.Textbox(label="Status", interactive=False, elem_id="status")

        opened = [session, view, slice_index, propagate, everything_volume, status]
        files.upload(partial(on_open, app_model, workdir), [files, label], opened)
        slice_index.change(on_show, [session, slice_index, label], [view])
        label.change(on_show, [session, slice_index, label], [view])
        view.select(on_click, [session, slice_index, mode, label], [view, status])
        clear.click(on_clear, [session, slice_index, label], [view, status])
        propagate.click(on_propagate, [session, slice_index, label], [view, status])
        everything_slice.click(partial(on_everything, False), [session, slice_index, label], [view, status])
        everything_volume.click(partial(on_everything, True), [session, slice_index, label], [view, status])
        export.click(on_export, [session, slice_index, fmt], [result, status])
    demo.queue(default_concurrency_limit=1)  # one model, one forward pass at a time
    return demo


# ---------------------------------------------------------------------------------------------- callbacks
# The page's events, as plain functions of the components' values: a refusal (bad input, nothing to act on) becomes
# the status line, never an exception in the page.
def on_open(app_model: AppModel, workdir: str, paths: list[str] | None, value: float | None):
    """Opens uploaded files in a new session: (session, shown slice, slider, propagate button, volume button,
    status). A volume opens on its middle slice."""
    if not paths:
        return None, None, gr.update(visible=False), gr.update(), gr.update(), "Nothing opened."
    try:
        scan = open_scan(paths, app_model, workdir)
    except (ValueError, OSError) as err:
        return None, None, gr.update(visible=False), gr.update(), gr.update(), f"Cannot open: {err}"
    current = AnnotationSession(app_model, scan, tempfile.mkdtemp(dir=workdir))
    volume, middle = scan.volume is not None, scan.num_slices // 2
    height, width = scan.rgb(0).shape[:2]
    what = f"a volume of {scan.num_slices} slices of {width} x {height} pixels" if volume else (
        f"an image of {width} x {height} pixels")
    return (current, shown(current, middle, value),
            gr.update(visible=volume, minimum=0, maximum=max(scan.num_slices - 1, 1), value=middle),
            gr.update(visible=volume and not app_model.prompt_free),
            gr.update(visible=volume and app_model.prompt_free),
            f"Opened {scan.name}: {what}.")


def on_show(current: AnnotationSession | None, index: int, value: float | None):
    return None if current is None else shown(current, index, value)


def on_click(current: AnnotationSession | None, index: int, mode: str, value: float | None,
             event: gr.SelectData):
    zoom = display_zoom(current.scan.rgb(0).shape) if current is not None else 1
    x, y = (int(v) // zoom for v in event.index)  # the slice's pixel under the click
    return _act(current, index, value, lambda: current.click(index, x, y, mode, value))


def on_clear(current: AnnotationSession | None, index: int, value: float | None):
    return _act(current, index, value, lambda: current.clear(index, value))


def on_propagate(current: AnnotationSession | None, index: int, value: float | None):
    return _act(current, index, value, lambda: current.propagate())


def on_everything(whole_volume: bool, current: AnnotationSession | None, index: int, value: float | None):
    return _act(current, index, value, lambda: current.segment_everything(index, whole_volume))


def on_export(current: AnnotationSession | None, index: int, export_format: str):
    """(the written file for the page to offer, status)."""
    if current is None:
        return None, "Open an image first."
    try:
        path = current.export(export_format, index)
    except (ValueError, OSError) as err:
        return None, f"Cannot export: {err}"
    return str(path), f"Wrote {path.name}."


def _act(current: AnnotationSession | None, index: int, value: float | None, action) -> tuple[np.ndarray | None, str]:
    """Runs one of the session's actions: (the slice shown afterwards, status)."""
    if current is None:
        return None, "Open an image first."
    try:
        message = action()
    except ValueError as err:
        message = str(err)
    return shown(current, index, value), message


def display_zoom(shape: tuple[int, ...]) -> int:
    """The whole factor a slice of `shape` is enlarged by on the page (1 for slices of `VIEW_SIZE` pixels or more)."""
    return max(1, VIEW_SIZE // max(shape[:2]))


def shown(current: AnnotationSession, index: int, value: float | None) -> np.ndarray:
    """The slice with its overlay as the page shows it, enlarged by `display_zoom`."""
    image = current.render(index, value)
    zoom = display_zoom(image.shape)
    return image.repeat(zoom, axis=0).repeat(zoom, axis=1)


def launch_app(model: str, *, host: str = "127.0.0.1", port: int | None = None, device: str | None = None,
               window: str | list | None = None, slice_axis: str | None = None) -> None:
    """Builds the app for `model` and serves it until interrupted."""
    demo = build_app(model, device=device, window=window, slice_axis=slice_axis)
    demo.launch(server_name=host, server_port=port, show_error=True)
