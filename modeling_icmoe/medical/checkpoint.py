"""A model checkpoint as the `icmoe-sam` command and the app run it: its config checked to be a model they run,
the model and its processor loaded, and what its training recorded about volume data.

`cli.py` and `annotation.py` (the app) both import this module.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..configuration_icmoe_sam import IcMoeSamConfig, IcMoeSamSemanticConfig
from ..run_folder import EVAL_RESULTS_NAME

PROMPTED_MODEL_TYPES = (IcMoeSamConfig.model_type, "sam")
SEMANTIC_MODEL_TYPE = IcMoeSamSemanticConfig.model_type


def training_record(model: str) -> dict:
    """What training recorded about volume data (`volume_data` of eval_results.json: window, slice axis, label
    names), from the model folder or its Hub repo; empty when there is none."""
    path = Path(model) / EVAL_RESULTS_NAME
    if not path.is_file() and not Path(model).exists():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model, EVAL_RESULTS_NAME))
        except Exception as err:  # no such file in the repo, or offline: prediction goes on with the defaults
            print(f"No training record for {model} ({type(err).__name__}); using the command-line settings.")
            return {}
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("volume_data", {})
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}.") from err


def model_config(model: str) -> dict:
    """The `config.json` of a model folder or Hub id, checked to be a model `icmoe-sam` runs."""
    from transformers import PreTrainedConfig

    config = PreTrainedConfig.get_config_dict(model)[0]
    model_type = config.get("model_type")
    if model_type not in (*PROMPTED_MODEL_TYPES, SEMANTIC_MODEL_TYPE):
        raise ValueError(f"{model} holds a `{model_type}` model; `icmoe-sam` runs "
                         f"{', '.join(f'`{t}`' for t in (*PROMPTED_MODEL_TYPES, SEMANTIC_MODEL_TYPE))} models.")
    return config


def load_model(model: str, device: str | None):
    """An IC-MoE (prompted or prompt-free) or SAM checkpoint and its processor, in eval mode on `device`."""
    import torch
    from transformers import SamModel, SamProcessor

    from ..modeling_icmoe_sam import IcMoeSamModel
    from ..modeling_icmoe_semantic import IcMoeSamForSemanticSegmentation

    model_classes = {IcMoeSamConfig.model_type: IcMoeSamModel, "sam": SamModel,
                     SEMANTIC_MODEL_TYPE: IcMoeSamForSemanticSegmentation}
    model_class = model_classes[model_config(model)["model_type"]]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model_class.from_pretrained(model).to(device).eval(), SamProcessor.from_pretrained(model)
