"""kprune's compiled core: ops in ``kprune_ext.ops``, pure-PyTorch references in ``kprune_ext.reference``.

``EXTENSION_LOADED`` tells whether the compiled ops (torch.ops.kprune.*) are available; when they are
not (not built, failed to load, or ``KPRUNE_DISABLE_EXT=1``), every op runs its reference and
``EXTENSION_ERROR`` says why (both recorded in ``kprune_ext._loader``, which ``ops`` reads too).
``backend_info()`` reports what is in use.
"""
from __future__ import annotations

from kprune_ext import _loader

EXTENSION_LOADED, EXTENSION_ERROR = _loader.load()

from kprune_ext import ops, reference  # noqa: E402  (ops registers fake/autograd kernels once loaded)


def backend_info() -> dict:
    """Which implementation runs: {'extension_loaded', 'disabled_by_env', 'reason', 'cpu_capability',
    'cpu_threads', 'gemm_backend', 'cuda_kernels'}.

    cpu_capability is the instruction set of the CPU kernels (avx512, avx2 or generic), chosen at run
    time from the CPU's features and capped by ``KPRUNE_CPU_CAPABILITY``; cpu_threads is how many
    threads a parallel CPU kernel uses now (torch.get_num_threads() when the build has OpenMP);
    gemm_backend is what the ops' float32 CPU GEMMs run on ("onednn" or "aten", ``kprune_ext.ops.gemm_backend``);
    cuda_kernels tells whether CUDA implementations are registered.
    """
    import torch

    info = {
        "extension_loaded": EXTENSION_LOADED,
        "disabled_by_env": _loader.disabled_by_env(),
        "reason": EXTENSION_ERROR,
        "cpu_capability": None,
        "cpu_threads": None,
        "gemm_backend": None,
        "cuda_kernels": False,
    }
    if EXTENSION_LOADED:
        info["cpu_capability"] = torch.ops.kprune.cpu_capability()
        info["cpu_threads"] = torch.ops.kprune.cpu_threads_used()
        info["gemm_backend"] = torch.ops.kprune.gemm_backend()
        info["cuda_kernels"] = torch._C._dispatch_has_kernel_for_dispatch_key("kprune::masked_ffn", "CUDA")
    return info


__all__ = ["EXTENSION_LOADED", "EXTENSION_ERROR", "backend_info", "ops", "reference"]
