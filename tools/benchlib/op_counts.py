"""What one step costs beyond its time: the ops that reach a backend (views and host syncs
marked), the Python calls made, and on cuda the kernels run and CUDA runtime calls (bench_eager)."""
from __future__ import annotations

import collections
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ops after which the host waits for the device (on cuda): .item()/bool(tensor), nonzero/argwhere, copy to host
SYNC_OPS = ("_local_scalar_dense", "nonzero", "is_nonzero", "item")


class OpCounter(TorchDispatchMode):
    """Every op that reaches a backend (below autograd), by name; views marked."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.views = 0
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket).removeprefix("aten::")
        if getattr(func, "is_view", False):
            self.views += 1
            name += " (view)"
        if name in SYNC_OPS:
            self.syncs += 1
        elif name in ("copy_", "_to_copy") and _to_host(func, args, kwargs):
            self.syncs += 1
            name += " (to host)"
        self.ops[name] += 1
        return func(*args, **kwargs)


def _to_host(func, args, kwargs) -> bool:
    try:
        if str(func.overloadpacket).endswith("copy_"):
            dst, src = args[0], args[1]
            return dst.device.type == "cpu" and src.device.type != "cpu"
        device = kwargs.get("device")
        return device is not None and torch.device(device).type == "cpu" and args[0].device.type != "cpu"
    except Exception:
        return False


def count_python_calls(fn) -> int:
    calls = [0]

    def prof(frame, event, arg):
        if event == "call":
            calls[0] += 1
    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls[0]


def count_device_work(fn, device: torch.device) -> dict:
    """cuda: kernels run and CUDA runtime calls made by one step (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    kernels, runtime = collections.Counter(), collections.Counter()
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name] += 1
        elif event.name.startswith("cuda") or event.name.startswith("cu"):
            runtime[event.name] += 1
    launches = sum(v for k, v in runtime.items() if "Launch" in k)
    syncs = sum(v for k, v in runtime.items() if "Synchronize" in k or k.startswith("cudaMemcpy") and "Async" not in k)
    return {"device_kernels": sum(kernels.values()), "cuda_launches": launches, "cuda_sync_calls": syncs,
            "cuda_runtime_calls": dict(runtime.most_common()), "kernel_names": dict(kernels.most_common(30))}
