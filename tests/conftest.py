"""Shared fixtures: tiny SAM configurations and a tiny base SAM with real (non-degenerate) weights."""

from __future__ import annotations

import pytest
import torch
from transformers import SamModel

from training.sam_init import init_sam_from_scratch, tiny_sam_config


@pytest.fixture
def sam_config():
    return tiny_sam_config()


@pytest.fixture
def base_sam(sam_config) -> SamModel:
    """A tiny SamModel with PyTorch-default weights (not the near-zero encoder `SamModel(config)` gives)."""
    return init_sam_from_scratch(SamModel(sam_config), seed=0).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def boxes() -> torch.Tensor:
    return torch.tensor([[[4.0, 6.0, 40.0, 44.0]], [[10.0, 12.0, 56.0, 60.0]]])


@pytest.fixture
def masks() -> torch.Tensor:
    labels = torch.zeros(2, 64, 64)
    labels[0, 6:44, 4:40] = 1
    labels[1, 12:60, 10:56] = 1
    return labels
