"""Build kprune (pure Python, python/kprune) and kprune_ext (with its compiled part kprune_ext._C)."""
from setuptools import find_packages, setup

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
)
