"""The world a run trains in: how many processes the launcher started, on which device, and the checks that the
Accelerator joined all of them.

Accelerate starts several processes on one machine through torchrun for its multi-device types only; a `MULTI_CPU`
configuration, or `accelerate launch --cpu`, starts a single process unless an MPI hostfile is given. The project's
CPU configurations therefore use torchrun (`distributed_type: MULTI_GPU`), and a world launched that way on a machine
without an accelerator joins over gloo on the CPU instead of leaving every process to train alone and write the same
output folder.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import torch

# What launchers set: torchrun (WORLD_SIZE), Intel MPI / MPICH (PMI_SIZE), Open MPI, MVAPICH.
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_world_size(env: Mapping[str, str] = os.environ) -> int:
    """The number of processes the launcher started (1 without a launcher)."""
    for name in WORLD_SIZE_VARIABLES:
        if env.get(name):
            return int(env[name])
    return 1


def has_accelerator_device() -> bool:
    """Whether a GPU-like device (CUDA, XPU, MPS, ...) is present for the processes to train on."""
    if hasattr(torch, "accelerator"):  # torch >= 2.6
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def single_process_launch_problem(env: Mapping[str, str] = os.environ) -> str | None:
    """Why a launch that asked for several processes started only this one, or None.

    Accelerate's plain launcher (used with `--cpu`, or for a `MULTI_CPU` configuration without `mpirun_hostfile`)
    starts one process whatever `--num_processes` says; it sets `MASTER_ADDR` only when more processes or machines
    were asked for, and a process started by torchrun or MPI has a world size in its environment.
    """
    if "ACCELERATE_USE_CPU" not in env or "MASTER_ADDR" not in env:
        return None
    if "LOCAL_RANK" in env or any(env.get(name) for name in WORLD_SIZE_VARIABLES):
        return None
    return (
        "accelerate launch was asked for several processes or machines but started one: with --cpu, or with a "
        "MULTI_CPU configuration and no mpirun hostfile, Accelerate runs a single process. Launch without --cpu and "
        "with configuration/accelerate/cpu_2proc.yaml (torchrun; on a machine without a GPU the processes join over "
        "gloo on the CPU; add --use_cpu to training/run.py to stay on the CPU where GPUs are present), or give "
        "--num_processes 1."
    )


def accelerator_device_kwargs(use_cpu: bool, env: Mapping[str, str] = os.environ) -> dict:
    """`Accelerator(cpu=...)`: on the CPU when asked, or when a launcher started several processes and no GPU-like
    device is present (otherwise Accelerate would leave each of them alone in a world of 1)."""
    problem = single_process_launch_problem(env)
    if problem:
        raise RuntimeError(problem)
    return {"cpu": use_cpu or (launched_world_size(env) > 1 and not has_accelerator_device())}


def check_world(accelerator, env: Mapping[str, str] = os.environ) -> None:
    """Raises unless the Accelerator's world is the one the launcher started: processes that each train alone would
    train the same model separately and overwrite one another's files."""
    launched = launched_world_size(env)
    if accelerator.num_processes != launched:
        raise RuntimeError(
            f"The launcher started {launched} processes, but the Accelerator formed a world of "
            f"{accelerator.num_processes} ({accelerator.distributed_type}); each process would train alone and write "
            "the same output folder. Check the launch configuration (configuration/accelerate/)."
        )


def num_machines(accelerator, env: Mapping[str, str] = os.environ) -> int:
    """How many machines the world spans (torchrun's processes per machine, LOCAL_WORLD_SIZE, divide the world)."""
    per_machine = int(env.get("LOCAL_WORLD_SIZE") or accelerator.num_processes)
    return max(1, accelerator.num_processes // per_machine)


def weights_agree_across_processes(model, accelerator) -> bool | None:
    """Whether every process holds bit-identical trained weights (None with one process, or where each process holds
    only its shard). Data-parallel replicas that drift apart (a gradient that was not synchronised) train different
    models while the main process saves only its own, so a run checks this at its end."""
    from accelerate.utils import DistributedType, gather_object

    if accelerator.num_processes == 1 or accelerator.distributed_type == DistributedType.FSDP:
        return None
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return len(set(gather_object([digest.hexdigest()]))) == 1


def local_parameter_counts(model, accelerator) -> list[int]:
    """The number of parameter values each process holds (with FSDP, its shard), gathered from every process. Read
    it right after `prepare`: FSDP2 keeps the root module's parameters gathered after a forward pass."""
    from accelerate.utils import gather_object

    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
    return [int(count) for count in gather_object([local])]


def world_info(accelerator, model, parameters_per_process: list[int]) -> dict:
    """The world the run trained in, as the run itself saw it (recorded in eval_results.json and the card). Every
    process must call it: it gathers from all of them."""
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    return {
        "num_processes": accelerator.num_processes,
        "num_machines": num_machines(accelerator),
        "distributed_type": str(accelerator.distributed_type).split(".")[-1],
        "process_group_backend": backend,
        "device_type": accelerator.device.type,
        "parameters_per_process": parameters_per_process,
        "weights_agree_across_processes": weights_agree_across_processes(model, accelerator),
    }


def fsdp_requested(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the launch configuration asked for FSDP (`distributed_type: FSDP` sets ACCELERATE_USE_FSDP)."""
    return env.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def enable_fsdp_on_cpu(accelerator, env: Mapping[str, str] = os.environ) -> None:
    """Makes an FSDP launch shard on a CPU world too.

    Accelerate turns an FSDP configuration into FSDP only on GPU-like devices; on CPU processes it would silently
    train data-parallel copies instead. FSDP2 (`fully_shard`) itself runs on gloo, so the CPU world is switched to
    Accelerate's FSDP path: the same preparation, checkpoints and state-dict gathering as on GPUs, which is what lets
    the FSDP path be tested on a machine without one.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if not fsdp_requested(env) or accelerator.distributed_type == DistributedType.FSDP:
        return
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        raise RuntimeError(
            f"The launch configuration asks for FSDP, but Accelerate set up {accelerator.distributed_type} on "
            f"{accelerator.device}; FSDP needs several processes (check num_processes)."
        )
    plugin = FullyShardedDataParallelPlugin()  # read from the launch configuration (FSDP_* variables)
    if plugin.fsdp_version != 2:
        raise RuntimeError("On CPU processes FSDP runs as FSDP2 only: set fsdp_version: 2 in the configuration.")
    if accelerator.mixed_precision != "no":
        raise RuntimeError("FSDP on CPU processes trains in float32: launch it with --mixed_precision no.")
    # Both shared states, as AcceleratorState's own set-up records it: later lookups read either.
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def finish_collectives(accelerator):
    """Waits for every process at the end of a run and returns the last collective's work, for the caller to hold
    until the process group is destroyed.

    A gloo worker thread that drops the last reference to a finished work frees its tensors, which needs the GIL. If
    the main thread destroys the process group (and joins those threads, holding the GIL) within the few milliseconds
    before a worker got the GIL, both wait forever: seen as a process that never exits after a run had finished.
    Holding the work here keeps its last reference in Python, so the workers have nothing left to free.
    """
    if not torch.distributed.is_initialized():
        accelerator.wait_for_everyone()
        return None
    work = torch.distributed.barrier(async_op=True)
    work.wait()
    return work
