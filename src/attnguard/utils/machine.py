"""A one-line description of the machine a number was measured on."""

from __future__ import annotations

import os
import platform

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device=None) -> dict:
    """CPU model and cores, torch version and threads, and the GPU when ``device`` is CUDA."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(dev)
    info["device"] = str(dev) if dev is not None else "cpu"
    return info


def machine_line(info: dict) -> str:
    where = info.get("gpu") or f"{info.get('cpu')} ({info.get('cores')} cores, {info.get('threads')} threads)"
    return f"{where}, torch {info.get('torch')}"
