"""The medical toolkit around the model: volumes (NIfTI and DICOM) sliced and segmented, prompts propagated through
them, per-volume metrics in mm, the `icmoe-sam` command (`cli.py`), ONNX export, and the interactive app.

The Hugging Face model, its pipelines and the image rules they apply (`modeling_icmoe.imaging`) stay at the top level:
they are what a checkpoint's remote code copies. Nothing there imports this subpackage, and importing the package
(`import modeling_icmoe`) or this subpackage imports none of its modules, so neither needs nibabel, pydicom, Gradio
or onnxruntime.

    volume_metrics   Dice, IoU, HD95 and NSD of 3-D masks in mm
    volume_grid      the `Volume` type, its canonical grid and slices (what volumes and dicom share)
    prompts          box and point prompts on slices, from their JSON entries, checked
    dicom            DICOM series in, DICOM SEG in and out
    propagation      key-slice prompts propagated through a volume, corrective clicks
    volumes          NIfTI in and out, label maps, slice-by-slice segmentation
    export           ONNX export
    checkpoint       a model folder or Hub id checked and loaded, and what its training recorded
    annotation       what the app does, without its page
    app              the Gradio page
    cli              the `icmoe-sam` command (predict, export, app)

Each module imports only those above it in this list (and the package's top-level modules): there is no import
cycle (tests/test_package_layout.py).
"""
