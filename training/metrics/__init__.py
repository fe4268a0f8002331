"""Evaluation metrics of the training loop, packaged as `evaluate` modules that load offline.

Each metric lives in its own folder as a standalone `evaluate` script, so that it can also be
pushed to the Hub as a Space or loaded by path without installing this project.
"""

from __future__ import annotations

from pathlib import Path

import evaluate

SEGMENTATION_METRIC_PATH = str(Path(__file__).resolve().parent / "icmoe_segmentation")
"""Absolute path of the folder holding the Dice / IoU / HD95 metric script."""


def load_segmentation_metric(**kwargs) -> evaluate.EvaluationModule:
    """Load the binary-mask segmentation metric (Dice, IoU, HD95) from this package, offline.

    Loading by absolute folder path keeps `evaluate` from looking the name up on the Hub.
    `kwargs` go to `evaluate.load` (for example `experiment_id`, `num_process`, `process_id`
    in distributed evaluation).
    """
    return evaluate.load(SEGMENTATION_METRIC_PATH, **kwargs)
