"""Where and how a run ran: recorded in ``config.yaml`` (``resolved.provenance``) and shown in the
report, so a result can be traced to its code, its hardware and its command."""

from __future__ import annotations

import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["device_name", "git_commit", "provenance"]


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model (from /proc/cpuinfo where there is one)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def git_commit() -> str:
    """The commit of the eqcryo source that runs ("+ changes" when the tree differs from it), or
    "not a git checkout" for an installed package."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if sha.returncode != 0:
            return "not a git checkout"
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "."],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "not a git checkout"
    return sha.stdout.strip() + (" + changes" if dirty else "")


def provenance(device: str, world_size: int, command: str | None) -> dict[str, Any]:
    """The facts of this process's run: processes, device, threads, versions, commit, host, command."""
    from .. import __version__

    return {"world_size": world_size, "device": device, "device_name": device_name(device),
            "threads": torch.get_num_threads(), "eqcryo": __version__, "git_commit": git_commit(),
            "torch": str(torch.__version__), "python": platform.python_version(), "host": socket.gethostname(),
            "command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
