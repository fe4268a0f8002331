"""Cost of IC-MoE against SAM and the parameter-efficient baselines: time, memory, parameters, file sizes.

What it measures, in one process, with the models' calls interleaved repetition by repetition so that the
machine's drift hits every model alike (each figure: the median over `--reps` repetitions and its spread):
- `forward`: an eval forward pass (batch 1, box prompt) of SAM, IC-MoE, IC-MoE's fused inference path, LoRA on
  `qkv` (rank 4, and at IC-MoE's trainable encoder parameters) and the bottleneck adapter (rank 64, and matched);
  ratios against SAM, per repetition.
- `train`: one training step (forward, the method's training loss, backward, AdamW step; batch 2) of IC-MoE, the
  same baselines and decoder-only; ratios against LoRA. Each method's peak memory: its weights, gradients and
  optimizer state plus the step's peak (CUDA: the allocator's peak; CPU: the process's peak resident set, reset
  through `/proc/self/clear_refs` before the step).
- `scaling`: IC-MoE's forward and training-step ratios against SAM and LoRA at each image size (256 / 512 / 1024)
  for 3, 6 and 12 routed experts (basic, semantic and adaptive in equal numbers, beside the shared expert) and the
  default; trainable encoder parameters of each.
- `profile`: a `torch.profiler` summary of the IC-MoE layers in one forward pass and one training step: their share
  of the time, operators (and CUDA kernels) per layer call, and the operators that cost most inside them.
- `files`: trainable parameters of every method and the size of what training writes: the adapter-only
  checkpoints (IC-MoE, LoRA via PEFT, adapter) and a full SAM checkpoint.

Models are built by the training code (`training.methods.build_model`, the path `training/run.py` takes) from SAM
checkpoints written here with the ViT-B architecture and PyTorch-default weights (`training.sam_init`); timing,
memory and counts do not depend on the weights' values. The attention is the model's default (SDPA) unless
`--attn_implementation` says otherwise.

    python benchmarks/cost.py --device cuda --dtype bfloat16 --output benchmarks/results/cost_h200_bf16.json
    python benchmarks/cost.py --device cpu --num_threads 2 --train_image_size 512 \\
        --forward_methods sam icmoe icmoe_fused lora_matched adapter_matched --scaling_sizes 256 512 \\
        --scaling_train_sizes 256 --output benchmarks/results/cost_cpu_fp32.json    # 20 minutes on 2 cores
    python benchmarks/cost.py --smoke --work_dir /tmp/cost          # a tiny SAM, seconds: checks the script
    python benchmarks/cost.py --report                              # re-render docs/BENCHMARKS.md's section

Writes the JSON report (`--output`) and renders every `benchmarks/results/cost_*.json` into the section between
the cost markers of `docs/BENCHMARKS.md` (`--report_path`; text outside the markers is kept).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import shlex
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from benchmarks.cost_report import MARK_BEGIN, MARK_END, RESULTS, stored_reports, write_report  # noqa: E402, F401
from benchmarks.accuracy_methods import MATCH_TOLERANCE, matched_ranks  # noqa: E402, F401
from benchmarks.measure import (  # noqa: E402
    interleaved,
    layer_ranges,
    profile_ranges,
    step_peak_bytes,
    summarize,
)
from modeling_icmoe import IcMoeAdapterConfig, IcMoeLayer, IcMoeSamModel, save_icmoe_adapter  # noqa: E402
from training.arguments import build_parser as run_parser  # noqa: E402
from training.methods import build_model, count_trainable, encoder_trainable_params, model_loss  # noqa: E402

LAYER_RANGE = "icmoe_layer"  # the profiler range around every IC-MoE layer call
SECTIONS = ("forward", "train", "profile", "files", "scaling")
FORWARD_METHODS = ("sam", "icmoe", "icmoe_fused", "lora_r4", "lora_matched", "adapter", "adapter_matched")
TRAIN_METHODS = ("icmoe", "lora_r4", "lora_matched", "adapter", "adapter_matched", "decoder")
DEFAULT_REPORT = REPO_ROOT / "docs" / "BENCHMARKS.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--attn_implementation", default=None, choices=["eager", "sdpa"],
                        help="Attention of every model (default: the model's own, SDPA).")
    parser.add_argument("--compile", action="store_true",
                        help="Also time SAM and IC-MoE under torch.compile in the forward section (GPU).")
    parser.add_argument("--image_size", type=int, default=1024, help="Image size of the forward section.")
    parser.add_argument("--train_image_size", type=int, default=None, help="Of the train section (default: --image_size).")
    parser.add_argument("--train_batch_size", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5, help="Interleaved timed repetitions per model.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed calls per model first.")
    parser.add_argument("--forward_methods", nargs="+", default=list(FORWARD_METHODS), choices=FORWARD_METHODS)
    parser.add_argument("--train_methods", nargs="+", default=list(TRAIN_METHODS), choices=TRAIN_METHODS)
    parser.add_argument("--scaling_sizes", type=int, nargs="+", default=[256, 512, 1024],
                        help="Image sizes of the scaling section's forward passes.")
    parser.add_argument("--scaling_train_sizes", type=int, nargs="*", default=None,
                        help="Image sizes of its training steps (default: --scaling_sizes).")
    parser.add_argument("--scaling_experts", type=int, nargs="+", default=[3, 6, 12],
                        help="Routed experts (a multiple of 3: basic, semantic, adaptive in equal numbers).")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--num_threads", type=int, default=None, help="torch.set_num_threads (CPU).")
    parser.add_argument("--work_dir", type=Path, default=None, help="Where the SAM checkpoints are written (tmp).")
    parser.add_argument("--output", type=Path, default=None, help="The JSON report (default: printed only).")
    parser.add_argument("--report", action="store_true",
                        help="Only re-render the docs section from benchmarks/results/cost_*.json.")
    parser.add_argument("--report_path", type=Path, default=None,
                        help="Default docs/BENCHMARKS.md (--smoke: none unless given).")
    parser.add_argument("--smoke", action="store_true",
                        help="A tiny SAM at 32 and 64 px, two repetitions: checks the script in seconds.")
    args = parser.parse_args(argv)
    if args.smoke:
        args.image_size, args.scaling_sizes, args.reps = 64, [32, 64], min(args.reps, 2)
    args.train_image_size = args.train_image_size or args.image_size
    if args.scaling_train_sizes is None:
        args.scaling_train_sizes = list(args.scaling_sizes)
    if args.reps < 1 or args.warmup < 0 or args.train_batch_size < 1:
        parser.error("--reps and --train_batch_size must be >= 1, --warmup >= 0")
    if any(n < 3 or n % 3 for n in args.scaling_experts):
        parser.error(f"--scaling_experts must be multiples of 3 (basic, semantic, adaptive alike), got "
                     f"{args.scaling_experts}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if not args.report and "train" in args.sections and not {"lora_r4", "lora_matched"} & set(args.train_methods):
        parser.error("--train_methods needs lora_r4 or lora_matched: training ratios are taken against LoRA")
    return args


# ---------------------------------------------------------------------------------------------- models
class Models:
    """SAM checkpoints (one per image size, written once) and the models built from them, cached."""

    def __init__(self, args: argparse.Namespace, work_dir: Path):
        self.args, self.work_dir = args, work_dir
        self.device, self.dtype = torch.device(args.device), getattr(torch, args.dtype)
        defaults = run_parser()
        self.default_ranks = {"lora": defaults.get_default("lora_rank"), "adapter": defaults.get_default("adapter_rank")}
        self._built: dict = {}
        self._matched: dict | None = None

    def base(self, image_size: int) -> str:
        from transformers import SamConfig, SamModel

        from training.sam_init import init_sam_from_scratch, tiny_sam_config

        folder = self.work_dir / f"sam-{'tiny' if self.args.smoke else 'vit-b'}-{image_size}"
        if not (folder / "config.json").is_file():
            config = (tiny_sam_config(image_size=image_size) if self.args.smoke else
                      SamConfig(vision_config={"image_size": image_size},
                                prompt_encoder_config={"image_size": image_size}))
            init_sam_from_scratch(SamModel(config), seed=0).save_pretrained(folder)
        return str(folder)

    def matched(self) -> dict:
        """LoRA and adapter ranks whose trainable encoder parameters come closest to IC-MoE's default (the accuracy
        benchmark's rule), counted at the smallest size: the counts do not depend on it."""
        if self._matched is None:
            self._matched = matched_ranks(self.base(min(self.args.scaling_sizes + [self.args.image_size])))
        return self._matched

    def spec(self, method: str) -> tuple[str, IcMoeAdapterConfig | None, dict]:
        """(run.py method, IC-MoE config, ranks) of a benchmark method name."""
        if method == "sam":
            return "zeroshot", None, {}
        if method in ("icmoe", "icmoe_fused"):
            return "icmoe", IcMoeAdapterConfig(), {}
        kind = method.split("_", 1)[0]
        if kind in ("lora", "adapter"):
            rank = self.matched()[f"{kind}_rank"] if method.endswith("_matched") else self.default_ranks[kind]
            return kind, None, {f"{kind}_rank": rank}
        return method, None, {}

    def _build(self, base: str, run_method: str, config: IcMoeAdapterConfig | None, ranks: dict):
        from transformers.utils import logging

        verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
        logging.set_verbosity_error()  # every build would print the adapters' missing-weights report
        logging.disable_progress_bar()
        try:
            model = build_model(run_method, base, icmoe_config=config or IcMoeAdapterConfig(),
                                lora_rank=ranks.get("lora_rank", 4), adapter_rank=ranks.get("adapter_rank", 64))
        finally:
            logging.set_verbosity(verbosity)
            if bars:
                logging.enable_progress_bar()
        if self.args.attn_implementation:
            model.set_attn_implementation(self.args.attn_implementation)
        return model

    def get(self, method: str, image_size: int, config: IcMoeAdapterConfig | None = None, *, training=False):
        """The model of `method` at `image_size` on the device (built once; `config` overrides IC-MoE's). Models for
        inference are cast to `--dtype`; models for training keep float32 weights and train under autocast in
        `--dtype`, as mixed-precision training does."""
        run_method, default_config, ranks = self.spec(method)
        config = config or default_config
        dtype = torch.float32 if training else self.dtype
        key = (run_method, image_size, json.dumps(config.to_dict(), sort_keys=True) if config else None,
               tuple(sorted(ranks.items())), dtype)
        if key not in self._built:
            model = self._build(self.base(image_size), run_method, config, ranks)
            self._built[key] = model.to(device=self.device, dtype=dtype)
        return self._built[key]

    def train_step(self, method: str, image_size: int, config: IcMoeAdapterConfig | None = None) -> "TrainStep":
        inputs = inputs_for(image_size, self.args.train_batch_size, self.device, torch.float32, labels=True)
        autocast = None if self.dtype == torch.float32 else self.dtype
        return TrainStep(self.get(method, image_size, config, training=True), inputs, autocast=autocast)

    def release(self) -> None:
        self._built.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def set_fused(model, enabled: bool) -> None:
    """Switches IC-MoE's fused inference path (attention placement) on or off in every block."""
    for module in model.modules():
        if hasattr(module, "fused_inference"):
            module.fused_inference = enabled


