"""Adapter-only IC-MoE checkpoints: what training changed, as safetensors plus a JSON config naming the base.

The files are deliberately not named `adapter_config.json` / `adapter_model.safetensors`: transformers takes a
folder holding `adapter_config.json` for a PEFT adapter.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file, save_file
from transformers import SamModel

from .configuration_icmoe_sam import IcMoeAdapterConfig
from .modeling_icmoe_sam import IcMoeSamModel, wrap_sam_model
from .modeling_icmoe_semantic import IcMoeSamForSemanticSegmentation
from .run_folder import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME

SEMANTIC_KEY = "semantic"  # in the adapter config: the classes and head of a semantic model
FORMAT_VERSION = 1


def save_icmoe_adapter(
    model: IcMoeSamModel, save_directory: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None
) -> list[Path]:
    """Writes the adapter-only checkpoint of `model` (adapters, and the mask decoder when it is trained).

    Args:
        state_dict: the model's full state when its own tensors are sharded (FSDP); the adapter keys are taken
            from it.

    Returns the paths written: `icmoe_adapter_config.json` and `icmoe_adapter_model.safetensors`.
    """
    if not isinstance(model, IcMoeSamModel):
        raise ValueError(f"save_icmoe_adapter needs an IcMoeSamModel, got {type(model).__name__}.")
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    trainable = model.trainable_state_dict()
    if state_dict is not None:
        trainable = {key: state_dict[key] for key in trainable}
    state = {key: tensor.detach().contiguous().cpu() for key, tensor in trainable.items()}
    weights_path = save_directory / ADAPTER_WEIGHTS_NAME
    save_file(state, weights_path, metadata={"format": "pt", "icmoe_format_version": str(FORMAT_VERSION)})
    config_path = save_directory / ADAPTER_CONFIG_NAME
    payload = {"format_version": FORMAT_VERSION, **model.config.icmoe_config.to_dict()}
    if isinstance(model, IcMoeSamForSemanticSegmentation):  # the classes and the head the weights belong to
        payload[SEMANTIC_KEY] = model.semantic_config_dict()
    config_path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return [config_path, weights_path]


def _adapter_file(adapter_dir_or_id: str | os.PathLike, filename: str, hub_kwargs: dict) -> str:
    local = Path(adapter_dir_or_id)
    if local.is_dir():
        path = local / filename
        if not path.is_file():
            raise ValueError(f"{local} is not an IC-MoE adapter folder: {filename} is missing.")
        return str(path)
    return hf_hub_download(str(adapter_dir_or_id), filename, **hub_kwargs)


def load_icmoe_adapter_config(adapter_dir_or_id: str | os.PathLike, **hub_kwargs) -> IcMoeAdapterConfig:
    """Reads the adapter configuration of an adapter-only checkpoint (local folder or Hub id)."""
    return _read_adapter_config(adapter_dir_or_id, hub_kwargs)[0]


def _read_adapter_config(adapter_dir_or_id, hub_kwargs: dict) -> tuple[IcMoeAdapterConfig, dict | None]:
    """The adapter configuration, and the semantic model's classes and head (None for a prompted model's)."""
    path = _adapter_file(adapter_dir_or_id, ADAPTER_CONFIG_NAME, hub_kwargs)
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}.") from err
    version = payload.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has IC-MoE adapter format {version!r}; this version reads {FORMAT_VERSION}.")
    semantic = payload.pop(SEMANTIC_KEY, None)
    return IcMoeAdapterConfig.from_dict(payload), semantic


def load_icmoe_adapter(
    base_model_or_id: SamModel | str | os.PathLike | None,
    adapter_dir_or_id: str | os.PathLike,
    **hub_kwargs,
) -> IcMoeSamModel:
    """Rebuilds a trained IC-MoE model from its base SAM and an adapter-only checkpoint.

    Args:
        base_model_or_id: a `SamModel` in memory, or the Hub id / local folder of a `SamModel` checkpoint. `None` uses
            the base recorded in the adapter config.
        adapter_dir_or_id: local folder or Hub id written by `save_icmoe_adapter`.
        hub_kwargs: `revision`, `token`, `cache_dir`, ... for Hub downloads of the adapter.

    Returns:
        The `IcMoeSamModel` in eval mode, or the `IcMoeSamForSemanticSegmentation` when the adapter was saved from one.
    """
    adapter_config, semantic = _read_adapter_config(adapter_dir_or_id, hub_kwargs)
    if base_model_or_id is None:
        base_model_or_id = adapter_config.base_model_name_or_path
        if base_model_or_id is None:
            raise ValueError("The adapter config names no base model; pass `base_model_or_id`.")
    model_class = IcMoeSamModel if semantic is None else IcMoeSamForSemanticSegmentation
    config_kwargs = {} if semantic is None else IcMoeSamForSemanticSegmentation.semantic_config_kwargs(semantic)
    if isinstance(base_model_or_id, SamModel):
        model = wrap_sam_model(base_model_or_id, adapter_config, model_class, **config_kwargs)
    else:
        model = model_class.from_pretrained(
            base_model_or_id, icmoe_config=dataclasses.replace(adapter_config), **config_kwargs
        )

    weights_path = _adapter_file(adapter_dir_or_id, ADAPTER_WEIGHTS_NAME, hub_kwargs)
    try:
        state = load_file(weights_path)
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{weights_path} is not a readable safetensors file: {err}") from err
    expected = model.trainable_state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"The adapter in {adapter_dir_or_id} does not fit the model: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}."
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise ValueError(
                f"Adapter tensor {key} has shape {tuple(tensor.shape)} but the model expects {tuple(expected[key].shape)}."
            )
    with torch.no_grad():
        model.load_state_dict(state, strict=False)
    return model.eval()
