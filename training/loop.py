"""The Accelerate training loop shared by every method: same data, prompts, loss bookkeeping and metrics."""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, gather_object, send_to_device, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoProcessor, get_scheduler


from .arguments import ICMOE_CONFIG_OVERRIDES, tracker_config
from .checkpointing import (
    RUN_MANIFEST,
    TRACKER_PROJECT,
    StopOnSignal,
    check_output_dir,
    clear_outputs,
    fingerprint_differences,
    latest_checkpoint,
    read_checkpoint,
    run_fingerprint,
    save_checkpoint,
    write_json_atomic,
)
from .data import (
    SamPairTransform,
    check_masks,
    collate,
    count_source_images,
    default_num_workers,
    load_raw_dataset,
    select_splits,
)
from .distributed import (
    accelerator_device_kwargs,
    check_world,
    enable_fsdp_on_cpu,
    finish_collectives,
    local_parameter_counts,
    world_info,
)
from .semantic import SemanticPairTransform, class_names, evaluate_semantic, volume_classes
from .streaming import TrainStream, stream_splits, train_stream
from .evaluation import evaluate_model, prompt_inputs, routed_counts
from .volume_data import VOLUME_COLUMNS, is_volume_source, load_volume_dataset
from .methods import (
    build_model,
    check_base_model,
    rebuild_model,
    count_trainable,
    load_icmoe_config,
    model_loss,
)
from .outputs import METRIC_KEYS, print_table, run_info, write_outputs


def _load_splits(args, accelerator, columns: dict, label_size: int, class_values: list[int] | None = None):
    """Train and eval splits (the train split is None when it is streamed), the eval split's name, what slicing
    volumes counted, and the columns evaluation passes through."""
    if args.streaming:
        train_split, eval_split = stream_splits(args.dataset, train_split=args.train_split, eval_split=args.eval_split,
                                                image_column=args.image_column, mask_column=args.mask_column)
        raw = load_raw_dataset(args.dataset, image_column=args.image_column, mask_column=args.mask_column,
                               split=eval_split)
        return None, raw[eval_split], eval_split, None, ()
    volume_summary, meta_columns = None, ()
    if is_volume_source(args.dataset):
        with accelerator.local_main_process_first():  # one process per node slices and caches; the others read it
            raw, volume_summary = load_volume_dataset(
                args.dataset, image_column=args.image_column, mask_column=args.mask_column, slice_axis=args.slice_axis,
                window=args.window, label_ids=args.label_ids, validation_fraction=args.validation_fraction,
                seed=args.seed, label_size=label_size, num_proc=args.preprocessing_num_workers,
                class_values=class_values,
            )
        columns["label_ids"] = None  # each row's mask is already one class
        meta_columns = VOLUME_COLUMNS  # evaluation scores whole volumes from them
        for line in volume_summary.report_lines(truncated=bool(args.max_train_samples or args.max_eval_samples)):
            accelerator.print(line)
    else:
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
    return train_set, eval_set, eval_split, volume_summary, meta_columns


def _prepare_data(args, processor, accelerator):
    """Loaders of the train and eval splits, and what the run reports about them; `classes` (`id2label`) for the
    prompt-free model, None for the prompted one, and the label value of each class of a volume dataset."""
    columns = {"image_column": args.image_column, "mask_column": args.mask_column, "label_ids": args.label_ids}
    label_size = processor.image_processor.mask_size["longest_edge"]
    classes, class_values = None, None
    if args.prompt == "none" and is_volume_source(args.dataset):
        classes, class_values = volume_classes(args.dataset, args.label_names, args.label_ids)
    elif args.prompt == "none":
        classes = class_names(args.dataset, args.label_names)
    train_set, eval_set, eval_split, volume_summary, meta_columns = _load_splits(args, accelerator, columns, label_size,
                                                                                 class_values)
    if args.max_eval_samples:
        eval_set = eval_set.select(range(min(args.max_eval_samples, len(eval_set))))
    with accelerator.main_process_first():
        for name, part in (("train", train_set), ("eval", eval_set)):
            if part is not None:  # a streamed train split is checked as it is read
                check_masks(part, name=name, label_size=None if classes else label_size,
                            num_proc=args.preprocessing_num_workers, class_ids=sorted(classes) if classes else None,
                            **columns)
    eval_images = count_source_images(eval_set, args.image_column)
    if classes:
        pair = {"image_column": args.image_column, "mask_column": args.mask_column, "class_ids": sorted(classes)}
        train_transform = SemanticPairTransform(processor, **pair)
        eval_set = eval_set.with_transform(SemanticPairTransform(processor, **pair, keep_maps=True,
                                                                 meta_columns=meta_columns))
    else:
        train_transform = SamPairTransform(processor, **columns)
        eval_set = eval_set.with_transform(
            SamPairTransform(processor, **columns, keep_masks=True, meta_columns=meta_columns)
        )
    workers = args.dataloader_num_workers
    if workers is None:
        workers = default_num_workers(accelerator.num_processes)
    if train_set is None:
        train_loader = train_stream(args, processor, accelerator, columns=columns, label_size=label_size,
                                    train_split=args.train_split, num_workers=workers)
    else:
        # A loader generator of its own: creating an iterator would otherwise draw from the global RNG, so a resumed
        # run (which creates one more iterator after restoring the RNG states) would drift from an uninterrupted one.
        train_loader = DataLoader(
            train_set.with_transform(train_transform),
            batch_size=args.per_device_train_batch_size,
            shuffle=True,
            collate_fn=collate,
            num_workers=workers,
            generator=torch.Generator().manual_seed(args.seed),
        )
    eval_loader = DataLoader(eval_set, batch_size=args.per_device_eval_batch_size, collate_fn=collate, num_workers=workers)
    return train_loader, eval_loader, eval_split, eval_images, volume_summary, classes, class_values


