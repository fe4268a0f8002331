"""Many processes as users start them: `accelerate launch` with the project's configurations, real gloo worlds of two
CPU processes (DDP, FSDP2, two "machines" on loopback), every run's world size read back from its own results file.

Cheap checks first (the launch rules, the objective through a wrapper, a gradient for every trained parameter), then
the launches, each a few training steps of the tiny SAM.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import CONFIGS, REPO, TIMEOUT, child_env, launch as _launch, log as _log, results as _results
from helpers import train_args as _train_args
from remote_code import run_without_package
from training.distributed import (
    accelerator_device_kwargs,
    has_accelerator_device,
    launched_world_size,
    num_machines,
    single_process_launch_problem,
)


# ------------------------------------------------------------------------------------------------ launch rules
@pytest.mark.parametrize(
    "env, world",
    [
        ({}, 1),
        ({"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, 2),  # torchrun
        ({"OMPI_COMM_WORLD_SIZE": "4"}, 4),  # Open MPI
        ({"PMI_SIZE": "3"}, 3),  # Intel MPI / MPICH
    ],
)
def test_launched_world_size(env, world):
    assert launched_world_size(env) == world


def test_a_single_process_started_for_several_is_refused():
    # What `accelerate launch --cpu --num_processes 2` hands its one process.
    simple = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert "started one" in single_process_launch_problem(simple)
    with pytest.raises(RuntimeError, match="--cpu, or with a MULTI_CPU configuration and no mpirun hostfile"):
        accelerator_device_kwargs(False, simple)
    # One process asked for (no MASTER_ADDR), torchrun's processes and MPI's are fine.
    assert single_process_launch_problem({"ACCELERATE_USE_CPU": "True"}) is None
    assert single_process_launch_problem({**simple, "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) is None
    assert single_process_launch_problem({**simple, "PMI_SIZE": "2"}) is None


def test_processes_without_a_gpu_join_on_the_cpu():
    torchrun = {"WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    assert accelerator_device_kwargs(False, torchrun) == {"cpu": not has_accelerator_device()}
    assert accelerator_device_kwargs(True, {}) == {"cpu": True}
    assert accelerator_device_kwargs(False, {}) == {"cpu": False}


def test_num_machines_from_the_processes_per_machine():
    from types import SimpleNamespace

    assert num_machines(SimpleNamespace(num_processes=4), {"LOCAL_WORLD_SIZE": "2"}) == 2
    assert num_machines(SimpleNamespace(num_processes=2), {}) == 1


# ------------------------------------------------------------------------------------- the objective, wrapped
def _batch(images, boxes, masks):
    return {"pixel_values": images, "input_boxes": boxes, "multimask_output": False}, masks.unsqueeze(1)  # (B, 1, H, W)


def test_the_objective_is_chosen_inside_a_wrapper(tiny_base_dir, images, boxes, masks):
    """DDP, FSDP1 and DataParallel wrap the model; the IC-MoE objective must still be the one trained."""
    from training.methods import build_model, load_icmoe_config, model_loss

    model = build_model("icmoe", str(tiny_base_dir), icmoe_config=load_icmoe_config(None, {}), lora_rank=4,
                        adapter_rank=8)
    inputs, labels = _batch(images, boxes, masks)
    _, plain_loss, plain_terms = model_loss(model, inputs, labels)
    _, wrapped_loss, wrapped_terms = model_loss(torch.nn.DataParallel(model), inputs, labels)
    assert set(wrapped_terms) == {"dice", "bce", "iou", "load_balance", "router_z", "vote", "pixel", "contrastive"}
    assert wrapped_terms["load_balance"] > 0 and wrapped_terms["pixel"] > 0
    assert wrapped_loss.item() == pytest.approx(plain_loss.item(), abs=1e-6)


@pytest.mark.parametrize("method", ["icmoe", "icmoe_no_aux", "lora", "adapter", "decoder", "full"])
def test_every_trained_parameter_gets_a_gradient(tiny_base_dir, images, boxes, masks, method):
    """DDP stops at the second step when a trained parameter got no gradient in the first ("did not receive grad"):
    every method's loss must reach all of its trained parameters, also with every auxiliary loss weighted 0 and the
    pixel votes off (the experts' pixel heads then reach the loss only through their zero-weight terms)."""
    from training.methods import build_model, load_icmoe_config, model_loss

    overrides = {"pixel_vote_weight": 0.0}
    if method == "icmoe_no_aux":
        overrides.update(router_aux_loss_coef=0.0, pixel_loss_coef=0.0, vote_loss_coef=0.0, router_z_loss_coef=0.0)
    model = build_model(method.removesuffix("_no_aux"), str(tiny_base_dir),
                        icmoe_config=load_icmoe_config(None, overrides), lora_rank=4, adapter_rank=8)
    inputs, labels = _batch(images, boxes, masks)
    _, loss, _ = model_loss(model, inputs, labels)
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert sum(p.requires_grad for p in model.parameters()) > 0


# ------------------------------------------------------------------------------------------------- launches
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _preset(tmp_path, **changes) -> str:
    preset = json.loads((REPO / "configuration" / "icmoe" / "default.json").read_text())
    preset.update(changes)
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(preset))
    return str(path)