@contextlib.contextmanager
def fused(model):
    set_fused(model, True)
    try:
        yield
    finally:
        set_fused(model, False)


def inputs_for(image_size: int, batch_size: int, device, dtype, *, labels: bool = False) -> dict:
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    scale = image_size / 1024
    boxes = torch.tensor([[[100.0, 120.0, 600.0, 700.0]]] * batch_size) * scale
    inputs = {"pixel_values": pixel_values.to(device=device, dtype=dtype), "input_boxes": boxes.to(device=device, dtype=dtype)}
    if labels:
        mask = torch.zeros(batch_size, 1, image_size, image_size, dtype=torch.uint8)
        mask[..., int(200 * scale):int(600 * scale), int(150 * scale):int(500 * scale)] = 1
        inputs["labels"] = mask.to(device)
    return inputs


def forward_fn(model, inputs: dict, *, use_fused: bool = False):
    model.eval()

    def run():
        with torch.inference_mode(), (fused(model) if use_fused else contextlib.nullcontext()):
            model(**inputs)

    return run


class TrainStep:
    """One optimisation step of a model on fixed inputs, with the loss `training/run.py` uses for its method."""

    def __init__(self, model, inputs: dict, *, autocast: torch.dtype | None = None):
        self.model = model.train()
        self.autocast = autocast
        self.inputs = {key: value for key, value in inputs.items() if key != "labels"}
        self.labels = inputs["labels"]
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-6)

    def __call__(self) -> None:
        device_type = self.labels.device.type
        with torch.autocast(device_type, dtype=self.autocast) if self.autocast else contextlib.nullcontext():
            _, loss, _ = model_loss(self.model, self.inputs, self.labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def static_bytes(self) -> int:
        """Weights, buffers and optimizer state held between steps."""
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        tensors += [v for state in self.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
        return sum(t.numel() * t.element_size() for t in tensors)


# ---------------------------------------------------------------------------------------------- sections
def forward_section(models: Models, args) -> dict:
    size = args.image_size
    inputs = inputs_for(size, 1, models.device, models.dtype)
    fns = {m: forward_fn(models.get(m, size), inputs, use_fused=m == "icmoe_fused") for m in args.forward_methods}
    reference = "sam" if "sam" in fns else None
    compiled = {}
    if args.compile:
        compiled = {f"{m}_compiled": forward_fn(torch.compile(models.get(m, size)), inputs) for m in ("sam", "icmoe")}
        for fn in compiled.values():
            fn()  # compiles outside the timed rounds
    times = interleaved({**fns, **compiled}, reps=args.reps, warmup=args.warmup, device=models.device)
    summary = summarize(times, reference)
    if compiled:
        pair = summarize({name: times[name] for name in compiled}, "sam_compiled")
        summary["icmoe_compiled"]["ratio_to_sam_compiled"] = pair["icmoe_compiled"]["ratio_to_sam_compiled"]
    for name, fn in fns.items():
        model = models.get(name, size)
        held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        if name == "icmoe_fused":  # the concatenated weights it caches
            held += sum(t.numel() * t.element_size() for m in model.modules()
                        for t in getattr(m, "_fused_cache", {}).values() if torch.is_tensor(t))
        step = step_peak_bytes(fn, models.device)
        summary[name].update(held_bytes=held, step_peak_bytes=step, peak_bytes=None if step is None else held + step)
    return {"image_size": size, "batch_size": 1, "methods": summary}


def train_section(models: Models, args) -> dict:
    size, batch = args.train_image_size, args.train_batch_size
    steps = {m: models.train_step(m, size) for m in args.train_methods}
    reference = "lora_matched" if "lora_matched" in steps else "lora_r4"
    times = interleaved(steps, reps=args.reps, warmup=max(1, args.warmup), device=models.device)
    summary = summarize(times, reference, batch_size=batch)
    if "lora_r4" in steps and reference != "lora_r4":
        for name, entry in summarize(times, "lora_r4").items():
            summary[name]["ratio_to_lora_r4"] = entry["ratio_to_lora_r4"]
    peaks = {m: step_peak_bytes(step, models.device) for m, step in steps.items()}
    for name, step in steps.items():
        static = step.static_bytes()
        summary[name].update(trainable_params=count_trainable(step.model), static_bytes=static,
                             step_peak_bytes=peaks[name],
                             peak_bytes=None if peaks[name] is None else static + peaks[name])
    for name, entry in summary.items():
        if entry["peak_bytes"] is not None and summary[reference]["peak_bytes"]:
            entry[f"peak_ratio_to_{reference}"] = entry["peak_bytes"] / summary[reference]["peak_bytes"]
    for step in steps.values():
        step.model.eval()
    return {"image_size": size, "batch_size": batch, "reference": reference, "methods": summary,
            "peak_memory": "CUDA allocator peak" if models.device.type == "cuda" else
                           "peak resident set above the pre-step resident set (Linux /proc), plus held tensors"}


def expert_config(routed: int | None) -> IcMoeAdapterConfig:
    """The default config, or `routed` experts split equally over basic, semantic and adaptive (shared kept)."""
    if routed is None:
        return IcMoeAdapterConfig()
    third = routed // 3
    return IcMoeAdapterConfig(num_basic_experts=third, num_semantic_experts=third, num_adaptive_experts=third)


def scaling_section(models: Models, args) -> dict:
    models.release()  # the earlier sections' models
    rows = []
    configs = [(None, "default")] + [(n, f"{n} routed") for n in args.scaling_experts]
    for size in sorted(set(args.scaling_sizes) | set(args.scaling_train_sizes)):
        if size in args.scaling_sizes:
            inputs = inputs_for(size, 1, models.device, models.dtype)
            fns = {"sam": forward_fn(models.get("sam", size), inputs)}
            for routed, label in configs:
                fns[label] = forward_fn(models.get("icmoe", size, expert_config(routed)), inputs)
            forward = summarize(interleaved(fns, reps=args.reps, warmup=args.warmup, device=models.device), "sam")
        if size in args.scaling_train_sizes:
            steps = {"lora_matched": models.train_step("lora_matched", size)}
            for routed, label in configs:
                steps[label] = models.train_step("icmoe", size, expert_config(routed))
            train = summarize(interleaved(steps, reps=args.reps, warmup=max(1, args.warmup), device=models.device),
                              "lora_matched")
        for routed, label in configs:
            config = expert_config(routed)
            model = models.get("icmoe", size, config)
            rows.append({
                "image_size": size, "experts": label,
                "routed_experts": config.num_basic_experts + config.num_semantic_experts + config.num_adaptive_experts,
                "top_k": config.num_experts_per_tok,
                "trainable_encoder_params": encoder_trainable_params(model),
                "forward_ratio_to_sam": forward[label]["ratio_to_sam"] if size in args.scaling_sizes else None,
                "forward_s": forward[label]["median_s"] if size in args.scaling_sizes else None,
                "train_ratio_to_lora_matched":
                    train[label]["ratio_to_lora_matched"] if size in args.scaling_train_sizes else None,
                "train_s": train[label]["median_s"] if size in args.scaling_train_sizes else None,
            })
        rows.append({"image_size": size, "experts": "SAM / LoRA matched",
                     "forward_s": forward["sam"]["median_s"] if size in args.scaling_sizes else None,
                     "train_s": train["lora_matched"]["median_s"] if size in args.scaling_train_sizes else None})
        models.release()  # a size's models are not needed again
    return {"forward_batch_size": 1, "train_batch_size": args.train_batch_size, "rows": rows}


def profile_section(models: Models, args) -> dict:
    model = models.get("icmoe", args.image_size)
    handles = layer_ranges(model, IcMoeLayer, LAYER_RANGE)
    try:
        inputs = inputs_for(args.image_size, 1, models.device, models.dtype)
        forward = profile_ranges(forward_fn(model, inputs), models.device, LAYER_RANGE)
        step = models.train_step("icmoe", args.train_image_size)
        if step.model is not model:
            handles += layer_ranges(step.model, IcMoeLayer, LAYER_RANGE)
        train = profile_ranges(step, models.device, LAYER_RANGE)
        step.model.eval()
    finally:
        for handle in handles:
            handle.remove()
    return {"forward": {"image_size": args.image_size, **forward},
            "train_step": {"image_size": args.train_image_size, "batch_size": args.train_batch_size, **train}}


def files_section(models: Models, args, work_dir: Path) -> dict:
    size = args.image_size
    base = Path(models.base(size))
    sam_bytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    sam_params = sum(p.numel() for p in models.get("sam", size, training=True).parameters())
    rows = {"sam_full_checkpoint": {"bytes": sam_bytes, "params": sam_params}}
    for method in ("icmoe", "lora_r4", "lora_matched", "adapter", "adapter_matched", "decoder"):
        model = models.get(method, size, training=True)  # training writes float32 files
        row = {"trainable_params": count_trainable(model), "trainable_encoder_params": encoder_trainable_params(model)}
        row["encoder_share_of_sam"] = row["trainable_encoder_params"] / sam_params
        folder = work_dir / "adapters" / method
        if isinstance(model, IcMoeSamModel):
            written = save_icmoe_adapter(model, folder)
        elif hasattr(model, "peft_config"):
            model.save_pretrained(folder)
            written = list(folder.glob("adapter_model*"))
        else:
            written = []  # decoder-only: its checkpoint is a full SAM
        if written:
            row["adapter_file_bytes"] = sum(Path(f).stat().st_size for f in written if str(f).endswith(".safetensors"))
        rows[method] = row
    return {"image_size": size, "dtype_of_files": "float32", "methods": rows}


def machine(args) -> str:
    if args.device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(args.device))
    import os

    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads; {platform.platform()}"


def run_benchmark(args) -> dict:
    torch.manual_seed(0)
    owned = None
    if args.work_dir is None:
        owned = tempfile.TemporaryDirectory(prefix="icmoe-cost-")
        work_dir = Path(owned.name)
    else:
        work_dir = args.work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
    try:
        models = Models(args, work_dir)
        report = {
            "device": machine(args), "device_type": torch.device(args.device).type, "dtype": args.dtype,
            "torch": torch.__version__, "architecture": "tiny SAM (smoke)" if args.smoke else "SAM ViT-B",
            "attn_implementation": args.attn_implementation or "model default",
            "reps": args.reps, "warmup": args.warmup,
            "command": "python benchmarks/cost.py " + shlex.join(sys.argv[1:]),
        }
        if any(s in args.sections for s in ("forward", "train", "scaling", "files")):
            report["matched_ranks"] = models.matched()
        runners = {"forward": lambda: forward_section(models, args), "train": lambda: train_section(models, args),
                   "profile": lambda: profile_section(models, args),
                   "files": lambda: files_section(models, args, work_dir),
                   "scaling": lambda: scaling_section(models, args)}
        for section in SECTIONS:
            if section in args.sections:
                print(f"[cost] {section}", flush=True)
                report[section] = runners[section]()
                if args.output:  # partial results survive an interrupted run
                    write_json(report, args.output)
        return report
    finally:
        if owned is not None:
            owned.cleanup()


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.report:
        reports = stored_reports()
        if not reports:
            raise SystemExit(f"No cost_*.json in {RESULTS}: run the benchmark first.")
        write_report(reports, args.report_path or DEFAULT_REPORT)
        return None
    threads = torch.get_num_threads()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        report = run_benchmark(args)
    finally:
        torch.set_num_threads(threads)
    if args.output:
        write_json(report, args.output)
    print(json.dumps({k: v for k, v in report.items() if k != "profile"}, indent=1, default=str)[:4000])
    report_path = args.report_path or (None if args.smoke else DEFAULT_REPORT)
    if report_path is not None:
        reports = {} if args.smoke else stored_reports(*([args.output.parent] if args.output else []))
        reports[args.output.name if args.output else "this run (not saved)"] = report
        write_report(reports, report_path)
    return report


if __name__ == "__main__":
    main()
