"""benchmarks/profile_step.py: how it names and adds up the operations of a profiled step."""

import pytest

from benchmarks import frameworks, profile_step
from jaxrnn.backends import cpu


def test_op_names_read_targets_and_opcodes_from_hlo():
    hlo = """HloModule jit_step, entry_computation_layout={(f32[2]{0})->f32[2]{0}}
  %ffi_call.7 = (f32[3,2]{1,0}, f32[2]{0}) custom-call(f32[2]{0} %p), custom_call_target="jaxrnn_lstm_forward"
  ROOT %multiply_add_fusion.2 = f32[2]{0} fusion(f32[2]{0} %p), kind=kLoop, calls=%fused
  dot.3 = f32[2,2]{1,0} dot(f32[2,2]{1,0} a, f32[2,2]{1,0} b), lhs_contracting_dims={1}"""
    assert profile_step.op_names(hlo) == {
        "ffi_call.7": "jaxrnn_lstm_forward", "multiply_add_fusion.2": "fusion", "dot.3": "dot"
    }  # fmt: skip


def test_summarize_adds_the_outermost_operations_of_each_thread():
    """A loop of 300 us holding two 100 us body ops, then a 50 us op, on thread 1; a 70 us op
    on thread 2 at the same time; another module's op left out: per step (2 steps) 210 us of
    outermost operations; the executable's time from the calling thread's outermost spans."""
    ev = lambda name, tid, ts, dur, module="jit_step": dict(  # noqa: E731
        name=name, tid=tid, ts=ts, dur=dur, args=dict(hlo_module=module, hlo_op=name)
    )
    events = [ev("while.1", 1, 0, 300), ev("dot.2", 1, 10, 100), ev("fusion.3", 1, 150, 100),
              ev("fusion.4", 1, 300, 50), ev("fusion.5", 2, 20, 70), ev("dot.9", 1, 400, 999, "other"),
              dict(name=profile_step.EXECUTE, tid=1, ts=0, dur=360),  # the step's executor,
              dict(name=profile_step.EXECUTE, tid=1, ts=10, dur=100),  # a loop body's and a
              dict(name=profile_step.EXECUTE, tid=2, ts=20, dur=70)]  # fmt: skip  # pool's
    got = profile_step.summarize(events, "jit_step", steps=2)
    assert got["ops_ms_per_step"] == pytest.approx((300 + 50 + 70) / 2 / 1e3)
    assert got["execute_ms_per_step"] == pytest.approx(0.18)
    assert list(got["ops"]) == ["while.1", "dot.2", "fusion.3", "fusion.5", "fusion.4"]
    assert got["ops"]["dot.2"] == {"calls": 1, "ms_per_step": pytest.approx(0.05)}


@pytest.mark.slow  # profiles a compiled step
def test_profile_names_every_operation_of_a_small_step():
    """A small LSTM training step (backend auto) under the profiler: every operation of the
    compiled step is named from its HLO; where the native kernels run, each of their calls
    runs once per step (the recurrence has no XLA loop left)."""
    spec = dict(mode="train", cell="lstm", B=8, T=12, H=16, V=40, E=8)
    run = frameworks.build_jaxrnn(spec, "cpu")
    run()
    res = profile_step.profile(run, steps=3, profile_steps=2)
    assert len(res["wall_ms"]) == 3 and min(res["wall_ms"]) > 0
    assert res["ops"] and all(
        v["what"] != "?" and v["ms_per_step"] > 0 for v in res["ops"].values()
    )
    assert 0 < 2 * res["execute_ms_per_step"] <= res["profiled_wall_ms"]
    if cpu.available():
        what = [v["what"] for v in res["ops"].values()]
        for target in ("jaxrnn_lstm_forward", "jaxrnn_lstm_backward", "jaxrnn_table_projection"):
            assert what.count(target) == 1, (target, what)