@pytest.mark.slow
def test_two_processes_train_the_whole_objective(tmp_path, tiny_base_dir, blob_dataset_dir):
    """The CI configuration forms a world of 2 (read back from the run), trains every IC-MoE term (defaults: pixel
    votes off, so the pixel heads reach the loss only through the pixel loss) and ends with identical replicas."""
    out = tmp_path / "ddp"
    result = _launch(["--config_file", str(CONFIGS / "cpu_2proc.yaml")],
                     _train_args(tiny_base_dir, blob_dataset_dir, out, "--max_train_steps", "3",
                                 "--contrastive_loss_coef", "0.01"), tmp_path)
    saved = _results(out)
    assert saved["num_processes"] == 2 and saved["num_machines"] == 1
    assert (saved["distributed_type"], saved["process_group_backend"]) == ("MULTI_CPU", "gloo")
    assert saved["weights_agree_across_processes"] is True
    # Every process holds the whole model under DDP.
    assert saved["parameters_per_process"][0] == saved["parameters_per_process"][1]
    assert saved["n_images"] == 4 and saved["train_steps"] == 3  # 4 eval images gathered once each
    assert "zero-shot base" in result.stdout
    log = _log(out)
    assert [record["step"] for record in log] == [1, 2, 3]  # written by one process
    for name in ("load_balance", "pixel", "contrastive", "router_z", "vote"):
        assert all(name in record["loss_terms"] for record in log), name
    assert all(record["loss_terms"]["load_balance"] > 0 and record["loss_terms"]["pixel"] > 0 for record in log)
    assert any(record["loss_terms"]["contrastive"] > 0 for record in log)
    card = (out / "README.md").read_text()
    assert "| Processes | 2 processes on 1 machine (MULTI_CPU, gloo, cpu); weights identical on every process" in card
    assert "2 per device x 1 accumulation x 2 processes = 4" in card


# Summed over different orders (a mean of 4 objects against the mean of two processes' means of 2; gradients
# all-reduced): float32 rounding, about 1e-7 on terms of order 1, measured up to 1.2e-7 over six steps.
FLOAT_NOISE = 1e-6


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, tiny_base_dir, blob_dataset_dir):
    """Same global batch (2 x 2 against 1 x 4), seed and data order, no random prompt or router jitter: the loss
    curves agree within float noise. The load-balancing term is computed on each process's own tokens by design
    (as Switch and Mixtral compute it per device), so it differs between the runs; with its weight 0 nothing else
    does, step after step."""
    preset = _preset(tmp_path, router_jitter_noise=0.0, router_aux_loss_coef=0.0)
    common = ("--max_train_steps", "3", "--box_jitter", "0", "--icmoe_config", preset, "--no_zeroshot_eval")
    two, one = tmp_path / "two", tmp_path / "one"
    _launch(["--config_file", str(CONFIGS / "cpu_2proc.yaml")], _train_args(tiny_base_dir, blob_dataset_dir, two, *common),
            tmp_path)
    _launch(["--config_file", str(CONFIGS / "cpu.yaml")],
            _train_args(tiny_base_dir, blob_dataset_dir, one, *common, "--per_device_train_batch_size", "4"), tmp_path)
    assert (_results(two)["num_processes"], _results(one)["num_processes"]) == (2, 1)
    for first, second in zip(_log(one), _log(two), strict=True):
        assert first["loss"] == pytest.approx(second["loss"], abs=FLOAT_NOISE), first["step"]
        for name, value in first["loss_terms"].items():
            if name != "load_balance":  # per process by design
                assert value == pytest.approx(second["loss_terms"][name], abs=FLOAT_NOISE), (first["step"], name)


