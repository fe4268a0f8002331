"""The end of a training run: the saved model, eval_results.json with the mixture's diagnostics, figures, the model
card, and the printed comparison table."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np

from modeling_icmoe import IcMoeSamModel, run_folder

from . import figures
from .arguments import DEFAULT_BASE_MODEL
from .checkpointing import FINAL_PARTIAL, publish_outputs, write_json_atomic
from .diagnostics import load_by_kind, training_diagnostics
from .methods import describe_method, sam_of, save_trained

METRIC_KEYS = ("dice", "dice_std", "iou", "iou_std", "hd95", "hd95_std", "n_images")


def run_info(args, world: dict, eval_images: int, volume_summary) -> dict:
    """What a reader of the results needs to reproduce or weigh them, beyond the metrics; `world` is what
    `distributed.world_info` recorded from inside the run."""
    volume_info = {} if volume_summary is None else {"volume_data": volume_summary.to_dict()}
    return {
        **volume_info,
        "seed": args.seed,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        **({"layer_lr_decay": args.layer_lr_decay} if getattr(args, "layer_lr_decay", 1.0) != 1.0 else {}),
        "mask_decoder_lr_scale": getattr(args, "mask_decoder_lr_scale", 1.0),
        **world,
        "n_eval_source_images": eval_images,
        "base_model_is_standin": Path(args.base_model).resolve() == Path(DEFAULT_BASE_MODEL).resolve(),
    }


def write_outputs(
    args, model, processor, metrics, load, examples, comparisons, *, state_dict, eval_split, steps, trainable, seconds,
    fingerprint, run_info,
):
    """The model first (through `final.partial/`), then eval_results.json; figures and the card may only warn."""
    output_dir = Path(args.output_dir)
    partial = output_dir / FINAL_PARTIAL
    shutil.rmtree(partial, ignore_errors=True)  # left by a save that was killed
    if args.method != "zeroshot":
        save_trained(model, processor, partial, state_dict=state_dict)
    else:
        processor.save_pretrained(partial)
    (output_dir / run_folder.EVAL_RESULTS_NAME).unlink(missing_ok=True)  # only ever beside the model it describes
    outputs = publish_outputs(partial, output_dir)
    results = {
        "method": args.method,
        "base_model": args.base_model,
        "dataset": args.dataset,
        "eval_split": eval_split,
        **{k: metrics[k] for k in METRIC_KEYS},
        # Every evaluated object's scores, in the evaluation split's order: what paired comparisons need.
        "per_image": {name: [round(v, 6) for v in values] for name, values in metrics["per_image"].items()},
        # The prompt-free model: each class's scores, and the class of every scored (image, class) pair above.
        **{key: metrics[key] for key in ("per_class", "per_image_class_ids") if key in metrics},
        **({"volumes": metrics["volumes"]} if "volumes" in metrics else {}),
        "train_steps": steps,
        "learning_rate": args.learning_rate,
        "trainable_params": trainable,
        "train_seconds": round(seconds, 2),
        "prompt": args.prompt,
        **run_info,
        **describe_method(model),
        "comparisons": comparisons,
    }
    sam = sam_of(model)
    icmoe_config = sam.config.icmoe_config if isinstance(sam, IcMoeSamModel) and load is not None else None
    records = [json.loads(line) for line in (output_dir / run_folder.TRAIN_LOG_NAME).read_text().splitlines() if line]
    if icmoe_config is not None:
        results["expert_load"] = np.round(load, 4).tolist()
        results["min_expert_share"] = float(load.min())
        results["diagnostics"] = {
            "expert_load_by_kind": load_by_kind(load, icmoe_config),
            **{key: round(value, 5) for key, value in metrics.get("voting", {}).items()},
            **training_diagnostics(records, sam.objective_weights()),
        }
    write_json_atomic(output_dir / run_folder.EVAL_RESULTS_NAME, results)
    written = {*outputs, run_folder.EVAL_RESULTS_NAME, run_folder.FIGURES_SUBFOLDER, run_folder.CARD_NAME}
    write_json_atomic(output_dir / run_folder.RUN_MANIFEST, {"fingerprint": fingerprint, "outputs": sorted(written)})
    _write_figures(output_dir / run_folder.FIGURES_SUBFOLDER, records, load, examples, icmoe_config)
    try:
        from hub_cards import write_model_card

        write_model_card(output_dir, repo_id=args.hub_model_id)
    except Exception as error:  # the card is rendered from saved files; it can be rendered again later
        warnings.warn(
            f"Writing the model card {output_dir / run_folder.CARD_NAME} failed ({error!r}); the model and "
            f"{run_folder.EVAL_RESULTS_NAME} are saved.", RuntimeWarning, stacklevel=2,
        )
    return results


def _write_figures(figure_dir: Path, records: list[dict], load, examples, icmoe_config) -> None:
    """Loss, expert-load and example figures; one that fails (a missing font, a backend) warns and is skipped."""
    figure_dir.mkdir(exist_ok=True)

    def routed_names():
        if icmoe_config is None:
            return None
        return figures.expert_names(icmoe_config.expert_kinds()[icmoe_config.num_shared_experts :])

    plots = []
    if icmoe_config is not None:
        plots.append(("expert_load", lambda path: figures.plot_expert_load(load, routed_names(), path)))
    if records:
        plots.append(("loss", lambda path: figures.plot_losses(records, path)))
    if examples:
        plots.append(("examples", lambda path: figures.plot_examples(examples, routed_names(), path)))
    for name, plot in plots:
        path = figure_dir / run_folder.FIGURE_NAMES[name]
        try:
            plot(path)
        except Exception as error:  # figures illustrate results already saved; they never cost the run
            warnings.warn(
                f"Drawing {path} failed ({error!r}); the model and {run_folder.EVAL_RESULTS_NAME} are saved.",
                RuntimeWarning, stacklevel=3,
            )


def print_table(accelerator, results: dict) -> None:
    rows = [("zero-shot base", results["comparisons"]["zeroshot"])] if "zeroshot" in results["comparisons"] else []
    rows.append((results["method"], results))
    accelerator.print(f"\n{'model':<16} {'Dice':>14} {'IoU':>14} {'HD95 (px)':>16}  n")
    for name, m in rows:
        accelerator.print(
            f"{name:<16} {m['dice']:.4f}±{m['dice_std']:.3f} {m['iou']:.4f}±{m['iou_std']:.3f} "
            f"{m['hd95']:8.2f}±{m['hd95_std']:6.2f}  {m['n_images']}"
        )
    for name, m in results.get("per_class", {}).items():
        accelerator.print(f"  {name:<14} {m['dice']:.4f}±{m['dice_std']:.3f} {m['iou']:.4f}±{m['iou_std']:.3f} "
                          f"{m['hd95']:8.2f}±{m['hd95_std']:6.2f}  {m['n_images']}")
    if "volumes" in results:
        accelerator.print(f"\nper volume and class (HD95 in mm, NSD at {results['volumes']['nsd_tolerance_mm']:g} mm)")
        for name, m in rows:
            v = m["volumes"] if name == results["method"] else m.get("volumes")
            v = v.get("mean", v) if v else None
            if v:
                accelerator.print(
                    f"{name:<16} Dice {v['dice']:.4f}±{v['dice_std']:.3f}  HD95 {v['hd95']:.2f}±{v['hd95_std']:.2f} mm  "
                    f"NSD {v['nsd']:.4f}  n={v['n_cases']}"
                )
