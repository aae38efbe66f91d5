"""What keeps a run's memory down: a student sharing the model's weights, the recomputed pass keeping
only pre-LayerNorm sums, hidden-state caches advanced in place, and the heap trimmer."""
import copy
import gc
import platform
import weakref

import pytest
import torch

import kprune
import kprune.heap as heap
import kprune.tuning
from conftest import random_samples, tiny_model
from kprune.adapters import EncoderAdapter
from kprune.errors import ConfigError
from kprune.sharing import own_parameters, shared_copy
from kprune.sublayers import run_sublayer, sublayer_output


def _storages(model):
    return {p.untyped_storage().data_ptr() for p in model.parameters()}


def test_shared_copy_shares_storage_until_owned():
    model = tiny_model("bert", "classification")
    student = shared_copy(model)
    assert student is not model and student.bert.encoder.layer[0] is not model.bert.encoder.layer[0]
    assert _storages(student) == _storages(model)
    # a replaced layer is the student's alone, the model keeps its own
    student.bert.encoder.layer[0].output.dense = torch.nn.Linear(40, 32)
    assert model.bert.encoder.layer[0].output.dense.in_features == 40
    assert model.bert.encoder.layer[0].output.dense is not student.bert.encoder.layer[0].output.dense
    copied = own_parameters(student, model)
    assert copied == len(list(model.parameters())) - 2       # all but the replaced layer's weight and bias
    assert not _storages(student) & _storages(model)
    for (name, a), (_, b) in zip(student.named_parameters(), model.named_parameters()):
        if "layer.0.output.dense" not in name:
            assert torch.equal(a, b), name
    assert own_parameters(student, model) == 0


@pytest.mark.parametrize("family,extra", [("bert", {}), ("mpnet", {}), ("bert", {"head_refit": True}),
                                          ("bert", {"damping_search": True})])
