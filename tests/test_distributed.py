"""Data-parallel pruning: ranks on gloo (127.0.0.1) give what one process gives, and fail together.

Each world is spawned once and runs several cases in a row (spawning costs seconds); rank 0 writes
what it saw to a file that the test compares against single-process runs made here.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import kprune
from conftest import random_samples, tiny_model
from kprune.distributed import Collective, shard_by_tokens
from kprune.launch import free_port
from kprune.pruner import KPruner

LAYERS, REDUCTION = 3, 0.6
CASES = [(head, groups) for head in ("classification", "regression", "qa") for groups in ("batch", "sample")]


def config(groups: str, measure_dtype: str = "float32") -> kprune.KPruneConfig:
    # logical batches of 4 over 26 samples: most groups span ranks; compute batches of 3 cut them otherwise
    return kprune.KPruneConfig(progress=False, batch_size=4, compute_batch_size=3, gradient_groups=groups,
                               measure_dtype=measure_dtype)


def samples(seed: int = 3):
    return random_samples(26, seed=seed, min_len=2, max_len=30)


def run_case(head: str, groups: str, process_group=None, measure_dtype: str = "float32") -> dict:
    """A whole run, plus the knowledge statistics of sublayers >= 3 measured after step 2."""
    pruner = KPruner(tiny_model("bert", head, layers=LAYERS), samples(), head, REDUCTION,
                     config(groups, measure_dtype), process_group)
    stats = None
    for step in pruner.steps():
        if step.sublayer == 2:
            stats = {j: (s.grad_sq.clone(), s.act_sq.clone()) for j, s in pruner._measure(3).items()}
    state = {key: value.clone() for key, value in pruner.model.state_dict().items()}
    return {"kept": [step.kept for step in pruner.steps_done], "state": state, "stats": stats,
            "report": pruner.report()}


def _failure(fn) -> tuple[str, str] | None:
    try:
        fn()
    except kprune.KPruneError as error:
        return type(error).__name__, str(error)
    return None


def failure_cases(rank: int) -> dict:
    """What each rank raised when one rank's input is bad."""
    head = "classification"
    bad = samples()
    if rank == 1:
        bad[5] = {"input_ids": torch.tensor([3, 999, 4])}          # outside the vocabulary, on rank 1 only
    other_seed = tiny_model("bert", head, LAYERS, seed=1 if rank == 1 else 0)
    config_kind = tiny_model("bert", head, layers=2 if rank == 1 else LAYERS)
    original = KPruner._recompute_pass

    def out_of_memory(self, k, *args):
        if rank == 1 and k == 2:
            raise RuntimeError("out of memory (simulated)")
        return original(self, k, *args)

    results = {
        "bad data": _failure(lambda: kprune.prune(tiny_model("bert", head, LAYERS), bad, head, REDUCTION,
                                                  config("batch"), dist.group.WORLD)),
        "weights differ": _failure(lambda: kprune.prune(other_seed, samples(), head, REDUCTION, config("batch"),
                                                        dist.group.WORLD)),
        "config differs": _failure(lambda: kprune.prune(config_kind, samples(), head, REDUCTION, config("batch"),
                                                        dist.group.WORLD)),
    }
    KPruner._recompute_pass = out_of_memory
    try:
        results["fails mid-run"] = _failure(lambda: kprune.prune(tiny_model("bert", head, LAYERS), samples(), head,
                                                                 REDUCTION, config("batch"), dist.group.WORLD))
    finally:
        KPruner._recompute_pass = original
    return results


