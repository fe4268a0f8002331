"""A 2-D U-Net trained from scratch on a prompt-free task: the non-SAM baseline of the prompt-free benchmark.

The recipe is nnU-Net's 2-D one (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based
biomedical image segmentation", Nature Methods 2021) cut to a CPU: MONAI's `DynUNet` (nnU-Net's network: two 3x3
convolutions per level, instance norm, leaky ReLU, strided convolutions down, transposed convolutions up), five
levels (128 px down to 8 px), Dice + cross-entropy (`monai.losses.DiceCELoss`, batch Dice over the foreground
classes), weight decay 3e-5, polynomial decay of the rate (exponent 0.9), gradient norm clipped at 12. Three changes:

- AdamW instead of nnU-Net's SGD (Nesterov momentum 0.99, from 1e-2), which is made for 250,000 steps: in 300 steps
  on ct_abdomen_organs (validation Dice over classes, one seed) SGD reached 0.14 at 1e-2 and 0.21 at 3e-2, finding
  the liver alone, and AdamW 0.36 at 1e-3 and 0.66 at 3e-3 (`--optimizer sgd` keeps nnU-Net's);
- 16 filters at the top level instead of 32: 1.9 M parameters (5.7 M with 32; the stand-in SAM has about 1.2 M),
  and 0.26 s against 0.86 s a step of 4 images on one CPU thread;
- no mirroring, since the kidneys are labelled left and right; no other augmentation either.

It sees what the SAM methods see: the same rows, at their stored size and intensities (standardised by the train
split's mean and standard deviation), the same steps and batch size; its predictions are scored by the same
`training.semantic_metrics.score_class_maps` at the original size. It writes `eval_results.json` in the format of
`training/run.py --prompt none` (so that the benchmark reads both alike), the predicted class maps
(`predictions.npz`, `maps` in the eval split's order) and `train_log.jsonl`.

    python benchmarks/unet_baseline.py --dataset training/data/ct_abdomen_organs --eval_split validation \\
        --max_train_steps 600 --learning_rate 3e-3 --output_dir outputs/unet
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import datasets  # noqa: E402

from modeling_icmoe.imaging import resolve_window  # noqa: E402
from modeling_icmoe.run_folder import EVAL_RESULTS_NAME, TRAIN_LOG_NAME  # noqa: E402
from training.data import class_map, load_raw_dataset  # noqa: E402
from training.semantic import class_names, volume_class_scores, volume_classes  # noqa: E402
from training.volume_data import VOLUME_COLUMNS, is_volume_source, load_volume_dataset  # noqa: E402
from training.semantic_metrics import METRIC_NAMES, score_class_maps  # noqa: E402

NUM_LEVELS = 5
TOTAL_STRIDE = 2 ** (NUM_LEVELS - 1)  # images are padded to a multiple of it
MOMENTUM = 0.99
WEIGHT_DECAY = 3e-5
POLY_EXPONENT = 0.9
MAX_GRAD_NORM = 12.0
OPTIMIZERS = ("sgd", "adamw")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True,
                        help="Folder with metadata.csv, a save_to_disk folder, or a volume folder (Decathlon/NIfTI "
                             "layout, as training/run.py reads it).")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--mask_column", default="mask")
    parser.add_argument("--label_names", nargs="+", default=None,
                        help="Class names in id order, the background first (default: the labels.json beside "
                             "the data).")
    parser.add_argument("--window", nargs="+", default=None,
                        help="Volumes only: the CT window that maps intensities to 8 bits (as training/run.py's).")
    parser.add_argument("--label_ids", type=int, nargs="+", default=None,
                        help="Volumes only: the label values to segment (default: every label of dataset.json).")
    parser.add_argument("--nsd_tolerance_mm", type=float, default=1.0, help="Volumes only: NSD's tolerance.")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--eval_split", default="test")
    parser.add_argument("--max_train_steps", type=int, required=True)
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=16)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                        help="adamw: Adam with decoupled weight decay; sgd: nnU-Net's (Nesterov momentum 0.99, "
                             "usually from 1e-2).")
    parser.add_argument("--learning_rate", type=float, default=3e-3, help="The initial rate.")
    parser.add_argument("--filters", type=int, nargs=NUM_LEVELS, default=[16, 32, 64, 128, 256],
                        help="Channels per level, top first.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max_train_samples", type=int, default=None, help="The first N train rows.")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="The first N eval rows.")
    parser.add_argument("--logging_steps", type=int, default=5)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    for name in ("max_train_steps", "per_device_train_batch_size", "per_device_eval_batch_size", "max_train_samples",
                 "max_eval_samples", "logging_steps"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if args.learning_rate <= 0:
        parser.error(f"--learning_rate must be positive, got {args.learning_rate}")
    if args.window is not None:
        try:
            args.window = resolve_window(args.window)
        except ValueError as err:
            parser.error(f"--window: {err}")
    return args


def load_source(args: argparse.Namespace) -> tuple[datasets.DatasetDict, dict[int, str]]:
    """The dataset's splits and classes. A volume folder is sliced as `training/run.py --prompt none` slices it:
    every slice one row, its mask the class-id map, its case, slice index and spacing kept for per-volume scores."""
    if is_volume_source(args.dataset):
        id2label, class_values = volume_classes(args.dataset, args.label_names, args.label_ids)
        dataset, _ = load_volume_dataset(args.dataset, image_column=args.image_column, mask_column=args.mask_column,
                                         window=args.window, label_ids=args.label_ids, seed=args.seed,
                                         class_values=class_values)
        return dataset, id2label
    if args.window is not None or args.label_ids is not None:
        raise ValueError(f"--window and --label_ids are for volume folders; {args.dataset} is not one.")
    dataset = load_raw_dataset(args.dataset, image_column=args.image_column, mask_column=args.mask_column)
    return dataset, class_names(args.dataset, args.label_names)


def load_split(args: argparse.Namespace, dataset: datasets.DatasetDict, split: str, limit: int | None,
               class_ids: list[int]):
    """(images (N, H, W) float32 as stored, class maps (N, H, W) int64, the rows) of the first `limit` rows of
    `split`."""
    if split not in dataset:
        raise ValueError(f"No split `{split}` in {args.dataset} (splits: {list(dataset)}).")
    rows = dataset[split]
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    images, maps = [], []
    for row in rows:
        image = row[args.image_column]
        # A colour image becomes its luminance; a grey one (8-bit, 16-bit or float) keeps its values.
        pixels = np.asarray(image.convert("L") if image.mode in ("RGB", "RGBA", "P") else image, dtype=np.float32)
        images.append(pixels)
        maps.append(class_map(row[args.mask_column], class_ids))
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise ValueError(f"The U-Net baseline batches images of one size; split `{split}` has sizes {sorted(shapes)}.")
    for index, (image, classes) in enumerate(zip(images, maps)):
        if image.shape != classes.shape:
            raise ValueError(f"Split `{split}` row {index}: image {image.shape} but mask {classes.shape}.")
    return np.stack(images), np.stack(maps), rows


def padded(batch: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) zero-padded at the bottom and right to a multiple of the network's total stride."""
    height, width = batch.shape[-2:]
    return torch.nn.functional.pad(batch, (0, -width % TOTAL_STRIDE, 0, -height % TOTAL_STRIDE))