def test_pruned_model_owns_its_weights_and_the_input_model_is_untouched(family, extra):
    # every switch that writes weights in place must write only into the student's own
    model = tiny_model(family, "classification", layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = kprune.prune(model, random_samples(30, seed=3), "classification", 0.6,
                          config=kprune.KPruneConfig(progress=False, **extra))
    assert not _storages(result.model) & _storages(model)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    # the embeddings were shared during the run and are copied at its end
    assert torch.equal(result.model.base_model.embeddings.word_embeddings.weight,
                       before[[k for k in before if k.endswith("word_embeddings.weight")][0]])


def _tuners(layers: int = 2):
    teacher = tiny_model("bert", "classification", layers=layers)
    student = kprune.apply_masks(copy.deepcopy(teacher), kprune.UnitMasks.from_kept(
        teacher, [[0, 2], [1, 2, 3]][:layers], [range(0, 37, 2), range(25)][:layers]))
    samples = random_samples(13, seed=5)
    return (kprune.tuner_for(student, teacher, samples, batch_size=4),
            kprune.tuner_for(student, teacher, samples, batch_size=4), student)


def test_teacher_advanced_in_place_gives_the_same_statistics_and_states():
    """The pruner's tuner writes the teacher's next states over its inputs during the statistics pass and
    advances the student batch by batch: same sums and states as the tuner that keeps both copies, the
    replaced tensors freed as it goes, and a second statistics call of the sublayer refused."""
    keep, lean, student = _tuners()
    lean.teacher_in_place = True
    out_projs = [EncoderAdapter(student).layer(k // 2).attn_out if k % 2 == 0 else
                 EncoderAdapter(student).layer(k // 2).ffn_out for k in range(4)]
    for k in range(4):
        old_teacher = [weakref.ref(x) for x in lean.teacher_cache]
        old_student = [weakref.ref(x) for x in lean.student_cache]
        want, got = keep.statistics(k), lean.statistics(k)
        assert torch.equal(want.gram, got.gram) and torch.equal(want.cross, got.cross)
        assert want.target_sq == got.target_sq and want.num_tokens == got.num_tokens
        gc.collect()
        if k > 0:   # at sublayer 0 the student's cache holds the teacher's embeddings too
            assert all(ref() is None for ref in old_teacher), "the teacher's inputs outlived the statistics pass"
        with pytest.raises(ConfigError, match=f"moved past sublayer {k}"):
            lean.statistics(k)
        keep.statistics(k)   # the default tuner takes them any number of times
        with torch.no_grad():   # the student changes between the statistics and the advance, as a re-fit does
            out_projs[k].weight.mul_(0.5)
        keep.advance(k)
        lean.advance(k)
        gc.collect()
        assert all(ref() is None for ref in old_student), "the student's old states outlived the advance"
        assert all(torch.equal(a, b) for a, b in zip(keep.teacher_cache + keep.student_cache,
                                                     lean.teacher_cache + lean.student_cache))
    assert not torch.equal(keep.teacher_cache[0], keep.student_cache[0])


def test_a_pass_cut_short_is_not_advanced_silently(monkeypatch):
    _, lean, _ = _tuners()
    lean.teacher_in_place = True
    lean.advance(0)
    calls = []

    def failing(adapter, k, x, real, _run=run_sublayer):
        calls.append(k)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return _run(adapter, k, x, real)

    monkeypatch.setattr(kprune.tuning, "run_sublayer", failing)
    with pytest.raises(KeyboardInterrupt):
        lean.statistics(1)
    monkeypatch.undo()
    for retry in (lean.advance, lean.statistics):
        with pytest.raises(ConfigError, match="statistics pass of sublayer 1 was cut short"):
            retry(1)
    _, lean, _ = _tuners()   # the same for an advance cut short, in either mode
    calls.clear()
    monkeypatch.setattr(kprune.tuning, "run_sublayer", failing)
    with pytest.raises(KeyboardInterrupt):
        lean.advance(0)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="advancing past sublayer 0 was cut short"):
        lean.statistics(0)


def test_sublayer_output_is_what_the_forward_made():
    adapter = EncoderAdapter(tiny_model("bert", "classification", layers=2))
    x = torch.randn(3, 7, adapter.hidden_size)
    key_mask = torch.arange(7)[None, :] < torch.tensor([7, 4, 2])[:, None]
    with torch.no_grad():
        for k in range(4):
            out = run_sublayer(adapter, k, x, key_mask)
            assert torch.equal(sublayer_output(adapter, k, out.pre_norm), out.output)
            x = out.output


def test_trimmer_trims_only_past_its_high_water_mark(monkeypatch):
    mb = 2**20
    trims = []
    resident = iter([100, 110, 160, 140, 140, 200, 150, 150])   # MB, as /proc would report them in turn
    monkeypatch.setattr(heap, "_TRIM", lambda pad: trims.append(pad))
    monkeypatch.setattr(heap, "resident_bytes", lambda: next(resident) * mb)
    trimmer = heap.HeapTrimmer(slack_mb=30)   # reads 100 (available)
    trimmer.trim()                            # after the trim: 110 -> limit 140
    assert trimmer.limit == 140 * mb and len(trims) == 1
    trimmer.poll()                            # 160 > 140: trim; after it 140 -> limit 170
    assert len(trims) == 2 and trimmer.limit == 170 * mb
    trimmer.poll()                            # 140: below the limit, nothing
    assert len(trims) == 2
    trimmer.poll()                            # 200 > 170: trim; after it 150 -> limit 180
    assert len(trims) == 3 and trimmer.limit == 180 * mb


def test_trimmer_does_nothing_without_malloc_trim(monkeypatch):
    monkeypatch.setattr(heap, "_TRIM", None)
    trimmer = heap.HeapTrimmer()
    trimmer.trim()
    trimmer.poll()
    assert not trimmer.enabled and trimmer.trims == 0
    assert heap.release_free_memory() is False


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_trim_and_resident_size_are_found():
    assert heap.release_free_memory() is True
    rss = heap.resident_bytes()
    assert rss is not None and 10 * 2**20 < rss < 64 * 2**30
