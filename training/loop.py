"""The Accelerate training loop shared by every method: same data, prompts, loss bookkeeping and metrics.

`run` reads top to bottom: the run folder and the setup (`preparation.prepare_training`), a zero-shot evaluation or
the checkpoint to resume, the steps (`train_step`), their log (`TrainLog`), a checkpoint or a stop after each, and
the end (evaluation, the saved model and results, the Hub push).
"""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, gather_object, send_to_device
from tqdm.auto import tqdm

from modeling_icmoe import run_folder

from .arguments import tracker_config
from .checkpointing import (
    StopOnSignal,
    check_output_dir,
    clear_outputs,
    fingerprint_differences,
    latest_checkpoint,
    read_checkpoint,
    save_checkpoint,
    write_json_atomic,
)
from .distributed import accelerator_device_kwargs, check_world, enable_fsdp_on_cpu, finish_collectives, world_info
from .diagnostics import routed_counts
from .prompts import prompt_inputs
from .methods import BaselineOptions, check_base_model, model_loss, rebuild_model
from .outputs import METRIC_KEYS, print_table, run_info, write_outputs
from .preparation import TrainingSetup, _param_groups, prepare_training  # noqa: F401  (_param_groups: tests)


def run(args) -> dict:
    output_dir = Path(args.output_dir)
    accelerator, hub_token = _start(args, output_dir)
    setup = prepare_training(args, accelerator)
    state, marker = TrainingState(), None
    if args.resume_from_checkpoint:
        state.checkpoint, marker = _resolve_checkpoint(args, output_dir, setup.fingerprint, accelerator)
    if accelerator.is_main_process:
        manifest = output_dir / run_folder.RUN_MANIFEST
        # Resuming keeps the list of what the run already wrote, which --overwrite_output_dir removes later.
        written = json.loads(manifest.read_text()).get("outputs", []) if manifest.is_file() else []
        write_json_atomic(manifest, {"fingerprint": setup.fingerprint, "outputs": written})
    if args.report_to != "none":
        accelerator.init_trackers(run_folder.TRACKER_PROJECT, config=tracker_config(args))

    if not args.no_zeroshot_eval and not args.resume_from_checkpoint:
        accelerator.print("Evaluating the base model (zero-shot) ...")
        metrics, _, _ = setup.evaluate(args)
        state.comparisons["zeroshot"] = {k: metrics[k] for k in METRIC_KEYS if k in metrics}
        if "volumes" in metrics:
            state.comparisons["zeroshot"]["volumes"] = metrics["volumes"]["mean"]
    if marker is not None:
        _restore(args, setup, state, marker)

    progress = tqdm(range(setup.max_steps), initial=state.completed_steps,
                    disable=not accelerator.is_local_main_process)
    log = TrainLog(output_dir / run_folder.TRAIN_LOG_NAME, accelerator, resumed=bool(args.resume_from_checkpoint),
                   completed_steps=state.completed_steps)
    with StopOnSignal() as stop, _naming_the_step(state):
        for epoch in range(state.starting_epoch, setup.num_epochs):
            if state.completed_steps >= setup.max_steps:
                break
            setup.model.train()
            setup.train_loader.set_epoch(epoch)
            skip = state.resume_batches if epoch == state.starting_epoch else 0
            for batch_index, batch in enumerate(_batches(setup, skip, state.stream_start), start=skip):
                step = state.completed_steps + 1
                log_now = step % args.logging_steps == 0 or step == setup.max_steps
                generator = _step_generator(args, epoch, batch_index, accelerator.process_index)
                outputs, loss, terms = train_step(args, setup, state, batch, generator, log_now=log_now)
                log.add(loss, terms)
                if not accelerator.sync_gradients:
                    continue
                state.completed_steps = step
                progress.update(1)
                if log_now:
                    record = log.write(args, setup, state, epoch, outputs)
                    progress.set_postfix(loss=f"{record['loss']:.4f}")
                if args.eval_steps and step % args.eval_steps == 0 and step < setup.max_steps:
                    _evaluate_while_training(args, setup, step)
                _checkpoint_or_stop(args, setup, state, stop, progress)
                if step >= setup.max_steps:
                    break
            if args.checkpointing_steps == "epoch":
                state.checkpoint = _save_checkpoint(args, setup, state)
    train_seconds = time.perf_counter() - log.start
    progress.close()

    results = _evaluate_and_save(args, setup, state, train_seconds)
    _end(setup)
    if accelerator.is_main_process and args.push_to_hub:
        from .hub import push_output_dir

        push_output_dir(output_dir, args.hub_model_id, private=args.hub_private, adapter_only=args.push_adapter_only,
                        token=hub_token, dry_run=args.dry_run)
    return results


