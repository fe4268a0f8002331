"""Everything a training run prepares before its first step: the data loaders, the model of the method, the optimizer
and scheduler, all passed through `accelerator.prepare`, and the run's step counts and fingerprint (`TrainingSetup`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import AutoProcessor, get_scheduler

from .arguments import ICMOE_CONFIG_OVERRIDES
from .checkpointing import run_fingerprint
from .data import (
    SamPairTransform,
    check_masks,
    collate,
    count_source_images,
    default_num_workers,
    load_raw_dataset,
    select_splits,
)
from .distributed import local_parameter_counts
from .evaluation import evaluate_model
from .methods import BaselineOptions, build_model, count_trainable, load_icmoe_config
from .semantic import SemanticPairTransform, class_names, evaluate_semantic, volume_classes
from .streaming import TrainStream, stream_splits, train_stream
from .volume_data import VOLUME_COLUMNS, is_volume_source, load_volume_dataset


@dataclass
class TrainingSetup:
    """What a run trains and evaluates with, prepared by `prepare_training`."""

    accelerator: Accelerator
    processor: Any
    model: torch.nn.Module | None
    optimizer: torch.optim.Optimizer | None
    scheduler: Any
    train_loader: Any  # a prepared DataLoader, or the process's `TrainStream`
    eval_loader: DataLoader
    eval_split: str
    eval_images: int
    volume_summary: Any  # what slicing volumes counted; None for 2-D data
    classes: dict[int, str] | None  # `id2label` of the prompt-free model; None for the prompted one
    semantic: dict | None  # the prompt-free model's classes, decoder and label values, as `build_model` takes them
    icmoe_config: Any
    trainable_params: int
    parameters_per_process: Any
    fingerprint: dict
    steps_per_epoch: int
    max_steps: int
    num_epochs: int

    @property
    def streaming(self) -> bool:
        return isinstance(self.train_loader, TrainStream)

    def evaluate(self, args, num_examples: int = 0):
        """`(metrics, expert load, example figures)` of the model as it is now, on the eval split."""
        if self.classes is not None:
            return evaluate_semantic(self.model, self.eval_loader, self.accelerator, id2label=self.classes,
                                     nsd_tolerance_mm=args.nsd_tolerance_mm)
        return evaluate_model(self.model, self.eval_loader, self.processor, self.accelerator, num_examples=num_examples,
                              prompt=args.prompt, num_points=args.num_points, nsd_tolerance_mm=args.nsd_tolerance_mm)


def prepare_training(args, accelerator: Accelerator) -> TrainingSetup:
    """Seeds, then builds the data, the model, the optimizer and the scheduler, and passes them through
    `accelerator.prepare`."""
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
        semantic=semantic, baseline=BaselineOptions.from_args(args),
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
    warmup = args.num_warmup_steps if args.num_warmup_steps is not None else math.ceil(0.05 * max_steps)
    # The prepared scheduler steps once per process for every optimizer step, hence the scaling.
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=warmup * accelerator.num_processes,
        num_training_steps=max(1, max_steps) * accelerator.num_processes,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return TrainingSetup(
        accelerator=accelerator, processor=processor, model=model, optimizer=optimizer, scheduler=scheduler,
        train_loader=train_loader, eval_loader=eval_loader, eval_split=eval_split, eval_images=eval_images,
        volume_summary=volume_summary, classes=classes, semantic=semantic, icmoe_config=icmoe_config,
        trainable_params=trainable_params, parameters_per_process=local_parameter_counts(model, accelerator),
        fingerprint=run_fingerprint(
            args, adapter_config=icmoe_config.to_dict(), train_steps=max_steps, warmup_steps=warmup,
            num_processes=accelerator.num_processes,
        ),
        steps_per_epoch=steps_per_epoch, max_steps=max_steps, num_epochs=math.ceil(max_steps / steps_per_epoch),
    )


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


ENCODER_BLOCK = re.compile(r"vision_encoder\.layers\.(\d+)\.")
ENCODER_EMBEDDING = re.compile(r"vision_encoder\.(patch_embed|pos_embed)")


def lr_scale(name: str, num_blocks: int, args) -> float:
    """The factor on `--learning_rate` of the parameter `name`: `--mask_decoder_lr_scale` for the mask decoder's
    (every method names them `mask_decoder.`), and with `--layer_lr_decay` d below 1, d ** (L - i) for encoder block i
    of L and d ** (L + 1) for the patch embedding (layer-wise decay: the blocks nearest the input move least)."""
    if "mask_decoder." in name:
        return args.mask_decoder_lr_scale
    decay = getattr(args, "layer_lr_decay", 1.0)
    block = ENCODER_BLOCK.search(name)
    if decay == 1.0 or (block is None and not ENCODER_EMBEDDING.search(name)):
        return 1.0
    return decay ** (num_blocks - int(block.group(1)) if block else num_blocks + 1)


def _param_groups(model, args) -> list[dict]:
    """The trainable parameters in one group per learning-rate factor (`lr_scale`): the others' groups first, then
    the mask decoder's, which is always a group of its own (as checkpoints' optimizer states expect)."""
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    num_blocks = 1 + max((int(m.group(1)) for name, _ in named if (m := ENCODER_BLOCK.search(name))), default=-1)
    groups: dict[tuple[bool, float], list] = {}
    for name, param in named:
        groups.setdefault(("mask_decoder." in name, lr_scale(name, num_blocks, args)), []).append(param)
    return [{"params": params} if (scale == 1.0 and not decoder) else
            {"params": params, "lr": args.learning_rate * scale}
            for (decoder, scale), params in sorted(groups.items(), key=lambda item: item[0][0])]
