"""The names in a training run's output folder, in one place.

`training/run.py` writes the folder; checkpointing, the outputs, the model card (`hub_cards`), the Hub push, the
`icmoe-sam` command and the benchmarks read it by these names. A folder holds the model's own files (`config.json`,
the weights, the processor, the remote code), and:

    eval_results.json        the evaluation and what the run recorded about itself (EVAL_RESULTS_NAME)
    train_log.jsonl          one JSON record per logged step (TRAIN_LOG_NAME)
    README.md                the model card (CARD_NAME)
    figures/                 expert_load.png, loss.png, examples.png (FIGURES_SUBFOLDER, FIGURE_NAMES)
    adapter/                 the adapter-only checkpoint (ADAPTER_SUBFOLDER, ADAPTER_FILES)
    checkpoints/step_N/      Accelerate states to resume from (CHECKPOINTS_SUBFOLDER)
    icmoe_run.json           the run's fingerprint and the outputs it wrote (RUN_MANIFEST)
    icmoe-sam/               tracker logs, e.g. tensorboard (TRACKER_PROJECT)

The module imports nothing from the package, so every part of the project can use it.
"""

from __future__ import annotations

import warnings

EVAL_RESULTS_NAME = "eval_results.json"
TRAIN_LOG_NAME = "train_log.jsonl"
CARD_NAME = "README.md"
FIGURES_SUBFOLDER = "figures"
FIGURE_NAMES = {"expert_load": "expert_load.png", "loss": "loss.png", "examples": "examples.png"}
ADAPTER_SUBFOLDER = "adapter"
# Not `adapter_config.json` / `adapter_model.safetensors`: transformers takes a folder holding `adapter_config.json`
# for a PEFT adapter.
ADAPTER_CONFIG_NAME = "icmoe_adapter_config.json"
ADAPTER_WEIGHTS_NAME = "icmoe_adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME)
CHECKPOINTS_SUBFOLDER = "checkpoints"
RUN_MANIFEST = "icmoe_run.json"
TRACKER_PROJECT = "icmoe-sam"  # `init_trackers` name: tensorboard logs go to output_dir/icmoe-sam/


def figure_path(name: str) -> str:
    """A figure's path inside the run folder (`figures/loss.png` for `"loss"`), as the model card links it."""
    return f"{FIGURES_SUBFOLDER}/{FIGURE_NAMES[name]}"


def moved_names(module_name: str, names: dict[str, str]):
    """The module `__getattr__` of a module whose run-folder names moved here (`{old name: name here}`): each old
    name still resolves, with a DeprecationWarning that names its new place."""

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        warnings.warn(
            f"{module_name}.{name} is deprecated; use modeling_icmoe.run_folder.{names[name]}.",
            DeprecationWarning, stacklevel=2,
        )
        return globals()[names[name]]

    return __getattr__
