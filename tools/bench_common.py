"""What the benchmarks share: a description of the machine for their JSON results."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from pathlib import Path


def machine_info() -> dict:
    """Host, CPU model, cores, kernel, Python, the GPU (nvidia-smi) when there is one, and the date."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True)
        gpu = out.stdout.strip() or None
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "gpu": gpu,
            "kernel": platform.release(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}