def build_unet(num_classes: int, filters: list[int]) -> torch.nn.Module:
    from monai.networks.nets import DynUNet

    return DynUNet(
        spatial_dims=2, in_channels=1, out_channels=num_classes, kernel_size=[3] * NUM_LEVELS,
        strides=[1] + [2] * (NUM_LEVELS - 1), upsample_kernel_size=[2] * (NUM_LEVELS - 1), filters=filters,
        norm_name=("INSTANCE", {"affine": True}), act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
    )


def train(model, images: torch.Tensor, maps: torch.Tensor, args: argparse.Namespace, log_path: Path) -> float:
    """SGD over shuffled passes of the rows (a pass's last batch may be short, as a DataLoader's); returns seconds."""
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=MOMENTUM, nesterov=True,
                                    weight_decay=WEIGHT_DECAY)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=args.max_train_steps, power=POLY_EXPONENT)
    generator = torch.Generator().manual_seed(args.seed)
    batch_size, losses, step = args.per_device_train_batch_size, [], 0
    model.train()
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        while step < args.max_train_steps:
            order = torch.randperm(len(images), generator=generator)
            for first in range(0, len(order), batch_size):
                rows = order[first : first + batch_size]
                logits = model(padded(images[rows]))[..., : images.shape[-2], : images.shape[-1]]
                loss = loss_fn(logits, maps[rows])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"Step {step + 1}: the loss is {loss.item()}; lower --learning_rate "
                                             f"(this run: {args.learning_rate:g}).")
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                optimizer.step()
                scheduler.step()
                step += 1
                losses.append(loss.item())
                if step % args.logging_steps == 0 or step == args.max_train_steps:
                    record = {"step": step, "loss": float(np.mean(losses)), "lr": scheduler.get_last_lr()[0],
                              "elapsed_seconds": round(time.perf_counter() - start, 4)}
                    log.write(json.dumps(record) + "\n")
                    losses = []
                if step == args.max_train_steps:
                    break
    return time.perf_counter() - start


