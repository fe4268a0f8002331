"""Tiny saved models for the app's tests: a prompted IC-MoE and a prompt-free one, each a folder as training
writes it."""

from __future__ import annotations

from pathlib import Path

from transformers import SamProcessor

from conftest import save_tiny_base
from modeling_icmoe import IcMoeAdapterConfig, IcMoeSamModel, save_pretrained_with_pipeline
from semantic_fixtures import save_semantic_model


def save_app_models(folder: Path) -> dict[str, Path]:
    base = save_tiny_base(folder / "base")
    prompted = IcMoeSamModel.from_pretrained(base, icmoe_config=IcMoeAdapterConfig(expert_rank=4))
    save_pretrained_with_pipeline(prompted, SamProcessor.from_pretrained(base), folder / "prompted")
    return {"prompted": folder / "prompted", "prompt_free": save_semantic_model(folder / "prompt_free", base)}