# ------------------------------------------------------------------------------------------------------ the start
def _start(args, output_dir: Path) -> tuple[Accelerator, str | None]:
    """The Accelerator, and the checks that fail before any work: the world, the Hub push (its token is returned,
    never printed), the base model and the output folder (emptied of an earlier run's outputs where allowed)."""
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

        hub_token = check_hub_push(args.hub_model_id, args.hub_token)
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
    return accelerator, hub_token


@dataclass
class TrainingState:
    """Where training stands: the optimizer steps done, the last checkpoint saved, the zero-shot comparison, and
    where a resumed run starts reading (epoch, batches to skip in it, a stream's position)."""

    completed_steps: int = 0
    checkpoint: Path | None = None
    comparisons: dict = field(default_factory=dict)
    starting_epoch: int = 0
    resume_batches: int = 0
    stream_start: tuple[int, int] = (0, 0)


def _resolve_checkpoint(args, output_dir: Path, fingerprint: dict, accelerator) -> tuple[Path, dict]:
    """The checkpoint to resume and its marker, after checking that it is complete and belongs to this run."""
    if args.resume_from_checkpoint == "latest":
        checkpoint, skipped = latest_checkpoint(output_dir / run_folder.CHECKPOINTS_SUBFOLDER)
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


def _restore(args, setup: TrainingSetup, state: TrainingState, marker: dict) -> None:
    """Loads the checkpoint's states (model, optimizer, scheduler, random states) and its step and comparison."""
    accelerator = setup.accelerator
    accelerator.print(f"Resuming from {state.checkpoint}")
    accelerator.load_state(str(state.checkpoint))
    state.completed_steps, state.comparisons = marker["step"], marker["comparisons"]
    state.starting_epoch = state.completed_steps // setup.steps_per_epoch
    state.resume_batches = (state.completed_steps % setup.steps_per_epoch) * args.gradient_accumulation_steps
    if setup.streaming:
        state.stream_start = tuple(marker["stream_positions"][accelerator.process_index])
    if state.completed_steps >= setup.max_steps:
        accelerator.print(
            f"{state.checkpoint} is the end of training ({state.completed_steps} of {setup.max_steps} steps): nothing "
            "left to train; evaluating and saving the model."
        )


# ------------------------------------------------------------------------------------------------------- the step
def _batches(setup: TrainingSetup, skip: int, stream_start: tuple[int, int]):
    """The epoch's batches on the device, after the `skip` a resumed run already trained on."""
    if setup.streaming:
        return (send_to_device(batch, setup.accelerator.device) for batch in setup.train_loader.batches(stream_start))
    return setup.accelerator.skip_first_batches(setup.train_loader, skip) if skip else setup.train_loader


def _step_generator(args, epoch: int, batch_index: int, process_index: int) -> torch.Generator:
    """Prompt randomness as a function of (seed, epoch, batch, process): resumed runs draw the same prompts."""
    return torch.Generator().manual_seed(hash((args.seed, epoch, batch_index, process_index)) % (2**63))


