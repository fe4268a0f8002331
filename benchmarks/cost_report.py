"""Renders `benchmarks/cost.py`'s JSON reports as the cost section of docs/BENCHMARKS.md."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.sections import write_section

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
MARK_BEGIN, MARK_END = "<!-- cost:begin -->", "<!-- cost:end -->"


def _ratio(entry: dict | None, key: str) -> str:
    ratio = (entry or {}).get(key)
    if not ratio:
        return "-"
    return f"**{ratio['median']:.2f}x** ({ratio['min']:.2f}-{ratio['max']:.2f})"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:,.1f} {unit}"
    return f"{value} B"


def render_report(report: dict, name: str) -> list[str]:
    head = (f"### {report['device']}, {report['dtype']} ({report['architecture']}, attention "
            f"{report['attn_implementation']})")
    lines = [head, "", f"`{report['command']}` (`{name}`; medians of {report['reps']} interleaved repetitions, "
             "ratios taken repetition by repetition, their range in brackets). Matched ranks: LoRA "
             f"r{report['matched_ranks']['lora_rank']}, adapter r{report['matched_ranks']['adapter_rank']} "
             f"({report['matched_ranks']['icmoe_encoder_params']:,} trainable encoder parameters for IC-MoE).", ""]
    if "forward" in report:
        section = report["forward"]
        lines += [f"Eval forward, {section['image_size']} px, batch 1 (peak memory: weights plus the pass's peak):", "",
                  "| method | time | images/s | / SAM | peak memory |", "|---|---|---|---|---|"]
        lines += [f"| {m} | {_seconds(e['median_s'])} | {e['images_per_s']:.2f} | {_ratio(e, 'ratio_to_sam')}"
                  + (f"; compiled SAM: {_ratio(e, 'ratio_to_sam_compiled')}" if "ratio_to_sam_compiled" in e else "")
                  + f" | {_size(e.get('peak_bytes'))} |" for m, e in section["methods"].items()]
        lines.append("")
    if "train" in report:
        section = report["train"]
        ref = section["reference"]
        lines += [f"Training step (forward, loss, backward, AdamW), {section['image_size']} px, batch "
                  f"{section['batch_size']}; peak memory: {section['peak_memory']}:", "",
                  f"| method | trainable | time | images/s | / {ref} | / lora_r4 | peak memory | / {ref} |",
                  "|---|---|---|---|---|---|---|---|"]
        for m, e in section["methods"].items():
            peak_ratio = e.get(f"peak_ratio_to_{ref}")
            lines.append(f"| {m} | {e['trainable_params']:,} | {_seconds(e['median_s'])} | {e['images_per_s']:.2f} | "
                         f"{_ratio(e, f'ratio_to_{ref}')} | {_ratio(e, 'ratio_to_lora_r4')} | "
                         f"{_size(e['peak_bytes'])} | {'-' if peak_ratio is None else f'{peak_ratio:.2f}x'} |")
        lines.append("")
    if "scaling" in report:
        lines += ["How IC-MoE's cost grows (forward batch 1 against SAM; training step batch "
                  f"{report['scaling']['train_batch_size']} against LoRA matched):", "",
                  "| image size | experts | routed (top-k) | trainable encoder params | forward | / SAM | train step "
                  "| / LoRA matched |", "|---|---|---|---|---|---|---|---|"]
        for row in report["scaling"]["rows"]:
            routed = f"{row['routed_experts']} ({row['top_k']})" if "routed_experts" in row else "-"
            params = f"{row['trainable_encoder_params']:,}" if "trainable_encoder_params" in row else "-"
            lines.append(f"| {row['image_size']} | {row['experts']} | {routed} | {params} | "
                         f"{_seconds(row.get('forward_s'))} | {_ratio(row, 'forward_ratio_to_sam')} | "
                         f"{_seconds(row.get('train_s'))} | {_ratio(row, 'train_ratio_to_lora_matched')} |")
        lines.append("")
    if "profile" in report:
        for what, entry in report["profile"].items():
            share = entry["layer_cpu_share"]
            kernels = entry.get("kernels_per_layer_call")
            lines.append(
                f"Profiler, {what.replace('_', ' ')} at {entry['image_size']} px: {entry['layer_calls']} IC-MoE layer "
                f"calls, {'-' if share is None else f'{share:.1%}'} of the CPU-side time inside them"
                + (" (their forward part: the backward pass runs outside the layers' ranges)" if what == "train_step"
                   else "") + ", "
                f"{entry['ops_per_layer_call']:.0f} operators per call"
                + (f", {kernels:.0f} CUDA kernels per call" if kernels is not None else "")
                + (f", {entry['layer_device_share']:.1%} of the GPU time" if entry.get("layer_device_share") else "")
                + "; most costly inside: " + ", ".join(op["name"] for op in entry["top_ops"][:5]) + ".")
        lines.append("")
    if "files" in report:
        section = report["files"]
        sam = section["methods"]["sam_full_checkpoint"]
        lines += [f"Trainable parameters and adapter-only checkpoints ({section['dtype_of_files']} files; a full SAM "
                  f"checkpoint is {_size(sam['bytes'])} for {sam['params']:,} parameters):", "",
                  "| method | trainable | in the encoder | share of SAM | adapter-only file |", "|---|---|---|---|---|"]
        for m, e in section["methods"].items():
            if m == "sam_full_checkpoint":
                continue
            size = e.get("adapter_file_bytes")
            lines.append(f"| {m} | {e['trainable_params']:,} | {e['trainable_encoder_params']:,} | "
                         f"{e['encoder_share_of_sam']:.2%} | {_size(size) if size else 'full checkpoint'} |")
        lines.append("")
    return lines


def render_section(reports: dict[str, dict]) -> str:
    lines = [MARK_BEGIN, "## Cost", "",
             "Generated by `python benchmarks/cost.py --report` from `benchmarks/results/cost_*.json`; each "
             "subsection gives the command that measured it. Adapter-only files hold the trained mask decoder "
             "too.", ""]
    for name, report in sorted(reports.items()):
        lines += render_report(report, name)
    lines.append(MARK_END)
    return "\n".join(lines) + "\n"


def write_report(reports: dict[str, dict], report_path: Path) -> None:
    section = render_section(reports)
    write_section(report_path, section, MARK_BEGIN, MARK_END)
    print(f"[cost] report in {report_path}", flush=True)


def stored_reports(*folders: Path) -> dict[str, dict]:
    """Every `cost_*.json` of `benchmarks/results` and of `folders`, by file name."""
    paths = [p for folder in (RESULTS, *folders) for p in sorted(Path(folder).glob("cost_*.json"))]
    return {p.name: json.loads(p.read_text()) for p in paths}