@torch.no_grad()
def predict(model, images: torch.Tensor, batch_size: int) -> np.ndarray:
    """Class maps (N, H, W) at the images' size."""
    model.eval()
    maps = []
    for first in range(0, len(images), batch_size):
        batch = images[first : first + batch_size]
        logits = model(padded(batch))[..., : batch.shape[-2], : batch.shape[-1]]
        maps.append(logits.argmax(dim=1).to(torch.uint8).numpy())
    return np.concatenate(maps)


def eval_metrics(predictions: np.ndarray, references: np.ndarray, id2label: dict[int, str]) -> dict:
    """The scores `training/run.py --prompt none` writes, computed by the same function."""
    scores = score_class_maps(list(predictions), list(references), id2label)
    spread = {f"{name}_std": float(np.std([c[name] for c in scores["per_class"].values()])) for name in METRIC_NAMES}
    return {
        **{name: scores[name] for name in METRIC_NAMES}, **spread, "n_images": scores["n_images"],
        "per_image": {name: [round(v, 6) for v in scores["per_pair"][name]] for name in METRIC_NAMES},
        "per_class": scores["per_class"], "per_image_class_ids": scores["per_pair"]["class_id"],
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dataset, id2label = load_source(args)
    class_ids = sorted(id2label)
    train_images, train_maps, _ = load_split(args, dataset, args.train_split, args.max_train_samples, class_ids)
    eval_images, eval_maps, eval_rows = load_split(args, dataset, args.eval_split, args.max_eval_samples, class_ids)
    mean, std = float(train_images.mean()), float(train_images.std()) or 1.0

    def standardised(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((images - mean) / std)[:, None]  # (N, 1, H, W)

    torch.manual_seed(args.seed)
    model = build_unet(len(id2label), args.filters)
    seconds = train(model, standardised(train_images), torch.from_numpy(train_maps)[:, None], args,
                    output_dir / TRAIN_LOG_NAME)
    predictions = predict(model, standardised(eval_images), args.per_device_eval_batch_size)
    np.savez_compressed(output_dir / "predictions.npz", maps=predictions)
    results = {
        "method": "unet", "dataset": args.dataset, "eval_split": args.eval_split,
        **eval_metrics(predictions, eval_maps, id2label),
        "train_steps": args.max_train_steps, "learning_rate": args.learning_rate,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_seconds": round(seconds, 2), "prompt": "none", "seed": args.seed,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "unet": {"filters": args.filters, "levels": NUM_LEVELS,
                 "optimizer": "AdamW" if args.optimizer == "adamw" else f"SGD, Nesterov momentum {MOMENTUM}",
                 "weight_decay": WEIGHT_DECAY, "poly_exponent": POLY_EXPONENT, "max_grad_norm": MAX_GRAD_NORM,
                 "intensity_mean": mean, "intensity_std": std},
        "id2label": {str(k): v for k, v in id2label.items()},
    }
    if VOLUME_COLUMNS[0] in eval_rows.column_names:  # slices of volumes: also scored whole, as run.py scores them
        metas = eval_rows.select_columns(list(VOLUME_COLUMNS)).to_list()
        results["volumes"] = volume_class_scores(list(predictions), list(eval_maps), metas, id2label,
                                                 nsd_tolerance_mm=args.nsd_tolerance_mm)
        results["window"] = args.window
    (output_dir / EVAL_RESULTS_NAME).write_text(json.dumps(results, indent=2) + "\n")
    per_class = ", ".join(f"{name} {scores['dice']:.3f}" for name, scores in results["per_class"].items())
    print(f"[unet] {args.eval_split}: Dice {results['dice']:.4f} over classes ({per_class}); {seconds:.1f} s training",
          flush=True)
    return results


if __name__ == "__main__":
    main()