def train_step(args, setup: TrainingSetup, state: TrainingState, batch: dict, generator: torch.Generator, *,
               log_now: bool):
    """One batch: prompts drawn from its masks, the loss and its gradients, and where the gradients are synchronised
    (the last batch of an accumulation) clipping and the optimizer step. Returns the model's outputs (with the
    routing when `log_now`), the loss and its terms."""
    accelerator = setup.accelerator
    with accelerator.accumulate(setup.model):
        inputs = prompt_inputs(
            batch, prompt=args.prompt, num_points=args.num_points, box_jitter=args.box_jitter, generator=generator,
        )
        outputs, loss, terms = model_loss(setup.model, inputs, batch["labels"], output_router_probs=log_now)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            # The norm of the synchronised gradients, the same on every process; with an infinite bound it only
            # measures. fp16's loss scaler skips overflowing steps itself, so not checked there.
            grad_norm = accelerator.clip_grad_norm_(
                setup.model.parameters(), args.max_grad_norm if args.max_grad_norm > 0 else math.inf
            )
            if grad_norm is not None and accelerator.scaler is None and not torch.isfinite(grad_norm):
                raise NonFiniteTrainingError(
                    f"Step {state.completed_steps + 1}: the gradient norm is {grad_norm.item()} (loss "
                    f"{loss.item():.4g}); stopped before the optimizer applied it. {_last_good(state.checkpoint)}"
                    f" Lower --learning_rate (this run: {args.learning_rate:g}) or check the data."
                )
        setup.optimizer.step()
        setup.scheduler.step()
        setup.optimizer.zero_grad()
    return outputs, loss, terms