def _step_generator(args, epoch: int, batch_index: int, process_index: int) -> torch.Generator:
    """Prompt randomness as a function of (seed, epoch, batch, process): resumed runs draw the same prompts."""
    return torch.Generator().manual_seed(hash((args.seed, epoch, batch_index, process_index)) % (2**63))


class NonFiniteTrainingError(RuntimeError):
    """A loss, gradient or parameter became NaN or infinite; the run stops before saving it."""


def _resolve_checkpoint(args, output_dir: Path, fingerprint: dict, accelerator) -> tuple[Path, dict]:
    """The checkpoint to resume and its marker, after checking that it is complete and belongs to this run."""
    if args.resume_from_checkpoint == "latest":
        checkpoint, skipped = latest_checkpoint(output_dir / "checkpoints")
        if skipped:
            accelerator.print(f"Skipped incomplete checkpoints: {'; '.join(skipped)}")
    else:
        checkpoint = Path(args.resume_from_checkpoint)
    marker = read_checkpoint(checkpoint)
    differences = fingerprint_differences(marker["fingerprint"], fingerprint)
    if differences:
        raise ValueError(
            f"{checkpoint} belongs to another run; resuming it with these settings would mix two runs. Differences: "
            + "; ".join(differences)
        )
    return checkpoint, marker


def _last_good(checkpoint: Path | None) -> str:
    return f"The last checkpoint, {checkpoint}, is as it was." if checkpoint else "No checkpoint was saved."


