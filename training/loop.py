"""The Accelerate training loop shared by every method: same data, prompts, loss bookkeeping and metrics."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoProcessor, get_scheduler

from modeling_icmoe import IcMoeSamModel

from . import figures
from .diagnostics import load_by_kind, training_diagnostics
from .data import SamPairTransform, check_masks, collate, default_num_workers, load_raw_dataset, select_splits
from .evaluation import evaluate_model, prompt_inputs, routed_counts
from .methods import (
    build_model,
    count_trainable,
    describe_method,
    load_icmoe_config,
    model_loss,
    sam_of,
    save_trained,
)

CHECKPOINT_PREFIX = "step_"
METRIC_KEYS = ("dice", "dice_std", "iou", "iou_std", "hd95", "hd95_std", "n_images")


def _prepare_data(args, processor, accelerator):
    raw = load_raw_dataset(args.dataset, image_column=args.image_column, mask_column=args.mask_column)
    train_set, eval_set, eval_split = select_splits(
        raw,
        train_split=args.train_split,
        eval_split=args.eval_split,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
    )
    if args.max_train_samples:
        train_set = train_set.select(range(min(args.max_train_samples, len(train_set))))
    if args.max_eval_samples:
        eval_set = eval_set.select(range(min(args.max_eval_samples, len(eval_set))))
    columns = {"image_column": args.image_column, "mask_column": args.mask_column, "label_ids": args.label_ids}
    label_size = processor.image_processor.mask_size["longest_edge"]
    with accelerator.main_process_first():
        check_masks(train_set, name="train", label_size=label_size, **columns)
        check_masks(eval_set, name="eval", label_size=label_size, **columns)
    train_set = train_set.with_transform(SamPairTransform(processor, **columns))
    eval_set = eval_set.with_transform(SamPairTransform(processor, **columns, keep_masks=True))
    workers = args.dataloader_num_workers
    if workers is None:
        workers = default_num_workers(accelerator.num_processes)
    # A loader generator of its own: creating an iterator would otherwise draw from the global RNG, so a resumed
    # run (which creates one more iterator after restoring the RNG states) would drift from an uninterrupted one.
    train_loader = DataLoader(
        train_set,
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    eval_loader = DataLoader(eval_set, batch_size=args.per_device_eval_batch_size, collate_fn=collate, num_workers=workers)
    return train_loader, eval_loader, eval_split


def _step_generator(args, epoch: int, batch_index: int, process_index: int) -> torch.Generator:
    """Prompt randomness as a function of (seed, epoch, batch, process): resumed runs draw the same prompts."""
    return torch.Generator().manual_seed(hash((args.seed, epoch, batch_index, process_index)) % (2**63))


def _latest_checkpoint(output_dir: Path) -> Path:
    folders = sorted(
        (p for p in (output_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()),
        key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]),
    )
    if not folders:
        raise ValueError(f"--resume_from_checkpoint latest: no checkpoint in {output_dir / 'checkpoints'}.")
    return folders[-1]


def _expert_load(outputs) -> list[list[float]]:
    """Share of routed tokens that went to each expert, per IC-MoE layer, for one batch (as in evaluation)."""
    counts = routed_counts(outputs.router_probs)
    return (counts / counts.sum(dim=1, keepdim=True)).tolist()


def run(args) -> dict:
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    hub_token = None
    if args.push_to_hub and not args.dry_run:
        from .hub import check_hub_push

        hub_token = check_hub_push(args.hub_model_id, args.hub_token)  # fail before training, never print it
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    processor = AutoProcessor.from_pretrained(args.base_model)
    train_loader, eval_loader, eval_split = _prepare_data(args, processor, accelerator)
    icmoe_config = load_icmoe_config(
        args.icmoe_config, {"expert_rank": args.expert_rank, "num_experts_per_tok": args.num_experts_per_tok}
    )
    model = build_model(
        args.method, args.base_model, icmoe_config=icmoe_config, lora_rank=args.lora_rank, adapter_rank=args.adapter_rank
    )
    trainable_params = count_trainable(model) if args.method != "zeroshot" else 0
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params or [torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate,
                                  weight_decay=args.weight_decay)
    train_loader, eval_loader = accelerator.prepare(train_loader, eval_loader)

    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    if args.method == "zeroshot":
        max_steps = 0
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    warmup = args.num_warmup_steps if args.num_warmup_steps is not None else math.ceil(0.05 * max_steps)
    # The prepared scheduler steps once per process for every optimizer step, hence the scaling.
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=warmup * accelerator.num_processes,
        num_training_steps=max(1, max_steps) * accelerator.num_processes,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if args.report_to != "none":
        accelerator.init_trackers("icmoe-sam", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    eval_kwargs = {"prompt": args.prompt, "num_points": args.num_points}
    comparisons = {}
    if not args.no_zeroshot_eval and not args.resume_from_checkpoint:
        accelerator.print("Evaluating the base model (zero-shot) ...")
        metrics, _, _ = evaluate_model(model, eval_loader, processor, accelerator, **eval_kwargs)
        comparisons["zeroshot"] = {k: metrics[k] for k in METRIC_KEYS if k in metrics}

    completed_steps, starting_epoch, resume_batches = 0, 0, 0
    if args.resume_from_checkpoint:
        checkpoint = (
            _latest_checkpoint(output_dir) if args.resume_from_checkpoint == "latest" else Path(args.resume_from_checkpoint)
        )
        accelerator.print(f"Resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        completed_steps = int(checkpoint.name[len(CHECKPOINT_PREFIX):])
        starting_epoch = completed_steps // steps_per_epoch
        resume_batches = (completed_steps % steps_per_epoch) * args.gradient_accumulation_steps
        state_file = checkpoint / "icmoe_run_state.json"
        if state_file.is_file():
            comparisons = json.loads(state_file.read_text())["comparisons"]

    log_path = output_dir / "train_log.jsonl"
    if accelerator.is_main_process:
        # A resumed run drops what the interrupted one logged after its checkpoint, since it logs those steps again.
        kept = []
        if args.resume_from_checkpoint and log_path.is_file():
            kept = [line for line in log_path.read_text().splitlines() if line and json.loads(line)["step"] <= completed_steps]
        log_path.write_text("".join(line + "\n" for line in kept))
    progress = tqdm(range(max_steps), initial=completed_steps, disable=not accelerator.is_local_main_process)
    window: list[dict] = []
    start = time.perf_counter()
    for epoch in range(starting_epoch, num_epochs):
        model.train()
        train_loader.set_epoch(epoch)
        skip = resume_batches if epoch == starting_epoch else 0
        batches = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        for batch_index, batch in enumerate(batches, start=skip):
            log_now = (completed_steps + 1) % args.logging_steps == 0 or completed_steps + 1 == max_steps
            with accelerator.accumulate(model):
                generator = _step_generator(args, epoch, batch_index, accelerator.process_index)
                inputs = prompt_inputs(
                    batch, prompt=args.prompt, num_points=args.num_points, box_jitter=args.box_jitter, generator=generator
                )
                outputs, loss, terms = model_loss(model, inputs, batch["labels"], output_router_probs=log_now)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            window.append({"loss": loss.detach(), **terms})
            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            progress.update(1)
            if log_now:
                means = {k: accelerator.reduce(torch.stack([w[k] for w in window]).mean().float(), "mean").item()
                         for k in window[0]}
                record = {"step": completed_steps, "epoch": epoch, "loss": means.pop("loss"), "loss_terms": means,
                          "lr": scheduler.get_last_lr()[0]}
                if getattr(outputs, "router_probs", None):
                    record["expert_load"] = _expert_load(outputs)
                window = []
                progress.set_postfix(loss=f"{record['loss']:.4f}")
                accelerator.log({"loss": record["loss"], "lr": record["lr"], **means}, step=completed_steps)
                if accelerator.is_main_process:
                    with open(log_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(record) + "\n")
            if args.eval_steps and completed_steps % args.eval_steps == 0 and completed_steps < max_steps:
                metrics, _, _ = evaluate_model(model, eval_loader, processor, accelerator, **eval_kwargs)
                if accelerator.is_main_process:
                    accelerator.print(f"step {completed_steps}: eval dice {metrics['dice']:.4f}")
                    accelerator.log({f"eval_{k}": metrics[k] for k in ("dice", "iou", "hd95")}, step=completed_steps)
                model.train()
            if isinstance(args.checkpointing_steps, int) and completed_steps % args.checkpointing_steps == 0:
                _save_checkpoint(accelerator, output_dir, completed_steps, comparisons)
            if completed_steps >= max_steps:
                break
        if args.checkpointing_steps == "epoch":
            _save_checkpoint(accelerator, output_dir, completed_steps, comparisons)
        if completed_steps >= max_steps:
            break
    train_seconds = time.perf_counter() - start
    progress.close()

    accelerator.print("Evaluating the trained model ...")
    metrics, load, examples = evaluate_model(
        model, eval_loader, processor, accelerator, num_examples=args.num_example_figures, **eval_kwargs
    )
    accelerator.wait_for_everyone()
    # Gathered on every process: with sharded parameters (FSDP) no single process holds the full weights.
    state_dict = accelerator.get_state_dict(model) if args.method != "zeroshot" else None
    results = {}
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        results = _write_outputs(
            args, unwrapped, processor, metrics, load, examples, comparisons, state_dict=state_dict,
            eval_split=eval_split, steps=completed_steps, trainable=trainable_params, seconds=train_seconds,
        )
        _print_table(accelerator, results)
        if "diagnostics" in results:
            accelerator.print("IC-MoE diagnostics: " + json.dumps(results["diagnostics"]))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if accelerator.is_main_process and args.push_to_hub:
        from .hub import push_output_dir

        push_output_dir(output_dir, args.hub_model_id, private=args.hub_private, adapter_only=args.push_adapter_only,
                        token=hub_token, dry_run=args.dry_run)
    return results


def _save_checkpoint(accelerator, output_dir: Path, step: int, comparisons: dict) -> None:
    folder = output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        (folder / "icmoe_run_state.json").write_text(json.dumps({"comparisons": comparisons}))


def _write_outputs(
    args, model, processor, metrics, load, examples, comparisons, *, state_dict, eval_split, steps, trainable, seconds
):
    output_dir = Path(args.output_dir)
    if args.method != "zeroshot":
        save_trained(model, processor, output_dir, state_dict=state_dict)
    else:
        processor.save_pretrained(output_dir)
    results = {
        "method": args.method,
        "base_model": args.base_model,
        "dataset": args.dataset,
        "eval_split": eval_split,
        **{k: metrics[k] for k in METRIC_KEYS},
        "train_steps": steps,
        "learning_rate": args.learning_rate,
        "trainable_params": trainable,
        "train_seconds": round(seconds, 2),
        "prompt": args.prompt,
        **describe_method(model),
        "comparisons": comparisons,
    }
    figure_dir = output_dir / "figures"
    figure_dir.mkdir(exist_ok=True)
    sam = sam_of(model)
    names = None
    records = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines() if line]
    if isinstance(sam, IcMoeSamModel) and load is not None:
        cfg = sam.config.icmoe_config
        names = figures.expert_names(cfg.expert_kinds()[cfg.num_shared_experts :])  # the routed experts
        results["expert_load"] = np.round(load, 4).tolist()
        results["min_expert_share"] = float(load.min())
        results["diagnostics"] = {
            "expert_load_by_kind": load_by_kind(load, cfg),
            **{key: round(value, 5) for key, value in metrics.get("voting", {}).items()},
            **training_diagnostics(records, cfg),
        }
        figures.plot_expert_load(load, names, figure_dir / "expert_load.png")
    if records:
        figures.plot_losses(records, figure_dir / "loss.png")
    if examples:
        figures.plot_examples(examples, names, figure_dir / "examples.png")
    (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    from hub_cards import write_model_card

    write_model_card(output_dir, repo_id=args.hub_model_id)
    return results


def _print_table(accelerator, results: dict) -> None:
    rows = [("zero-shot base", results["comparisons"]["zeroshot"])] if "zeroshot" in results["comparisons"] else []
    rows.append((results["method"], results))
    accelerator.print(f"\n{'model':<16} {'Dice':>14} {'IoU':>14} {'HD95 (px)':>16}  n")
    for name, m in rows:
        accelerator.print(
            f"{name:<16} {m['dice']:.4f}±{m['dice_std']:.3f} {m['iou']:.4f}±{m['iou_std']:.3f} "
            f"{m['hd95']:8.2f}±{m['hd95_std']:6.2f}  {m['n_images']}"
        )
