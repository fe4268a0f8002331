"""One module names the run folder's files (`modeling_icmoe.run_folder`); the names it took over still resolve from
their old modules, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_icmoe import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, run_folder

REPO = Path(__file__).resolve().parents[1]

MOVED = [
    ("training.hub", "ADAPTER_SUBFOLDER", "adapter"),
    ("training.hub", "ADAPTER_FILES", ("icmoe_adapter_config.json", "icmoe_adapter_model.safetensors")),
    ("training.hub", "FIGURES_SUBFOLDER", "figures"),
    ("training.hub", "CARD_NAME", "README.md"),
    ("hub_cards.card", "ADAPTER_SUBFOLDER", "adapter"),
    ("hub_cards.card", "ADAPTER_CONFIG_FILE", "icmoe_adapter_config.json"),
    ("hub_cards.card", "EVAL_RESULTS_FILE", "eval_results.json"),
    ("training.checkpointing", "RUN_MANIFEST", "icmoe_run.json"),
    ("training.checkpointing", "TRACKER_PROJECT", "icmoe-sam"),
]


@pytest.mark.parametrize("module, name, value", MOVED)
def test_moved_names_still_resolve_with_a_deprecation_warning(module, name, value):
    with pytest.deprecated_call(match=rf"{module}\.{name} is deprecated; use modeling_icmoe\.run_folder\."):
        assert getattr(importlib.import_module(module), name) == value
    exec_globals: dict = {}
    with pytest.deprecated_call():
        exec(f"from {module} import {name}", exec_globals)
    assert exec_globals[name] == value


def test_unknown_names_still_raise_attribute_error():
    import training.hub

    with pytest.raises(AttributeError, match="has no attribute 'NOT_A_NAME'"):
        training.hub.NOT_A_NAME  # noqa: B018


def test_the_adapter_file_names_are_the_run_folders():
    assert (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME) == run_folder.ADAPTER_FILES
    assert run_folder.figure_path("loss") == "figures/loss.png"


@pytest.mark.slow  # a fresh interpreter
def test_the_cards_and_the_command_import_the_names_without_the_harness():
    code = ("import sys, hub_cards, modeling_icmoe.medical.cli; "
            "assert not [m for m in sys.modules if m == 'training' or m.startswith('training.')]")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
