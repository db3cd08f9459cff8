"""Data-parallel training under torchrun: joining the process group, wrapping the models in DDP
with synced BatchNorm, and the few collectives the trainer needs. With one process (no group,
or a group of one) every helper is a no-op, so single-process training is unchanged."""
import atexit
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from fastgan.nn import convert_sync_batchnorm


def _active():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def setup(device):
    """(device, rank, world_size) of this process. Joins the process group that torchrun's
    environment describes (WORLD_SIZE > 1) unless one exists already: NCCL on CUDA, gloo on the
    CPU. Under a group a CUDA device without an index becomes cuda:LOCAL_RANK."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_available() or not dist.is_initialized() and world_size <= 1:
        return device, 0, 1
    if device.type == "cuda" and device.index is None:
        local_rank = os.environ.get("LOCAL_RANK")
        device = torch.device("cuda", int(local_rank) if local_rank is not None
                              else dist.get_rank() % torch.cuda.device_count())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        atexit.register(leave_process_group)
    return device, dist.get_rank(), dist.get_world_size()


def leave_process_group():
    """Destroys the default process group, then sleeps 0.1 s. A gloo worker thread drops a
    finished collective's tensors after wait() has returned; dropping a tensor that Python still
    knows needs the GIL, and a thread that asks for the GIL while the interpreter shuts down
    aborts the process (SIGABRT, pytorch/pytorch#190489). The group itself may outlive this call,
    since DDP keeps references to it. The sleep releases the GIL so those threads can finish
    before the process exits."""
    if dist.is_initialized():
        dist.destroy_process_group()
        time.sleep(0.1)


def wrap(model, device):
    """`model` itself with one process; else DDP around it, its BatchNorm layers converted to
    synced ones in place (so the module keeps its state_dict keys)."""
    if not _active():
        return model
    convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def every_parameter_term(outputs):
    """With several processes 0 * outputs.sum(): no gradient, but every parameter behind
    `outputs` joins the backward. DDP needs that of a backward from an R1 penalty alone, which
    does not reach e.g. the last layer's bias (pytorch/pytorch#47562); that bias then gets a zero
    gradient (an Adam step on its momentum) where one process leaves it alone. Else 0."""
    return outputs.float().sum() * 0 if _active() else 0


def all_ranks(flag):
    """Whether `flag` (a bool or a one-element tensor) holds on every rank."""
    if not _active():
        return bool(flag)
    agreed = torch.tensor([int(bool(flag))], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return bool(agreed.item())


def any_rank(flag):
    return not all_ranks(not flag)


def mean_over_ranks(values):
    """A dict of numbers averaged over the ranks (the same keys on every rank)."""
    if not _active() or not values:
        return values
    keys = sorted(values)
    totals = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64,
                          device=_collective_device())
    dist.all_reduce(totals)
    return dict(zip(keys, (totals / dist.get_world_size()).tolist()))


def gather(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
    if not _active():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_on_rank_0(obj):
    """[obj of rank 0, obj of rank 1, ...] on rank 0 and None on the others (picklable
    objects): for what rank 0 alone needs, as every rank's part of a checkpoint, without a copy
    of everything on every rank."""
    if not _active():
        return [obj]
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def barrier():
    if _active():
        dist.barrier()


def _collective_device():
    return (torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl" else torch.device("cpu"))
