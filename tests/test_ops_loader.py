"""The package without its compiled part: KPRUNE_DISABLE_EXT=1, a missing _C, backend reporting."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import kprune_ext

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, **env) -> str:
    full_env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_disable_env_forces_references():
    out = run_python(
        """
        import torch, kprune_ext
        from kprune_ext import ops
        act = torch.randn(6, 3)
        gs, asq = torch.zeros(3), torch.zeros(3)
        ops.accumulate_importance(act, act, torch.tensor([0, 6]), gs, asq)
        assert torch.allclose(asq, act.square().sum(0))
        x = ops.solve_damped(torch.eye(3), torch.ones(3, 1))
        print(kprune_ext.EXTENSION_LOADED, kprune_ext.backend_info()["reason"], hasattr(torch.ops.kprune, "masked_ffn"))
        """,
        KPRUNE_DISABLE_EXT="1",
    )
    assert out == "False KPRUNE_DISABLE_EXT is set False"


def test_missing_extension_falls_back_with_logged_reason():
    out = run_python(
        """
        import builtins, logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
        real_import = builtins.__import__
        def fake_import(name, globals=None, locals=None, fromlist=(), level=0):
            if name == "kprune_ext" and fromlist and "_C" in fromlist:
                raise ImportError("simulated: no compiled part")
            return real_import(name, globals, locals, fromlist, level)
        builtins.__import__ = fake_import
        import torch, kprune_ext
        from kprune_ext import ops
        out, act = ops.masked_ffn(torch.randn(4, 3), torch.randn(5, 3), None, torch.randn(3, 5), None,
                                  torch.tensor([0, 2]), torch.ones(2), "relu")
        print("loaded", kprune_ext.EXTENSION_LOADED, tuple(out.shape))
        """
    )
    assert "simulated: no compiled part" in out
    assert out.splitlines()[-1] == "loaded False (4, 3)"


def test_backend_info_shape():
    info = kprune_ext.backend_info()
    assert set(info) == {"extension_loaded", "disabled_by_env", "reason", "cpu_capability", "cpu_threads",
                         "cuda_kernels"}
    assert info["extension_loaded"] == kprune_ext.EXTENSION_LOADED
    if kprune_ext.EXTENSION_LOADED:
        assert info["cpu_capability"] in ("generic", "avx2", "avx512")
        assert info["cuda_kernels"] == torch._C._dispatch_has_kernel_for_dispatch_key("kprune::masked_ffn", "CUDA")
    else:
        assert info["reason"]


@pytest.mark.skipif(not kprune_ext.EXTENSION_LOADED, reason="compiled extension not loaded")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the extension is built with OpenMP on Linux only")
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_kernels_use_the_threads_torch_is_given(threads):
    """A build without OpenMP runs every at::parallel_for on one thread, whatever torch says."""
    out = run_python(f"""
        import torch, kprune_ext
        torch.set_num_threads({threads})
        print(torch.get_num_threads(), kprune_ext.backend_info()["cpu_threads"])
    """)
    assert out.splitlines()[-1] == f"{threads} {threads}"


def test_cpu_capability_env_caps_the_instruction_set():
    if not kprune_ext.EXTENSION_LOADED:
        return
    out = run_python("import kprune_ext; print(kprune_ext.backend_info()['cpu_capability'])",
                     KPRUNE_CPU_CAPABILITY="generic")
    assert out == "generic"
