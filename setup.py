"""Build kprune (pure Python, python/kprune) and kprune_ext (with its compiled part kprune_ext._C).

The CUDA sources (csrc/cuda) are compiled when torch is a CUDA build and a CUDA toolkit is found
(CUDA_HOME); otherwise the extension is CPU-only and setup prints why.
Environment switches for the compiled part:
  KPRUNE_NO_EXT=1          build no extension (the package then runs the PyTorch references)
  KPRUNE_FORCE_CPU_ONLY=1  never compile the CUDA sources
  MAX_JOBS=N               parallel compile jobs (ninja)
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _extensions():
    if _flag("KPRUNE_NO_EXT"):
        print("kprune: KPRUNE_NO_EXT=1, not building kprune_ext._C (references will be used)")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as exc:  # built without torch present (e.g. isolated build)
        print(f"kprune: torch is not importable ({exc}); not building kprune_ext._C. "
              "Use `pip install --no-build-isolation .` to build it.")
        return [], {}

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    with_cuda = False
    if _flag("KPRUNE_FORCE_CPU_ONLY"):
        print("kprune: KPRUNE_FORCE_CPU_ONLY=1, skipping the CUDA sources")
    elif torch.version.cuda is None:
        print(f"kprune: torch {torch.__version__} is a CPU build, skipping the CUDA sources")
    elif CUDA_HOME is None:
        print("kprune: no CUDA toolkit found (CUDA_HOME), skipping the CUDA sources")
    else:
        with_cuda = True

    define_macros = [("KPRUNE_PYTHON_MODULE", None)]
    # -fopenmp: at::parallel_for is an OpenMP pragma in ATen's headers; without it every kernel runs
    # on one thread. At run time the OpenMP runtime torch already loaded (libgomp.so.1) is reused.
    # (Linux/GCC; elsewhere the kernels build single-threaded, backend_info()["cpu_threads"] shows it.)
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    cxx_flags = ["-O3", "-g0", "-fno-trapping-math", "-fvisibility=hidden"] + openmp
    extra = {"cxx": cxx_flags}
    ext_cls = CppExtension
    if with_cuda:
        ext_cls = CUDAExtension
        sources += cuda_sources
        define_macros.append(("KPRUNE_WITH_CUDA", None))
        define_macros.append(("KPRUNE_TORCH_BINDINGS", None))
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
    ext = ext_cls(
        name="kprune_ext._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=openmp,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions() if "egg_info" not in sys.argv else ([], {})

setup(
    name="kprune",
    version="0.1.0",
    description="Retraining-free pruning of fine-tuned Transformer encoders (K-prune, ICLR 2024)",
    python_requires=">=3.10",
    packages=find_packages("python") + ["kprune_ext"],
    package_dir={"": "python", "kprune_ext": "kprune_ext"},
    install_requires=["torch>=2.4", "transformers>=5,<6", "safetensors", "tokenizers", "numpy", "tqdm"],
    extras_require={"test": ["pytest", "hypothesis"], "bench": ["pytest-benchmark", "matplotlib"], "datasets": ["datasets"]},
    entry_points={"console_scripts": ["kprune=kprune.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
