"""The medical toolkit around the model: volumes (NIfTI and DICOM) sliced and segmented, prompts propagated through
them, per-volume metrics in mm, the `icmoe-sam` command (`cli.py`), ONNX export, and the interactive app.

The Hugging Face model, its pipelines and the image rules they apply (`modeling_icmoe.imaging`) stay at the top level:
they are what a checkpoint's remote code copies. Nothing there imports this subpackage, and importing the package
(`import modeling_icmoe`) or this subpackage imports none of its modules, so neither needs nibabel, pydicom, Gradio
or onnxruntime.

    volume_metrics   Dice, IoU, HD95 and NSD of 3-D masks in mm
    volumes          NIfTI in and out, slicing, slice-by-slice segmentation
    dicom            DICOM series in, DICOM SEG in and out
    propagation      key-slice prompts propagated through a volume, corrective clicks
    export           ONNX export
    cli              the `icmoe-sam` command (predict, export, app)
    annotation       what the app does, without its page
    app              the Gradio page
"""
