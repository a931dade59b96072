"""torch.compile per Block ("regional" compilation, as torchtitan compiles each
TransformerBlock): every block of a depth has the same code and shapes, so Dynamo traces one
block and reuses the compiled code for the others; compile time does not grow with depth, as
it does when the whole model is compiled (Dynamo unrolls the loop over blocks).

    compile_blocks(model)   # in place; after activation checkpointing, before FSDP sharding
"""

from __future__ import annotations

import torch

from keelctl.errors import KeelError
from keelctl.model import Transformer


def compile_blocks(model: Transformer) -> Transformer:
    """Compile every block's forward in place: parameter names and checkpoints are those of
    the plain model, and module hooks (FSDP2's gathers) stay outside the compiled code. The
    embedding, final norm, head and loss stay eager."""
    for block in model.blocks:
        block.forward = torch.compile(block.forward)
    return model


def check_compile_available(device_type: str) -> None:
    """One-line KeelError where torch.compile's inductor backend cannot run on `device_type`."""
    why = _inductor_missing(device_type)
    if why:
        raise KeelError(
            f"trainer.compile is on but torch.compile cannot run here ({why}); "
            "set trainer.compile=false"
        )


def _inductor_missing(device_type: str) -> str | None:
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return f"torch {torch.__version__} has no Dynamo for this Python"
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "inductor needs Triton for CUDA, and it is not installed"
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except (RuntimeError, OSError) as e:
        return f"inductor needs a C++ compiler for CPU code: {str(e).splitlines()[0]}"
    return None
