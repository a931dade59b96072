"""Turn a --device string into a torch.device, or say clearly why it cannot be used."""

from __future__ import annotations

import torch

from keelctl.errors import KeelError


def resolve_device(name: str | None) -> torch.device:
    """None or "auto": CUDA when there is a GPU, else the CPU. Anything else must exist here."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise KeelError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise KeelError(
                f"device {name!r} asked for, but CUDA is not available on this machine; "
                "use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise KeelError(
                f"device {name!r} asked for, but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s); use cuda:0 or cpu"
            )
    elif device.type != "cpu":
        raise KeelError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    return device