@pytest.mark.slow
def test_cpu_flag_with_several_processes_is_refused(tmp_path, tiny_base_dir, blob_dataset_dir):
    """`accelerate launch --cpu --num_processes 2` starts one process: the run says so instead of training alone."""
    out = tmp_path / "refused"
    result = _launch(["--cpu", "--num_processes", "2"],
                     _train_args(tiny_base_dir, blob_dataset_dir, out, "--max_train_steps", "1"), tmp_path, check=False)
    assert result.returncode != 0
    assert "accelerate launch was asked for several processes or machines but started one" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_two_machines_on_loopback(tmp_path, tiny_base_dir, blob_dataset_dir):
    """The multi-node configuration, run as machine ranks 0 and 1 on 127.0.0.1, each from its own folder (as two
    machines with their own disks run the same command): one world of 2 over 2 machines, identical weights on both,
    and one complete output folder, on machine 0."""
    port = _free_port()
    launch = ["--config_file", str(CONFIGS / "multi_node.yaml"), "--num_processes", "2", "--num_machines", "2",
              "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
    train = _train_args(tiny_base_dir, blob_dataset_dir, "outputs/run", "--max_train_steps", "2")
    machines = [tmp_path / "machine0", tmp_path / "machine1"]
    for folder in machines:
        folder.mkdir()
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    second = subprocess.Popen([*command, *launch, "--machine_rank", "1", str(REPO / "training" / "run.py"), *train],
                              env=child_env(), cwd=machines[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        _launch([*launch, "--machine_rank", "0"], train, machines[0])
        _, stderr = second.communicate(timeout=TIMEOUT)
    finally:
        second.kill()
    assert second.returncode == 0, stderr[-4000:]
    out = machines[0] / "outputs" / "run"
    saved = _results(out)
    assert (saved["num_processes"], saved["num_machines"]) == (2, 2)
    assert saved["weights_agree_across_processes"] is True
    for name in ("model.safetensors", "README.md", "config.json", "train_log.jsonl", "adapter"):
        assert (out / name).exists(), name
    assert [record["step"] for record in _log(out)] == [1, 2]
    other = machines[1] / "outputs" / "run"
    assert not other.exists() or not any(other.iterdir())


FSDP_LAUNCH = ["--config_file", str(CONFIGS / "fsdp.yaml"), "--num_processes", "2", "--mixed_precision", "no"]


@pytest.mark.slow
def test_fsdp2_shards_checkpoints_resumes_and_saves_a_loadable_model(tmp_path, tiny_base_dir, blob_dataset_dir):
    """The FSDP configuration on two CPU processes: parameters sharded (each process holds part of them), sharded
    checkpoints that resume to the same weights, a final model saved with the model's own remote code (not torch's
    FSDP classes) that loads in a fresh process without this package, and a push dry run of that folder."""
    common = ("--max_train_steps", "4", "--checkpointing_steps", "2", "--no_zeroshot_eval")
    full = tmp_path / "full"
    result = _launch(FSDP_LAUNCH, _train_args(tiny_base_dir, blob_dataset_dir, full, *common, "--push_to_hub",
                                              "--hub_model_id", "org/icmoe-fsdp", "--dry_run"), tmp_path)
    saved = _results(full)
    assert (saved["num_processes"], saved["distributed_type"]) == (2, "FSDP")
    total = sum(tensor.numel() for tensor in load_file(full / "model.safetensors").values())
    shards = saved["parameters_per_process"]
    assert sum(shards) == total and all(0 < shard < total for shard in shards), (shards, total)
    assert saved["weights_agree_across_processes"] is None  # no process holds the whole model to compare
    # Sharded checkpoints: each process's part of the model, not one gathered file.
    step_2 = full / "checkpoints" / "step_2"
    assert len(list((step_2 / "pytorch_model_fsdp_0").glob("*.distcp"))) == 2

    config = json.loads((full / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_icmoe_sam.IcMoeSamModel"
    assert not list(full.glob("_fsdp*.py"))
    assert "Dry run: would push" in result.stdout and "modeling_icmoe_sam.py" in result.stdout
    assert "_fsdp" not in result.stdout

    resumed = tmp_path / "resumed"
    shutil.copytree(step_2, resumed / "checkpoints" / "step_2")
    _launch(FSDP_LAUNCH, _train_args(tiny_base_dir, blob_dataset_dir, resumed, *common, "--resume_from_checkpoint",
                                     "latest"), tmp_path)
    expected, actual = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    _load_by_remote_code_without_package(full, tmp_path)


def _load_by_remote_code_without_package(folder: Path, tmp_path: Path) -> None:
    run_without_package(
        f"""
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        saved = load_file({str(folder / "model.safetensors")!r})
        state = model.state_dict()
        assert all(torch.equal(state[key], value) for key, value in saved.items())
        with torch.no_grad():
            masks = model(pixel_values=torch.zeros(1, 3, 64, 64), input_boxes=torch.tensor([[[4.0, 4.0, 40.0, 40.0]]]))
        assert masks.pred_masks.isfinite().all()
        """,
        tmp_path,
    )
