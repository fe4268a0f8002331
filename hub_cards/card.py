"""Model cards for IC-MoE SAM training outputs, rendered whole from `templates/model_card.md.j2`.

A training run (`training/run.py`) leaves an output folder with `eval_results.json`, the checkpoint (`config.json`
carrying `icmoe_config`) and/or `adapter/icmoe_adapter_config.json`, and `figures/`. `render_model_card` turns these
into a `huggingface_hub.ModelCard` whose metadata (`model-index`) carries the evaluation, for the full checkpoint or
for the adapter-only repository.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from modeling_icmoe import run_folder

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md.j2"
FIGURES = {name: run_folder.figure_path(name) for name in run_folder.FIGURE_NAMES}
__getattr__ = run_folder.moved_names(__name__, {
    "ADAPTER_SUBFOLDER": "ADAPTER_SUBFOLDER",
    "ADAPTER_CONFIG_FILE": "ADAPTER_CONFIG_NAME",
    "EVAL_RESULTS_FILE": "EVAL_RESULTS_NAME",
})
TAGS = ["medical", "segmentation", "sam"]
# Tags that describe how a model was trained: a LoRA baseline is not a mixture of experts.
METHOD_TAGS = {
    "icmoe": ["mixture-of-experts", "icmoe"],
    "lora": ["lora", "peft"],
    "adapter": ["adapter"],
    "decoder": ["decoder-fine-tuning"],
    "full": ["full-fine-tuning"],
    "zeroshot": ["zero-shot"],
}
PAPER_ID = "2510.17684"
METHOD_LABELS = {
    "icmoe": "IC-MoE adapters",
    "lora": "LoRA",
    "adapter": "bottleneck adapters",
    "decoder": "mask decoder only",
    "full": "full fine-tuning",
    "zeroshot": "zero-shot base SAM",
}
METHOD_TITLES = {
    "icmoe": "IC-MoE SAM",
    "lora": "SAM with LoRA",
    "adapter": "SAM with bottleneck adapters",
    "decoder": "SAM with a fine-tuned mask decoder",
    "full": "Fully fine-tuned SAM",
    "zeroshot": "Zero-shot SAM",
}
# The adapter fields a reader needs to understand the architecture; the loss weights stay in the config file.
ADAPTER_CARD_FIELDS = (
    "num_shared_experts",
    "num_basic_experts",
    "num_semantic_experts",
    "semantic_dilations",
    "num_adaptive_experts",
    "num_experts_per_tok",
    "expert_rank",
    "routed_scaling_factor",
    "target_layers",
    "expert_placement",
    "expert_activation",
    "train_mask_decoder",
    "pixel_vote_weight",
    "router_aux_loss_coef",
    "vote_loss_coef",
    "pixel_loss_coef",
    "contrastive_loss_coef",
)
REQUIRED_EVAL_FIELDS = ("method", "base_model", "dataset", "eval_split", "n_images", "dice", "iou", "hd95")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_repo_id(value: str | None) -> bool:
    """Whether `value` reads as a `namespace/name` Hub id rather than a local path."""
    if not value or os.path.exists(value):
        return False
    return bool(_HUB_ID.match(value)) and ".." not in value and not value.endswith((".git", "."))


def public_name(value: str) -> str:
    """How a card or a commit message names a base model or dataset: a Hub id as it is, anything else (a local
    path, existing or not) by its last component, so that no local path leaves the machine."""
    if is_hub_repo_id(value):
        return value
    path = Path(value)
    return path.resolve().name if path.exists() else path.name or value


def read_eval_results(output_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(output_dir) / run_folder.EVAL_RESULTS_NAME
    if not path.is_file():
        raise ValueError(f"{path} is missing: a model card needs the evaluation written by training/run.py.")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}.") from err
    missing = [key for key in REQUIRED_EVAL_FIELDS if key not in results]
    if missing:
        raise ValueError(f"{path} lacks the fields {missing}.")
    if results["method"] not in METHOD_LABELS:
        raise ValueError(f"{path}: `method` must be one of {sorted(METHOD_LABELS)}, got {results['method']!r}.")
    return results


def read_adapter_config(output_dir: str | os.PathLike, *, adapter_only: bool) -> dict[str, Any] | None:
    """The IC-MoE adapter config: from the adapter folder first for adapter-only cards, else from `config.json`."""
    output_dir = Path(output_dir)
    adapter_path = output_dir / run_folder.ADAPTER_SUBFOLDER / run_folder.ADAPTER_CONFIG_NAME
    config_path = output_dir / "config.json"
    sources = [adapter_path, config_path] if adapter_only else [config_path, adapter_path]
    for path in sources:
        if not path.is_file():
            continue
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}.") from err
        if path == config_path:
            payload = payload.get("icmoe_config")
            if payload is None:
                continue
        return {key: value for key, value in payload.items() if key != "format_version"}
    if adapter_only:
        raise ValueError(f"An adapter-only card needs {adapter_path} (or `icmoe_config` in {config_path}).")
    return None


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _format_metric(value: Any, std: Any = None, digits: int = 4) -> str:
    value = _finite(value)
    if value is None:
        return "n/a"
    std = _finite(std)
    return f"{value:.{digits}f}" if std is None else f"{value:.{digits}f} ± {std:.{digits}f}"


def _format_duration(seconds: Any) -> str:
    seconds = _finite(seconds)
    if seconds is None:
        return "n/a"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _evaluation_rows(results: dict[str, Any], model_label: str) -> list[dict[str, str]]:
    rows = [
        {
            "name": f"**{model_label}** (this model)",
            "dice": _format_metric(results["dice"], results.get("dice_std")),
            "iou": _format_metric(results["iou"], results.get("iou_std")),
            "hd95": _format_metric(results["hd95"], results.get("hd95_std"), digits=2),
            "n_images": str(results["n_images"]),
        }
    ]
    comparisons = results.get("comparisons") or {}
    # The zero-shot base first: it is the reference every other method is read against.
    for method in sorted(comparisons, key=lambda name: (name != "zeroshot", name)):
        metrics = comparisons[method]
        rows.append(
            {
                "name": METHOD_LABELS.get(method, method),
                "dice": _format_metric(metrics.get("dice"), metrics.get("dice_std")),
                "iou": _format_metric(metrics.get("iou"), metrics.get("iou_std")),
                "hd95": _format_metric(metrics.get("hd95"), metrics.get("hd95_std"), digits=2),
                "n_images": str(metrics.get("n_images", "n/a")),
            }
        )
    return rows


AXIS_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}


def _volume_vars(results: dict[str, Any]) -> dict[str, Any]:
    """Per-volume metrics (mm) and how the volumes were sliced, for runs on volume data."""
    volumes, data = results.get("volumes"), results.get("volume_data") or {}
    if not volumes:
        return {"volume_rows": [], "volume_data": None}
    # Prompt-free runs key their classes by class id and name them; prompted runs by the stored label value.
    names = volumes.get("label_names") or data.get("label_names", {})

    def row(name: str, m: dict) -> dict[str, str]:
        return {
            "name": name,
            **{key: _format_metric(m.get(key), m.get(f"{key}_std"), digits=2 if key == "hd95" else 4)
               for key in ("dice", "iou", "hd95", "nsd")},
            "n_cases": str(m.get("n_cases", "n/a")),
        }

    rows = [row("all classes", volumes["mean"])]
    rows += [row(names.get(label, f"label {label}"), m) for label, m in volumes.get("per_class", {}).items()]
    zeroshot = (results.get("comparisons") or {}).get("zeroshot", {}).get("volumes")
    if zeroshot:
        rows.append(row("zero-shot base, all classes", zeroshot))
    window = data.get("window")
    return {
        "volume_rows": rows,
        "volume_data": {
            "axis": AXIS_NAMES.get(data.get("slice_axis"), str(data.get("slice_axis"))),
            "window": f"CT window level {window[0]:g}, width {window[1]:g}" if window else "percentiles 0.5-99.5 per volume",
            "nsd_tolerance_mm": volumes.get("nsd_tolerance_mm"),
            "test_volumes": (data.get("splits") or {}).get(str(results.get("eval_split")), {}).get("volumes"),
            "prompt_free": results.get("prompt") == "none",
        },
    }


def _per_class_rows(per_class: dict[str, Any] | None) -> list[dict[str, str]]:
    return [
        {
            "name": str(name),
            "dice": _format_metric(metrics.get("dice")),
            "iou": _format_metric(metrics.get("iou")),
            "hd95": _format_metric(metrics.get("hd95"), digits=2),
        }
        for name, metrics in (per_class or {}).items()
        if isinstance(metrics, dict)
    ]


def _card_data(
    results: dict[str, Any], *, base_model: str, model_name: str, license: str, adapter_only: bool
) -> ModelCardData:
    dataset = public_name(str(results["dataset"]))
    eval_results = [
        EvalResult(
            task_type="image-segmentation",
            task_name="Image Segmentation",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=str(results["eval_split"]),
            metric_type=metric,
            metric_name=name,
            metric_value=round(_finite(results[metric]), 6),
        )
        for metric, name in (("dice", "Dice"), ("iou", "IoU"), ("hd95", "HD95 (pixels)"))
        if _finite(results.get(metric)) is not None
    ]
    extra: dict[str, Any] = {}
    if is_hub_repo_id(base_model):
        extra["base_model_relation"] = "adapter" if adapter_only else "finetune"
    return ModelCardData(
        base_model=base_model if is_hub_repo_id(base_model) else None,
        datasets=[dataset] if is_hub_repo_id(dataset) else None,
        library_name="transformers",
        pipeline_tag="mask-generation",
        license=license,
        tags=TAGS + METHOD_TAGS.get(str(results["method"]), []),
        model_name=model_name,
        eval_results=eval_results or None,
        **extra,
    )


def render_model_card(
    output_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    adapter_only: bool = False,
    license: str = "apache-2.0",
    model_name: str | None = None,
) -> ModelCard:
    """Renders the model card of a training output folder.

    Args:
        output_dir: the folder `training/run.py` wrote (`eval_results.json`, `config.json` and/or `adapter/`,
            `figures/`).
        repo_id: the Hub repository the card is for; used in the loading code and the default model name.
        adapter_only: render the card of the adapter-only repository (adapter files at the repository root, loaded
            with `load_icmoe_adapter` on top of the base model).
        license: the license identifier of the weights. SAM's own weights are Apache-2.0; a training set with a
            stricter license can call for another value.
        model_name: the title and `model-index` name; defaults to the repository name.

    Returns:
        The `huggingface_hub.ModelCard`; `card.data.eval_results` holds Dice, IoU and HD95 of this model.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise ValueError(f"{output_dir} is not a folder.")
    if repo_id is not None and not is_hub_repo_id(repo_id):
        raise ValueError(f"`repo_id` must look like 'namespace/name', got {repo_id!r}.")
    results = read_eval_results(output_dir)
    adapter_config = read_adapter_config(output_dir, adapter_only=adapter_only)
    base_model = str(results["base_model"])
    if adapter_only and adapter_config.get("base_model_name_or_path") and not is_hub_repo_id(base_model):
        base_model = str(adapter_config["base_model_name_or_path"])
    base_model, dataset = public_name(base_model), public_name(str(results["dataset"]))
    method = results["method"]
    if model_name is None:
        model_name = repo_id.split("/")[-1] if repo_id else f"{METHOD_TITLES[method]} on {dataset}"

    card_data = _card_data(
        results, base_model=base_model, model_name=model_name, license=license, adapter_only=adapter_only
    )
    adapter_rows = (
        [(key, json.dumps(adapter_config[key])) for key in ADAPTER_CARD_FIELDS if key in adapter_config]
        if adapter_config
        else []
    )
    template_vars = {
        "title": model_name,
        "repo_ref": repo_id or str(output_dir),
        "repo_is_local": repo_id is None,
        "adapter_only": adapter_only,
        "method": method,
        "method_label": METHOD_LABELS[method],
        "is_icmoe": adapter_config is not None,
        "trains_mask_decoder": bool(adapter_config and adapter_config.get("train_mask_decoder")),
        "expert_placement": (adapter_config or {}).get("expert_placement", "mlp"),
        "trains_contrastive": bool(adapter_config and adapter_config.get("contrastive_loss_coef")),
        "uses_pixel_votes": bool(adapter_config and adapter_config.get("pixel_vote_weight")),
        "base_model": base_model,
        "base_model_is_hub": is_hub_repo_id(base_model),
        "dataset": dataset,
        "dataset_is_hub": is_hub_repo_id(dataset),
        "eval_split": str(results["eval_split"]),
        "n_images": results["n_images"],
        "prompt": results.get("prompt"),
        "base_is_standin": bool(results.get("base_model_is_standin")),
        "n_source_images": results.get("n_eval_source_images"),
        "learning_rate": results.get("learning_rate"),
        "seed": results.get("seed"),
        "batch_size": _batch_size(results),
        "world": _world(results),
        "train_steps": results.get("train_steps", "n/a"),
        "trainable_params": (
            f"{results['trainable_params']:,}" if isinstance(results.get("trainable_params"), int) else "n/a"
        ),
        "train_time": _format_duration(results.get("train_seconds")),
        "adapter_rows": adapter_rows,
        "evaluation_rows": _evaluation_rows(results, METHOD_LABELS[method]),
        "has_zeroshot": "zeroshot" in (results.get("comparisons") or {}) or method == "zeroshot",
        "per_class_rows": _per_class_rows(results.get("per_class")),
        **_volume_vars(results),
        "diagnostic_rows": _diagnostic_rows(results.get("diagnostics")),
        "figures": {name: path for name, path in FIGURES.items() if (output_dir / path).is_file()},
        "paper_id": PAPER_ID,
    }
    return ModelCard.from_template(card_data, template_path=str(TEMPLATE_PATH), **template_vars)


