"""Starting a data-parallel run under torchrun (detectron2's ``launch`` covers ``--num-gpus``)."""
import os

import torch
import torch.distributed as dist
from detectron2.utils import comm

from .detectron2_compat import set_local_process_group


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ)


def init_torchrun_process_group() -> None:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, gloo on CPU) and
    set up detectron2's per-machine group, as detectron2's launch does for the processes it spawns."""
    has_gpu = torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if has_gpu else "gloo")
    per_machine = int(os.environ["LOCAL_WORLD_SIZE"])
    machine = dist.get_rank() // per_machine
    for i in range(dist.get_world_size() // per_machine):
        group = dist.new_group(list(range(i * per_machine, (i + 1) * per_machine)))
        if i == machine:
            set_local_process_group(group)
    if has_gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    comm.synchronize()


def check_replicas_identical(model: torch.nn.Module) -> None:
    """Raise unless every process holds the same weights (data-parallel training averages gradients,
    so replicas that diverge mean a process did not step or a gradient was not reduced)."""
    sums = [float(p.detach().double().sum()) for p in model.state_dict().values() if p.is_floating_point()]
    all_sums = comm.all_gather(sums)
    differing = [rank for rank, other in enumerate(all_sums) if other != all_sums[0]]
    if differing:
        raise RuntimeError(f"model weights of processes {differing} differ from those of process 0")