def _param_groups(model, args) -> list[dict]:
    """The trainable parameters, the mask decoder's (every method names them `mask_decoder.`) in their own group at
    `--learning_rate * --mask_decoder_lr_scale`."""
    groups: dict[bool, list] = {False: [], True: []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups["mask_decoder." in name].append(param)
    return [{"params": groups[False]}] * bool(groups[False]) + [
        {"params": groups[True], "lr": args.learning_rate * args.mask_decoder_lr_scale}
    ] * bool(groups[True])


def _check_finite_parameters(model, accelerator, step: int, checkpoint: Path | None, learning_rate: float) -> None:
    """Raises when a trained parameter holds NaN or inf: such weights are never saved (checked on every process)."""
    bad = [name for name, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    # Summed over processes: with sharded parameters (FSDP) each process sees only its own shard.
    total = int(accelerator.reduce(torch.tensor(len(bad), device=accelerator.device), "sum").item())
    if total:
        raise NonFiniteTrainingError(
            f"Step {step}: {total} trained tensors hold NaN or inf values"
            + (f" (first: {bad[0]})" if bad else "")
            + f"; not saving them. {_last_good(checkpoint)} Lower --learning_rate (this run: {learning_rate:g})."
        )


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
        **accelerator_device_kwargs(args.use_cpu),
    )
    check_world(accelerator)
    enable_fsdp_on_cpu(accelerator)
    hub_token = None
    if args.push_to_hub and not args.dry_run:
        from .hub import check_hub_push

        hub_token = check_hub_push(args.hub_model_id, args.hub_token)  # fail before training, never print it
    check_base_model(args.base_model)
    # Checked on every process before any of them changes the folder, so all refuse or none does.
    earlier_outputs = check_output_dir(
        output_dir, overwrite=args.overwrite_output_dir, resuming=args.resume_from_checkpoint is not None
    )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if earlier_outputs:
            accelerator.print(f"--overwrite_output_dir: removing the earlier run's {', '.join(earlier_outputs)}")
            clear_outputs(output_dir, earlier_outputs)
        output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)

    processor = AutoProcessor.from_pretrained(args.base_model)
    train_loader, eval_loader, eval_split, eval_images, volume_summary, classes, class_values = _prepare_data(
        args, processor, accelerator
    )
    semantic = None if classes is None else {
        "id2label": classes, **({"semantic_decoder": args.semantic_decoder} if args.semantic_decoder else {}),
        # The label values behind the class ids, where they differ (predict writes and scores those).
        **({"label_values": class_values} if class_values and class_values != list(range(len(classes))) else {}),
    }
    icmoe_config = load_icmoe_config(
        args.icmoe_config, {name: getattr(args, name) for name in ICMOE_CONFIG_OVERRIDES}
    )
    model = build_model(
        args.method, args.base_model, icmoe_config=icmoe_config, lora_rank=args.lora_rank, adapter_rank=args.adapter_rank,
        semantic=semantic,
    )
    trainable_params = count_trainable(model) if args.method != "zeroshot" else 0
    optimizer = torch.optim.AdamW(_param_groups(model, args) or [torch.nn.Parameter(torch.zeros(1))],
                                  lr=args.learning_rate, weight_decay=args.weight_decay)
    streaming = isinstance(train_loader, TrainStream)
    if streaming:  # each process already reads its own share (split_dataset_by_node); only the eval loader is sharded
        eval_loader = accelerator.prepare(eval_loader)
    else:
        train_loader, eval_loader = accelerator.prepare(train_loader, eval_loader)

    # A stream has no length: the whole run is one "epoch" of --max_train_steps steps (its passes are its own).
    steps_per_epoch = (
        (args.max_train_steps or 1) if streaming  # zero-shot streams no training split
        else math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    )
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
    parameters_per_process = local_parameter_counts(model, accelerator)
    fingerprint = run_fingerprint(
        args, adapter_config=icmoe_config.to_dict(), train_steps=max_steps, warmup_steps=warmup,
        num_processes=accelerator.num_processes,
    )
    checkpoint, marker = None, None
    if args.resume_from_checkpoint:
        checkpoint, marker = _resolve_checkpoint(args, output_dir, fingerprint, accelerator)
    if accelerator.is_main_process:
        manifest = output_dir / RUN_MANIFEST
        # Resuming keeps the list of what the run already wrote, which --overwrite_output_dir removes later.
        outputs = json.loads(manifest.read_text()).get("outputs", []) if manifest.is_file() else []
        write_json_atomic(manifest, {"fingerprint": fingerprint, "outputs": outputs})
    if args.report_to != "none":
        accelerator.init_trackers(TRACKER_PROJECT, config=tracker_config(args))

    eval_kwargs = {"prompt": args.prompt, "num_points": args.num_points, "nsd_tolerance_mm": args.nsd_tolerance_mm}

    def evaluate(num_examples: int = 0):
        if classes is not None:
            return evaluate_semantic(model, eval_loader, accelerator, id2label=classes,
                                     nsd_tolerance_mm=args.nsd_tolerance_mm)
        return evaluate_model(model, eval_loader, processor, accelerator, num_examples=num_examples, **eval_kwargs)

    comparisons = {}
    if not args.no_zeroshot_eval and not args.resume_from_checkpoint:
        accelerator.print("Evaluating the base model (zero-shot) ...")
        metrics, _, _ = evaluate()
        comparisons["zeroshot"] = {k: metrics[k] for k in METRIC_KEYS if k in metrics}
        if "volumes" in metrics:
            comparisons["zeroshot"]["volumes"] = metrics["volumes"]["mean"]

    completed_steps, starting_epoch, resume_batches, stream_start = 0, 0, 0, (0, 0)
    if checkpoint is not None:
        accelerator.print(f"Resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        completed_steps, comparisons = marker["step"], marker["comparisons"]
        starting_epoch = completed_steps // steps_per_epoch
        resume_batches = (completed_steps % steps_per_epoch) * args.gradient_accumulation_steps
        if streaming:
            stream_start = tuple(marker["stream_positions"][accelerator.process_index])
        if completed_steps >= max_steps:
            accelerator.print(
                f"{checkpoint} is the end of training ({completed_steps} of {max_steps} steps): nothing left to "
                "train; evaluating and saving the model."
            )

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

    def checkpoint_now() -> Path:
        _check_finite_parameters(model, accelerator, completed_steps, checkpoint, args.learning_rate)
        positions = gather_object([list(train_loader.position)]) if streaming else None
        return save_checkpoint(accelerator, output_dir, completed_steps, fingerprint=fingerprint, comparisons=comparisons,
                               stream_positions=positions)

    with StopOnSignal() as stop, _naming_the_step(lambda: completed_steps + 1, lambda: checkpoint):
        for epoch in range(starting_epoch, num_epochs):
            if completed_steps >= max_steps:
                break
            model.train()
            train_loader.set_epoch(epoch)
            skip = resume_batches if epoch == starting_epoch else 0
            if streaming:
                batches = (send_to_device(batch, accelerator.device) for batch in train_loader.batches(stream_start))
            else:
                batches = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
            for batch_index, batch in enumerate(batches, start=skip):
                log_now = (completed_steps + 1) % args.logging_steps == 0 or completed_steps + 1 == max_steps
                with accelerator.accumulate(model):
                    generator = _step_generator(args, epoch, batch_index, accelerator.process_index)
                    inputs = prompt_inputs(
                        batch, prompt=args.prompt, num_points=args.num_points, box_jitter=args.box_jitter,
                        generator=generator,
                    )
                    outputs, loss, terms = model_loss(model, inputs, batch["labels"], output_router_probs=log_now)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        # The norm of the synchronised gradients, the same on every process; with an infinite bound
                        # it only measures. fp16's loss scaler skips overflowing steps itself, so not checked there.
                        grad_norm = accelerator.clip_grad_norm_(
                            model.parameters(), args.max_grad_norm if args.max_grad_norm > 0 else math.inf
                        )
                        if grad_norm is not None and accelerator.scaler is None and not torch.isfinite(grad_norm):
                            raise NonFiniteTrainingError(
                                f"Step {completed_steps + 1}: the gradient norm is {grad_norm.item()} (loss "
                                f"{loss.item():.4g}); stopped before the optimizer applied it. {_last_good(checkpoint)}"
                                f" Lower --learning_rate (this run: {args.learning_rate:g}) or check the data."
                            )
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
                    record = {"step": completed_steps, "epoch": train_loader.position[0] if streaming else epoch,
                              "loss": means.pop("loss"), "loss_terms": means,
                              "lr": scheduler.get_last_lr()[0],
                              # Since this process started training (a resumed run: since it resumed).
                              "elapsed_seconds": round(time.perf_counter() - start, 4)}
                    if not math.isfinite(record["loss"]):
                        raise NonFiniteTrainingError(
                            f"Step {completed_steps}: the mean loss since the last log is {record['loss']}. "
                            f"{_last_good(checkpoint)} Lower --learning_rate (this run: {args.learning_rate:g})."
                        )
                    if getattr(outputs, "router_probs", None):
                        record["expert_load"] = _expert_load(outputs)
                    window = []
                    progress.set_postfix(loss=f"{record['loss']:.4f}")
                    accelerator.log({"loss": record["loss"], "lr": record["lr"], **means}, step=completed_steps)
                    if accelerator.is_main_process:
                        with open(log_path, "a", encoding="utf-8") as f:
                            f.write(json.dumps(record) + "\n")
                if args.eval_steps and completed_steps % args.eval_steps == 0 and completed_steps < max_steps:
                    metrics, _, _ = evaluate()
                    if accelerator.is_main_process:
                        accelerator.print(f"step {completed_steps}: eval dice {metrics['dice']:.4f}")
                        accelerator.log({f"eval_{k}": metrics[k] for k in ("dice", "iou", "hd95")}, step=completed_steps)
                    model.train()
                if isinstance(args.checkpointing_steps, int) and completed_steps % args.checkpointing_steps == 0:
                    checkpoint = checkpoint_now()
                if _stop_requested(stop, accelerator) and completed_steps < max_steps:
                    if not _is_step(checkpoint, completed_steps):
                        checkpoint = checkpoint_now()
                    _stop_after_checkpoint(stop, accelerator, progress, checkpoint, completed_steps)
                if completed_steps >= max_steps:
                    break
            if args.checkpointing_steps == "epoch":
                checkpoint = checkpoint_now()
    train_seconds = time.perf_counter() - start
    progress.close()

    accelerator.print("Evaluating the trained model ...")
    metrics, load, examples = evaluate(num_examples=args.num_example_figures)
    if args.method != "zeroshot":
        _check_finite_parameters(model, accelerator, completed_steps, checkpoint, args.learning_rate)
    world = world_info(accelerator, model, parameters_per_process)
    if streaming:  # what each process read of its share: the shares' sizes add up to the split's
        world["stream_per_process"] = gather_object([train_loader.summary()])
    if world["weights_agree_across_processes"] is False:
        accelerator.print(
            "WARNING: the processes ended training with different weights (their gradients were not synchronised); "
            "the saved model is the main process's. eval_results.json records weights_agree_across_processes: false."
        )
    accelerator.wait_for_everyone()
    # Gathered on every process: with sharded parameters (FSDP) no single process holds the full weights.
    state_dict = accelerator.get_state_dict(model) if args.method != "zeroshot" else None
    results = {}
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if accelerator.distributed_type == DistributedType.FSDP and state_dict is not None:
            # FSDP2 swaps the classes of the modules it shards (FSDPIcMoeSamModel): saved as they are, the folder's
            # remote code would be torch's FSDP sources. A fresh model of the method takes the gathered weights.
            unwrapped = rebuild_model(args.method, args.base_model, state_dict, icmoe_config=icmoe_config,
                                      lora_rank=args.lora_rank, adapter_rank=args.adapter_rank, semantic=semantic)
            state_dict = None
        results = write_outputs(
            args, unwrapped, processor, metrics, load, examples, comparisons, state_dict=state_dict,
            eval_split=eval_split, steps=completed_steps, trainable=trainable_params, seconds=train_seconds,
            fingerprint=fingerprint, run_info=run_info(args, world, eval_images, volume_summary),
        )
        print_table(accelerator, results)
        if "diagnostics" in results:
            accelerator.print("IC-MoE diagnostics: " + json.dumps(results["diagnostics"]))
    last_collective = finish_collectives(accelerator)
    # The wrapped model (DDP's reducer, FSDP's mesh) goes while the process group is still registered, then the group
    # is destroyed with its worker threads idle (distributed.finish_collectives says why).
    model = optimizer = scheduler = None
    accelerator.free_memory()  # drops the Accelerator's references, then collects what they held
    accelerator.end_training()
    del last_collective
    if accelerator.is_main_process and args.push_to_hub:
        from .hub import push_output_dir

        push_output_dir(output_dir, args.hub_model_id, private=args.hub_private, adapter_only=args.push_adapter_only,
                        token=hub_token, dry_run=args.dry_run)
    return results


@contextmanager
def _naming_the_step(current_step, last_checkpoint):
    """Adds the training step and the last checkpoint to any error raised while training (e.g. from the loss)."""
    try:
        yield
    except Exception as error:  # SystemExit and KeyboardInterrupt pass as they are
        if not isinstance(error, NonFiniteTrainingError) and hasattr(error, "add_note"):  # add_note: Python 3.11+
            error.add_note(f"Raised during training step {current_step()}. {_last_good(last_checkpoint())}")
        raise


def _is_step(checkpoint: Path | None, step: int) -> bool:
    return checkpoint is not None and checkpoint.name == f"step_{step}"


def _stop_requested(stop: StopOnSignal, accelerator) -> bool:
    """Whether any process got SIGTERM/SIGINT: all processes must agree to stop at the same step."""
    requested = stop.signum is not None
    if accelerator.num_processes > 1:
        requested = accelerator.reduce(torch.tensor(int(requested), device=accelerator.device), "sum").item() > 0
    return requested


def _stop_after_checkpoint(stop: StopOnSignal, accelerator, progress, checkpoint: Path, step: int) -> None:
    """Ends a run that was asked to stop, once its checkpoint is saved: exit status 128 + the signal, as a shell's."""
    signum = stop.signum or signal.SIGTERM  # a process that did not get the signal itself stops with its peers
    progress.close()
    accelerator.print(
        f"Stopped by {signal.Signals(signum).name} after step {step}; saved {checkpoint}. "
        "Continue with --resume_from_checkpoint latest."
    )
    accelerator.end_training()
    raise SystemExit(128 + signum)
