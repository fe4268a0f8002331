"""The prompt-free benchmark's methods: what each trains, with which run.py arguments, and its learning-rate grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# The decoder every prompt-free SAM method uses except `icmoe_queries` (run.py's default), given explicitly so that
# a change of run.py's default does not change what the recorded runs mean.
DEFAULT_DECODER = "mask_tokens"
# `unet_own_budget` trains this many times the SAM methods' steps: a U-Net from scratch usually trains far longer
# than a fine-tuned model (nnU-Net: 250,000 steps), and 4x is what one CPU affords at this benchmark's size.
UNET_OWN_BUDGET_FACTOR = 4


@dataclass(frozen=True, kw_only=True)
class SemanticMethod:
    """One method of the prompt-free benchmark."""

    family: Literal["sam", "unet", "prompted"] = field(metadata={"help": (
        "`sam`: run.py --prompt none; `unet`: benchmarks/unet_baseline.py; `prompted`: run.py --prompt box on one row "
        "per (image, class present), scored per class as the upper bound.")})
    base: str | None = field(metadata={"help": "The accuracy benchmark's method whose run.py method, rank and IC-MoE "
                                               "config it trains (accuracy_methods.method_run_args); None: no SAM."})
    lr_grid: tuple[float, ...] = field(metadata={"help": "Learning rates tried on the validation split."})
    run_args: tuple[str, ...] = field(default=(), metadata={
        "help": "Further arguments of its entry (run.py or unet_baseline.py)."})
    steps_factor: int = field(default=1, metadata={"help": "Training steps as a multiple of --max_train_steps."})


# Grids, two rates each (what one session's CPU affords with two selection seeds): the decoder probe
# (results/semantic_decoder_probe.json, 600 steps) found IC-MoE's prompt-free head better at 1e-3 than at 3e-4 (0.535
# against 0.274), above the prompted benchmark's best rates (a class head trained from scratch), so the SAM grids are
# 1e-3 and the rate above it; full fine-tuning, which moves every encoder weight, one step lower. The U-Net's AdamW
# reached 0.66 at 3e-3 against 0.36 at 1e-3 in a 300-step probe (unet_baseline.py), so its grid is 3e-3 and the rate
# above. The prompted upper bound's is the prompted benchmark's best IC-MoE rate (3e-4) and the one above it. The U-Net
# at its own budget takes the same-budget probe's best rate without a selection of its own (a 2,400-step run costs
# what 11 SAM runs cost here): a limit of this benchmark, stated in its report.
SAM_GRID = (1e-3, 3e-3)
SAM_PROMPT_FREE = {"family": "sam", "lr_grid": SAM_GRID, "run_args": ("--semantic_decoder", DEFAULT_DECODER)}
UNET = {"family": "unet", "base": None, "lr_grid": (3e-3, 1e-2), "run_args": ("--optimizer", "adamw")}
SEMANTIC_METHODS: dict[str, SemanticMethod] = {
    "icmoe": SemanticMethod(**SAM_PROMPT_FREE, base="icmoe"),
    "icmoe_queries": SemanticMethod(**{**SAM_PROMPT_FREE, "run_args": ("--semantic_decoder", "queries")}, base="icmoe"),
    "lora_matched": SemanticMethod(**SAM_PROMPT_FREE, base="lora_matched"),
    "adapter": SemanticMethod(**SAM_PROMPT_FREE, base="adapter"),
    "decoder": SemanticMethod(**SAM_PROMPT_FREE, base="decoder"),
    "full": SemanticMethod(**{**SAM_PROMPT_FREE, "lr_grid": (3e-4, 1e-3)}, base="full"),
    "unet": SemanticMethod(**UNET),
    "unet_own_budget": SemanticMethod(**{**UNET, "lr_grid": (3e-3,)}, steps_factor=UNET_OWN_BUDGET_FACTOR),
    "icmoe_prompted": SemanticMethod(family="prompted", base="icmoe", lr_grid=(3e-4, 1e-3)),
}
# The two IC-MoE decoders: validation Dice decides which one is the reference of the paired comparison.
DECODER_CANDIDATES = ("icmoe", "icmoe_queries")
PROMPTED_COUNTING = (
    "one box per (image, class present in the reference), taken from the label; each class's Dice is the mean over "
    "its prompted rows and the headline the mean over classes. Classes absent from an image are never prompted, so "
    "unlike the prompt-free rule there are no false positives on absent classes: an upper bound, not a peer. A pair "
    "whose object vanishes at SAM's label resolution is neither trained nor scored (`unscored_pairs`), and is left "
    "out of its paired comparisons.")