def _batch_size(results: dict[str, Any]) -> str | None:
    """`per device x accumulation x processes = total`, or None when the run did not record it."""
    per_device = results.get("per_device_train_batch_size")
    if per_device is None:
        return None
    accumulation, processes = results.get("gradient_accumulation_steps", 1), results.get("num_processes", 1)
    if accumulation == 1 and processes == 1:
        return str(per_device)
    return f"{per_device} per device x {accumulation} accumulation x {processes} processes = {per_device * accumulation * processes}"


def _world(results: dict[str, Any]) -> str | None:
    """How many processes trained the model, as the run recorded it from inside; None for one process."""
    processes = results.get("num_processes", 1)
    if processes == 1:
        return None
    machines = results.get("num_machines", 1)
    text = f"{processes} processes on {machines} machine{'s' if machines != 1 else ''}"
    kind = ", ".join(str(results[key]) for key in ("distributed_type", "process_group_backend", "device_type")
                     if results.get(key))
    if kind:
        text += f" ({kind})"
    agree = results.get("weights_agree_across_processes")
    if agree is not None:
        text += "; weights identical on every process at the end" if agree else "; WEIGHTS DIFFERED between processes"
    return text


def _diagnostic_rows(diagnostics: dict | None) -> list[tuple[str, str]]:
    """(name, value) rows of an IC-MoE run's mixture diagnostics, nested values flattened as `key=value` lists."""
    rows = []
    for name, value in (diagnostics or {}).items():
        if isinstance(value, dict):
            value = ", ".join(f"{key} {item:.3g}" if isinstance(item, float) else f"{key} {item}" for key, item in value.items())
        elif isinstance(value, float):
            value = f"{value:.4g}"
        rows.append((name, str(value)))
    return rows


def write_model_card(
    output_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    adapter_only: bool = False,
    license: str = "apache-2.0",
    model_name: str | None = None,
) -> Path:
    """Renders the card of `output_dir` (see `render_model_card`) and saves it as `output_dir/README.md`."""
    card = render_model_card(
        output_dir, repo_id=repo_id, adapter_only=adapter_only, license=license, model_name=model_name
    )
    path = Path(output_dir) / run_folder.CARD_NAME
    card.save(path)
    return path
