"""The package without its compiled part: KPRUNE_DISABLE_EXT=1, a missing _C, backend reporting."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

import kprune_ext

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, cwd: str = REPO, **env) -> str:
    full_env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, cwd=cwd,
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
                         "gemm_backend", "cuda_kernels"}
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


def cpu_vendor() -> str:
    """The CPU's vendor string as the kernel reports it ("" where /proc/cpuinfo has none)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def test_gemm_backend_env_and_onednn_cache_caps():
    """KPRUNE_GEMM picks the float32 GEMM backend (by default oneDNN on x86 CPUs not made by Intel, MKL on
    Intel's); importing kprune_ext caps oneDNN's caches unless set."""
    if not kprune_ext.EXTENSION_LOADED:
        return
    code = ("import os, kprune_ext; print(kprune_ext.backend_info()['gemm_backend'], "
            "os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], os.environ['LRU_CACHE_CAPACITY'])")
    assert run_python(code, KPRUNE_GEMM="aten").splitlines()[-1] == "aten 16 16"
    has_onednn = torch._C._dispatch_has_kernel_for_dispatch_key("mkldnn::_linear_pointwise", "CPU")
    onednn = "onednn" if has_onednn else "aten"
    assert run_python(code, KPRUNE_GEMM="onednn").splitlines()[-1] == f"{onednn} 16 16"
    vendor = cpu_vendor()
    if platform.machine() in ("x86_64", "AMD64") and vendor:
        want = "aten" if vendor == "GenuineIntel" else onednn
        assert run_python(code, LRU_CACHE_CAPACITY="64").splitlines()[-1] == f"{want} 16 64"
        assert run_python(code, KPRUNE_GEMM="auto").splitlines()[-1] == f"{want} 16 16"


def test_unknown_gemm_env_value_is_refused_by_name():
    out = subprocess.run([sys.executable, "-c", "import kprune_ext"], env={**os.environ, "KPRUNE_GEMM": "mkl"},
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "ValueError: KPRUNE_GEMM='mkl' is not supported" in out.stderr and "'onednn'" in out.stderr


def test_cpu_capability_env_caps_the_instruction_set():
    if not kprune_ext.EXTENSION_LOADED:
        return
    out = run_python("import kprune_ext; print(kprune_ext.backend_info()['cpu_capability'])",
                     KPRUNE_CPU_CAPABILITY="generic")
    assert out == "generic"


def _package_copy(tmp_path, library: bytes | None) -> str:
    """A copy of kprune_ext's Python files in tmp_path, with ``library`` as its _C file (None: not built)."""
    import importlib.machinery
    import shutil

    target = tmp_path / "kprune_ext"
    target.mkdir()
    for name in os.listdir(os.path.join(REPO, "kprune_ext")):
        if name.endswith(".py"):
            shutil.copy(os.path.join(REPO, "kprune_ext", name), target / name)
    if library is not None:
        (target / ("_C" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(library)
    return str(tmp_path)


LOG_LEVELS = """
    import logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s %(message)s")
    # an editable install of the repository would otherwise supply its own kprune_ext._C
    sys.meta_path = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", type(f).__name__)]
    import os, kprune_ext
    assert kprune_ext.__file__.startswith(os.environ["PYTHONPATH"]), kprune_ext.__file__
    from kprune_ext import _loader
    print("state", kprune_ext.EXTENSION_LOADED, _loader.EXTENSION_LOADED, _loader.EXTENSION_ERROR == kprune_ext.EXTENSION_ERROR)
"""


def _loader_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.split(" ")[1:2] == ["kprune_ext"]]


def test_broken_library_is_a_warning_with_the_reason(tmp_path):
    root = _package_copy(tmp_path, b"not a shared library")  # present but cannot be loaded
    out = run_python(LOG_LEVELS, cwd=root, PYTHONPATH=root)
    lines = _loader_lines(out)
    assert len(lines) == 1 and lines[0].startswith("WARNING kprune_ext"), out
    assert "failed to load" in lines[0] and str(tmp_path) in lines[0]
    assert out.splitlines()[-1] == "state False False True"


def test_library_not_built_is_info(tmp_path):
    root = _package_copy(tmp_path, None)
    out = run_python(LOG_LEVELS, cwd=root, PYTHONPATH=root)
    lines = _loader_lines(out)
    assert len(lines) == 1 and lines[0].startswith("INFO kprune_ext") and "not built" in lines[0], out
    assert out.splitlines()[-1] == "state False False True"


def test_disabled_by_env_is_info_even_with_a_broken_library(tmp_path):
    root = _package_copy(tmp_path, b"not a shared library")
    out = run_python(LOG_LEVELS, cwd=root, PYTHONPATH=root, KPRUNE_DISABLE_EXT="1")
    lines = _loader_lines(out)
    assert len(lines) == 1 and lines[0].startswith("INFO kprune_ext") and "KPRUNE_DISABLE_EXT" in lines[0], out


def test_loaded_state_lives_in_the_loader():
    from kprune_ext import _loader
    assert (_loader.EXTENSION_LOADED, _loader.EXTENSION_ERROR) == (kprune_ext.EXTENSION_LOADED,
                                                                   kprune_ext.EXTENSION_ERROR)