# ---------------------------------------------------------------------------------------------------- the logging
class TrainLog:
    """`train_log.jsonl`: at every logged step, the loss and its terms averaged over the batches since the last log
    (and over processes), the learning rate, the seconds since training started and the expert load; the same
    values go to the trackers."""

    def __init__(self, path: Path, accelerator, *, resumed: bool, completed_steps: int):
        self.path, self.accelerator = path, accelerator
        if accelerator.is_main_process:
            # A resumed run drops what the interrupted one logged after its checkpoint, since it logs those steps again.
            kept = []
            if resumed and path.is_file():
                kept = [line for line in path.read_text().splitlines()
                        if line and json.loads(line)["step"] <= completed_steps]
            path.write_text("".join(line + "\n" for line in kept))
        self.window: list[dict] = []
        self.start = time.perf_counter()  # training's clock starts here

    def add(self, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        self.window.append({"loss": loss.detach(), **terms})

    def write(self, args, setup: TrainingSetup, state: TrainingState, epoch: int, outputs) -> dict:
        """Logs the step just completed and starts a new window; raises on a non-finite mean loss."""
        accelerator, step = self.accelerator, state.completed_steps
        means = {k: accelerator.reduce(torch.stack([w[k] for w in self.window]).mean().float(), "mean").item()
                 for k in self.window[0]}
        record = {"step": step, "epoch": setup.train_loader.position[0] if setup.streaming else epoch,
                  "loss": means.pop("loss"), "loss_terms": means,
                  "lr": setup.scheduler.get_last_lr()[0],
                  # Since this process started training (a resumed run: since it resumed).
                  "elapsed_seconds": round(time.perf_counter() - self.start, 4)}
        if not math.isfinite(record["loss"]):
            raise NonFiniteTrainingError(
                f"Step {step}: the mean loss since the last log is {record['loss']}. "
                f"{_last_good(state.checkpoint)} Lower --learning_rate (this run: {args.learning_rate:g})."
            )
        if getattr(outputs, "router_probs", None):
            record["expert_load"] = _expert_load(outputs)
        self.window = []
        accelerator.log({"loss": record["loss"], "lr": record["lr"], **means}, step=step)
        if accelerator.is_main_process:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        return record


def _expert_load(outputs) -> list[list[float]]:
    """Share of routed tokens that went to each expert, per IC-MoE layer, for one batch (as in evaluation)."""
    counts = routed_counts(outputs.router_probs)
    return (counts / counts.sum(dim=1, keepdim=True)).tolist()


def _evaluate_while_training(args, setup: TrainingSetup, step: int) -> None:
    metrics, _, _ = setup.evaluate(args)
    if setup.accelerator.is_main_process:
        setup.accelerator.print(f"step {step}: eval dice {metrics['dice']:.4f}")
        setup.accelerator.log({f"eval_{k}": metrics[k] for k in ("dice", "iou", "hd95")}, step=step)
    setup.model.train()


# -------------------------------------------------------------------------------------------- checkpoint or stop
def _checkpoint_or_stop(args, setup: TrainingSetup, state: TrainingState, stop: StopOnSignal, progress) -> None:
    """Saves a checkpoint every `--checkpointing_steps`; on SIGTERM/SIGINT saves one (unless this step has one) and
    ends the run."""
    if isinstance(args.checkpointing_steps, int) and state.completed_steps % args.checkpointing_steps == 0:
        state.checkpoint = _save_checkpoint(args, setup, state)
    if _stop_requested(stop, setup.accelerator) and state.completed_steps < setup.max_steps:
        if not _is_step(state.checkpoint, state.completed_steps):
            state.checkpoint = _save_checkpoint(args, setup, state)
        _stop_after_checkpoint(stop, setup.accelerator, progress, state.checkpoint, state.completed_steps)


def _save_checkpoint(args, setup: TrainingSetup, state: TrainingState) -> Path:
    """A checkpoint of the step just completed (never of non-finite weights), with a stream's positions."""
    step, accelerator = state.completed_steps, setup.accelerator
    _check_finite_parameters(setup.model, accelerator, step, state.checkpoint, args.learning_rate)
    positions = gather_object([list(setup.train_loader.position)]) if setup.streaming else None
    return save_checkpoint(accelerator, Path(args.output_dir), step, fingerprint=setup.fingerprint,
                           comparisons=state.comparisons, stream_positions=positions)


# -------------------------------------------------------------------------------------------------------- the end
def _evaluate_and_save(args, setup: TrainingSetup, state: TrainingState, train_seconds: float) -> dict:
    """Evaluates the trained model and writes the run's outputs (the model, eval_results.json, figures, the card);
    returns the results (empty on every process but the main one)."""
    accelerator, model = setup.accelerator, setup.model
    accelerator.print("Evaluating the trained model ...")
    metrics, load, examples = setup.evaluate(args, num_examples=args.num_example_figures)
    if args.method != "zeroshot":
        _check_finite_parameters(model, accelerator, state.completed_steps, state.checkpoint, args.learning_rate)
    world = world_info(accelerator, model, setup.parameters_per_process)
    if setup.streaming:  # what each process read of its share: the shares' sizes add up to the split's
        world["stream_per_process"] = gather_object([setup.train_loader.summary()])
    if world["weights_agree_across_processes"] is False:
        accelerator.print(
            "WARNING: the processes ended training with different weights (their gradients were not synchronised); "
            f"the saved model is the main process's. {run_folder.EVAL_RESULTS_NAME} records "
            "weights_agree_across_processes: false."
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
            unwrapped = rebuild_model(args.method, args.base_model, state_dict, icmoe_config=setup.icmoe_config,
                                      lora_rank=args.lora_rank, adapter_rank=args.adapter_rank, semantic=setup.semantic,
                                      baseline=BaselineOptions.from_args(args))
            state_dict = None
        results = write_outputs(
            args, unwrapped, setup.processor, metrics, load, examples, state.comparisons, state_dict=state_dict,
            eval_split=setup.eval_split, steps=state.completed_steps, trainable=setup.trainable_params,
            seconds=train_seconds,
            fingerprint=setup.fingerprint, run_info=run_info(args, world, setup.eval_images, setup.volume_summary),
        )
        print_table(accelerator, results)
        if "diagnostics" in results:
            accelerator.print("IC-MoE diagnostics: " + json.dumps(results["diagnostics"]))
    return results


def _end(setup: TrainingSetup) -> None:
    """Ends the run's collectives and trackers: the wrapped model (DDP's reducer, FSDP's mesh) goes while the process
    group is still registered, then the group is destroyed with its worker threads idle (`finish_collectives`)."""
    last_collective = finish_collectives(setup.accelerator)
    setup.model = setup.optimizer = setup.scheduler = None
    setup.accelerator.free_memory()  # drops the Accelerator's references, then collects what they held
    setup.accelerator.end_training()
    del last_collective


# ------------------------------------------------------------------------------------------------- errors, stops
class NonFiniteTrainingError(RuntimeError):
    """A loss, gradient or parameter became NaN or infinite; the run stops before saving it."""


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


@contextmanager
def _naming_the_step(state: TrainingState):
    """Adds the training step and the last checkpoint to any error raised while training (e.g. from the loss)."""
    try:
        yield
    except Exception as error:  # SystemExit and KeyboardInterrupt pass as they are
        if not isinstance(error, NonFiniteTrainingError) and hasattr(error, "add_note"):  # add_note: Python 3.11+
            error.add_note(f"Raised during training step {state.completed_steps + 1}. {_last_good(state.checkpoint)}")
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
