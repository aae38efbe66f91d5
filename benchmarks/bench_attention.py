"""The attention kernel of a knowledge pass in float32 and bfloat16, forward alone and with its backward.

    python benchmarks/bench_attention.py              # 1 thread; writes benchmarks/results/attention.json
    python benchmarks/bench_attention.py --threads 2 --output /tmp/attention.json

kprune's sublayers run the compiled ``kprune::attention`` (each sequence over its real keys, float32, also
under bf16 autocast) where the extension is built, and ``F.scaled_dot_product_attention`` with a boolean key
mask (aten's CPU flash attention) otherwise and for families with a position bias. This times aten's in
float32 and bfloat16 and the compiled kernel (``kprune``, float32) at encoder shapes (12 heads of 32, padded
batches of short to long sequences), milliseconds per call, median of repeats.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_gemm import cpu_model, median_seconds  # noqa: E402
from json_results import write_json_atomically  # noqa: E402

RESULTS = HERE / "results" / "attention.json"
# (sequences, padded length): about 500 tokens a batch, as kprune's compute batches, and one long case
SHAPES = [(16, 32), (10, 50), (4, 128), (8, 384)]
HEADS, HEAD_SIZE = 12, 32


def case(sequences: int, length: int, dtype, backward: bool, repeats: int, kernel: str = "aten") -> float:
    """Milliseconds per call of aten's masked attention or (kernel="kprune") the compiled one, same inputs."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sequences, HEADS, length, HEAD_SIZE, generator=g).to(dtype).requires_grad_(backward)
               for _ in range(3))
    lengths = torch.randint(length // 2, length + 1, (sequences,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None])[:, None, None, :]
    grad = torch.randn(sequences, HEADS, length, HEAD_SIZE, generator=g).to(dtype)

    def run():
        if kernel == "kprune":   # [batch, seq, heads, head_size] views, as the pruner passes them
            from kprune_ext import ops
            out = ops.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), lengths,
                                HEAD_SIZE ** -0.5).transpose(1, 2)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if backward:
            torch.autograd.grad(out, (q, k, v), grad)

    with torch.set_grad_enabled(backward):
        return median_seconds(run, repeats) * 1e3


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for sequences, length in SHAPES:
        row = {"sequences": sequences, "length": length}
        for name, dtype, kernel in (("float32", torch.float32, "aten"), ("bfloat16", torch.bfloat16, "aten"),
                                    ("kprune", torch.float32, "kprune")):
            row[f"{name}_forward_ms"] = round(case(sequences, length, dtype, False, args.repeats, kernel), 3)
            row[f"{name}_forward_backward_ms"] = round(case(sequences, length, dtype, True, args.repeats, kernel), 3)
        rows.append(row)
    result = {"command": "python benchmarks/bench_attention.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "cpu_model": cpu_model(), "threads": args.threads, "torch": torch.__version__,
              "heads": HEADS, "head_size": HEAD_SIZE, "ms": rows}
    write_json_atomically(args.output, result)
    print(f"attention ms per call, {args.threads} thread(s), {result['cpu_model']}:")
    print("| sequences x length | aten fp32 fwd | aten bf16 fwd | kprune fwd | aten fp32 fwd+bwd | aten bf16 fwd+bwd "
          "| kprune fwd+bwd |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sequences']} x {r['length']} | {r['float32_forward_ms']:.2f} | {r['bfloat16_forward_ms']:.2f} | "
              f"{r['kprune_forward_ms']:.2f} | {r['float32_forward_backward_ms']:.2f} | "
              f"{r['bfloat16_forward_backward_ms']:.2f} | {r['kprune_forward_backward_ms']:.2f} |")
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
