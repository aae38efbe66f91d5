"""benchmarks/bench_attention.py: one command times aten's attention in both precisions at every shape and
records what it prints."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_attention  # noqa: E402


def test_times_every_shape_and_kernel_and_records_them(tmp_path, capsys):
    output = tmp_path / "attention.json"
    result = bench_attention.main(["--repeats", "1", "--output", str(output)])
    assert json.loads(output.read_text()) == result
    assert [(r["sequences"], r["length"]) for r in result["ms"]] == bench_attention.SHAPES
    for row in result["ms"]:
        for key in ("float32_forward_ms", "bfloat16_forward_ms", "kprune_forward_ms", "float32_forward_backward_ms",
                    "bfloat16_forward_backward_ms", "kprune_forward_backward_ms"):
            assert row[key] > 0
    printed = capsys.readouterr().out
    first = result["ms"][0]
    assert f"| {first['sequences']} x {first['length']} | {first['float32_forward_ms']:.2f} |" in printed