def _world(rank: int, world: int, port: int, cases: list, with_failures: bool, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        seen = {"failures": failure_cases(rank) if with_failures else None}
        seen["runs"] = {"/".join(case): run_case(case[0], case[1], dist.group.WORLD, *case[2:]) for case in cases}
        torch.save(seen, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def spawn_world(world: int, cases, with_failures: bool, tmp_path) -> list[dict]:
    out = str(tmp_path / "seen")
    mp.start_processes(_world, args=(world, free_port(), cases, with_failures, out), nprocs=world,
                       start_method="spawn")
    return [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(world)]


def assert_same_run(got: dict, want: dict) -> None:
    assert got["kept"] == want["kept"]
    assert got["state"].keys() == want["state"].keys()
    # the least-squares sums are float64 over exact products (kprune.tuning), so the re-fitted weights come out
    # the same to float32 rounding (bit-identical in practice: 3 ranks against 1 process, float32 and bf16);
    # the knowledge statistics are float32 sums in another order (up to 3.5e-6 relative apart, measured)
    for key in want["state"]:
        torch.testing.assert_close(got["state"][key], want["state"][key], rtol=1e-5, atol=1e-6, msg=key)
    for j, sums in want["stats"].items():
        for got_sum, want_sum in zip(got["stats"][j], sums):
            torch.testing.assert_close(got_sum, want_sum, rtol=1e-4, atol=1e-6 * float(want_sum.max()))
    assert got["report"]["num_tokens"] == want["report"]["num_tokens"]
    assert got["report"]["avg_seq_len"] == want["report"]["avg_seq_len"]


def test_shard_by_tokens_is_a_balanced_partition():
    lengths = [int(n) for n in torch.randint(1, 200, (101,), generator=torch.Generator().manual_seed(0))]
    shards = [shard_by_tokens(lengths, 3, rank) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(101))
    loads = [sum(lengths[i] for i in shard) for shard in shards]
    assert max(loads) - min(loads) <= max(lengths)
    assert shard_by_tokens(lengths, 1, 0) == list(range(101))
    assert shard_by_tokens([5], 2, 1) == []   # more ranks than samples: an empty shard


def test_one_process_collective_is_a_no_op():
    ones = [torch.ones(3)]
    collective = Collective()
    collective.all_reduce(ones)
    with collective.guard("nothing"):
        pass
    assert collective.world_size == 1 and torch.equal(ones[0], torch.ones(3)) and collective.bytes == 0
    with pytest.raises(ValueError):   # one process: errors pass through unchanged
        with collective.guard("nothing"):
            raise ValueError("x")


def test_two_ranks_equal_one_process_and_fail_together(tmp_path):
    ranks = spawn_world(2, CASES, True, tmp_path)
    for case in CASES:
        want = run_case(*case)
        for seen in ranks:
            got = seen["runs"]["/".join(case)]
            assert_same_run(got, want)
            report = got["report"]
            assert report["world_size"] == 2
            assert len(report["communication"]["bytes_per_step"]) == 2 * LAYERS
            assert all(b > 0 for b in report["communication"]["bytes_per_step"])
        # weights are bit-identical across ranks (rank 0's solution is broadcast)
        for key, value in ranks[0]["runs"]["/".join(case)]["state"].items():
            assert torch.equal(value, ranks[1]["runs"]["/".join(case)]["state"][key])
    failures = [seen["failures"] for seen in ranks]
    for name in failures[0]:
        assert failures[0][name] is not None and failures[0][name] == failures[1][name], name
    assert failures[0]["bad data"][0] == "DataError"
    assert "rank 1 of 2" in failures[0]["bad data"][1] and "999" in failures[0]["bad data"][1]
    assert failures[0]["fails mid-run"] == (
        "DistributedError", "rank 1 of 2 failed while measuring knowledge at sublayer 2: "
                            "RuntimeError: out of memory (simulated)")
    assert failures[0]["weights differ"][0] == "DistributedError"
    assert "rank 1's parameter values differ" in failures[0]["weights differ"][1]
    assert "model configuration, parameter shapes, parameter values" in failures[0]["config differs"][1]


def test_three_ranks_uneven_split(tmp_path):
    """In bf16 measurement too (where the compiled attention is built): a bf16 pass would turn any float32
    difference between one process's batches and three ranks' into a bf16 ulp (tests/test_pruner.py)."""
    from kprune_ext import ops
    cases = [("qa", "batch")]
    if ops.attention_compiled(torch.device("cpu")):
        cases.append(("classification", "batch", "bfloat16"))
    ranks = spawn_world(3, cases, False, tmp_path)
    lengths = [s["input_ids"].numel() for s in samples()]
    assert len({len(shard_by_tokens(lengths, 3, rank)) for rank in range(3)}) > 1   # the shards are uneven
    for case in cases:
        want = run_case(case[0], case[1], None, *case[2:])
        for seen in ranks:
            assert_same_run(seen["runs"]["/".join(case)], want)


def test_cli_workers_match_one_worker(tmp_path, capsys):
    from safetensors.torch import load_file

    from test_cli import workspace as make_workspace
    from kprune.cli import main

    workspace = make_workspace.__wrapped__(tmp_path)
    common = ["prune", "--model", str(workspace / "model"), "--task", "sst2", "--data", str(workspace / "SST-2"),
              "--flops-reduction", "0.5", "--num-tokens", "200", "--batch-size", "4", "--quiet"]
    assert main(common + ["--output", str(tmp_path / "one")]) == 0
    assert main(common + ["--output", str(tmp_path / "two"), "--workers", "2"]) == 0
    one, two = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("one", "two"))
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["world_size"] == 2 and len(report["communication"]["bytes_per_step"]) == 4
    assert json.loads((tmp_path / "one" / "report.json").read_text())["world_size"] == 1
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))
    # a bad argument fails in the launching process, before any worker starts
    assert main(common + ["--output", str(tmp_path / "three"), "--workers", "0"]) == 2
    assert "--workers 0" in capsys.readouterr().err and not (tmp_path / "three").exists()
