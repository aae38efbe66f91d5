"""Our Kwon et al. re-implementation (benchmarks/peers/kwon.py) against their code, stage by stage, on
the sample their run drew (recorded by benchmarks/originals/launch.py in a run_originals.py cell).

    python benchmarks/compare_kwon.py --run-dir RUN --checkpoint CKPT --task sst2 --reduction 0.5
                                      [--their-seq-len 25.16] [--output benchmarks/results/kwon_masks.json]

1. gradients: ours per sample (kprune.mask_gradients), averaged over their mini-batches (32 samples in
   their order; their loss is the batch mean) against the mini-batch gradients their code kept;
2. search: our search_mask on their importance (sum of squared mini-batch gradients) and on ours
   (sum of squared per-sample gradients), against their search mask, at their budget (their MAC model
   at their sequence length --their-seq-len, the dev-set average length of their table);
3. rearrangement: ours on their search mask and gradients against their rearranged mask.
Reports kept units per layer and the overlap (units kept by both / kept by either) of each pair.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import kprune  # noqa: E402
from peers._common import labelled_batches  # noqa: E402
from peers.kwon import fisher_gradients, rearrange, search_mask  # noqa: E402


def overlap(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Kept counts per layer of two boolean masks [L, units] and their Jaccard overlap."""
    a, b = a.bool(), b.bool()
    union = int((a | b).sum())
    return {"ours": a.sum(1).tolist(), "theirs": b.sum(1).tolist(),
            "jaccard": int((a & b).sum()) / union if union else 1.0, "identical": bool(torch.equal(a, b))}


def batch_means(per_sample: torch.Tensor, order: list[int], batch: int) -> torch.Tensor:
    """[samples, ...] gradients in the batches' (sorted) order -> their mini-batch means in sample order."""
    in_order = torch.empty_like(per_sample)
    in_order[torch.tensor(order)] = per_sample
    return torch.stack([in_order[i:i + batch].mean(0) for i in range(0, len(order), batch)])


def compare(capture: dict, model, task_kind: str, reduction: float, their_seq_len: float, batch: int = 32) -> dict:
    samples = [{k: torch.as_tensor(v) for k, v in s.items() if k != "attention_mask"} for s in capture["sample"]]
    batches = labelled_batches(samples, batch)
    order = sorted(range(len(samples)), key=lambda i: samples[i]["input_ids"].numel())
    head_grads, neuron_grads = fisher_gradients(model, batches, task_kind)
    ours_h = batch_means(torch.stack(head_grads, 1), order, batch)        # [batches, L, H]
    ours_n = batch_means(torch.stack(neuron_grads, 1), order, batch)
    theirs_h, theirs_n = capture["head_grads"].float(), capture["neuron_grads"].float()
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    view = kprune.encoder_layers(model)[0]
    hidden, head_size = view.attn_out.out_features, view.head_size
    fh, fn = kprune.head_flops(their_seq_len, hidden, head_size), kprune.neuron_flops(their_seq_len, hidden)
    L = len(head_grads)
    budget = (1 - reduction) * L * (view.num_heads * fh + view.num_neurons * fn)
    their_search = capture["search"][-1]
    imp_theirs = (theirs_h.double().square().sum(0), theirs_n.double().square().sum(0))
    imp_ours = (torch.stack([g.double().square().sum(0) for g in head_grads]),
                torch.stack([g.double().square().sum(0) for g in neuron_grads]))
    search_on_theirs = search_mask(*imp_theirs, budget, fh, fn)
    search_on_ours = search_mask(*imp_ours, budget, fh, fn)
    rearr = [torch.stack([rearrange(their_search[0][l].bool(), theirs_h[:, l]) for l in range(L)]),
             torch.stack([rearrange(their_search[1][l].bool(), theirs_n[:, l]) for l in range(L)])]
    return {
        "num_samples": len(samples), "num_batches": len(theirs_h),
        "gradients_relative_difference": {"heads": rel(ours_h, theirs_h), "neurons": rel(ours_n, theirs_n)},
        "search_on_their_importance": {"heads": overlap(search_on_theirs[0], their_search[0]),
                                       "neurons": overlap(search_on_theirs[1], their_search[1])},
        "search_on_our_per_sample_importance": {"heads": overlap(search_on_ours[0], their_search[0]),
                                                "neurons": overlap(search_on_ours[1], their_search[1])},
        "rearrangement_on_their_search": {"heads": overlap(rearr[0], capture["rearranged"][0]),
                                          "neurons": overlap(rearr[1], capture["rearranged"][1])},
        "their_tuned_masks": {"heads_nonunit": int(((capture["head_mask"] != 0) & (capture["head_mask"] != 1)).sum()),
                              "neurons_nonunit": int(((capture["neuron_mask"] != 0) & (capture["neuron_mask"] != 1)).sum())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a kwon-paper cell's folder (capture.pt)")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--reduction", type=float, required=True)
    parser.add_argument("--their-seq-len", type=float, default=25.16)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "kwon_masks.json")
    args = parser.parse_args(argv)
    import transformers
    from kprune.tasks import get_task
    torch.set_num_threads(1)
    kind = get_task(args.task).kind
    model = transformers.AutoModelForSequenceClassification.from_pretrained(args.checkpoint).eval()
    capture = torch.load(args.run_dir / "capture.pt", weights_only=False)
    result = {"run_dir": str(args.run_dir), "checkpoint": str(args.checkpoint), "task": args.task,
              "reduction": args.reduction, **compare(capture, model, kind, args.reduction, args.their_seq_len)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    key = f"{args.task}/{args.reduction:.2f}"
    existing = json.loads(args.output.read_text()) if args.output.is_file() else {}
    existing[key] = result
    args.output.write_text(json.dumps(existing, indent=1, sort_keys=True) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
