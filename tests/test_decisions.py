"""Collective decisions as pure logic: a job of W workers agrees on `decode(sum of every worker's encoding)`.

No TensorFlow work: the all-reduce is a sum, simulated here with numpy exactly as the
DecisionMaker's one all-reduce computes it.
"""

import signal

import numpy as np
import pytest

from harness.decisions import REASON_BYTES, Layout, Votes, decode_reason, encode_reason


def agree(votes_by_worker, num_savers=3, chief=0):
    """What every worker of the job decides (the same Decision everywhere)."""
    layout = Layout(len(votes_by_worker), num_savers)
    total = sum(layout.encode(v, i, i == chief) for i, v in enumerate(votes_by_worker))
    decision = layout.decode(total)
    if decision.stop_voters:
        first = decision.stop_voters[0]
        reasons = [encode_reason(v.stop_reason or "") if i == first else np.zeros([REASON_BYTES])
                   for i, v in enumerate(votes_by_worker)]
        decision = layout.decode(total, stop_reason=decode_reason(sum(reasons)))
    return decision


def test_no_votes_decide_nothing():
    decision = agree([Votes(), Votes(), Votes()])
    assert not decision.stop and decision.savers == () and decision.lr_base is None and decision.signal == 0


def test_a_stop_asked_by_one_worker_is_taken_by_all_with_its_reason():
    decision = agree([Votes(), Votes(stop_reason="worker 1 saw enough"), Votes()])
    assert decision.stop and decision.stop_voters == (1,) and decision.stop_reason == "worker 1 saw enough"


def test_the_lowest_voter_gives_the_reason():
    decision = agree([Votes(), Votes(stop_reason="one"), Votes(stop_reason="two")])
    assert decision.stop_voters == (1, 2) and decision.stop_reason == "one"


def test_a_signal_on_any_worker_stops_everyone_and_names_the_signal():
    decision = agree([Votes(), Votes(signal=int(signal.SIGTERM))])
    assert decision.stop and decision.signal_name == "SIGTERM" and decision.signalled == (1,)
    assert decision.stop_reason is None  # a preemption is not a finished run


def test_a_stop_and_a_signal_at_one_point_both_survive():
    decision = agree([Votes(stop_reason="early stopping: done"), Votes(signal=int(signal.SIGINT))])
    assert decision.stop_reason == "early stopping: done" and decision.signal_name == "SIGINT"


def test_saves_are_the_union_of_every_workers_requests():
    decision = agree([Votes(savers={0}), Votes(savers={2}), Votes(savers={0, 1})])
    assert decision.savers == (0, 1, 2)


def test_learning_rate_changes_take_the_chiefs_values_only():
    decision = agree([Votes(lr_base=0.5), Votes(lr_base=0.9, lr_scale=0.1)], chief=0)
    assert decision.lr_base == 0.5 and decision.lr_scale is None
    decision = agree([Votes(lr_base=0.5), Votes(lr_base=0.9, lr_scale=0.1)], chief=1)
    assert decision.lr_base == 0.9 and decision.lr_scale == pytest.approx(0.1)


def test_one_worker_decides_alone_with_the_same_code():
    decision = agree([Votes(stop_reason="alone", savers={1}, lr_scale=0.25)])
    assert decision.stop_reason == "alone" and decision.savers == (1,) and decision.lr_scale == 0.25


@pytest.mark.parametrize("reason", ["", "plain", "non-finite loss (nan) at step 8", "ünïcødé ✓ 损失",
                                    "x" * (REASON_BYTES + 100)])
def test_reasons_travel_through_a_float_sum(reason):
    decoded = decode_reason(encode_reason(reason) + np.zeros([REASON_BYTES]))
    if len(reason.encode()) <= REASON_BYTES:
        assert decoded == reason
    else:
        assert decoded.endswith("...") and len(decoded.encode()) <= REASON_BYTES and reason.startswith(decoded[:-3])


def test_every_worker_learns_every_workers_busy_time():
    decision = agree([Votes(seconds=0.5), Votes(seconds=2.0), Votes(seconds=0.25)])
    assert decision.seconds == (0.5, 2.0, 0.25)


def test_busy_times_are_each_workers_time_outside_the_loop_plus_the_fastest_loop():
    """A worker's wait for the others inside the steps' collectives is not its own time: the fastest loop counts."""
    decision = agree([Votes(seconds=0.1, loop_seconds=1.3), Votes(seconds=0.5, loop_seconds=1.0)])
    assert decision.seconds == pytest.approx((1.1, 1.5))


def test_the_vote_vector_is_small():
    assert Layout(num_workers=2, num_savers=8).size == 5 * 2 + 8 + 4


def test_a_rollback_asked_by_one_worker_is_taken_by_all_with_the_lowest_voters_factor():
    decision = agree([Votes(), Votes(rollback_reason="nan at step 8", rollback_lr_factor=0.5),
                      Votes(rollback_reason="nan", rollback_lr_factor=0.25)])
    assert decision.rollback and decision.rollback_voters == (1, 2) and decision.rollback_lr_factor == 0.5
    assert not decision.stop  # a rollback is not a stop
    assert not agree([Votes(), Votes()]).rollback and agree([Votes()]).rollback_lr_factor == 1.0


def test_only_requests_ask_for_an_action_and_busy_times_do_not():
    """The controller agrees at once at a loop's point only when a vote asks for an action (harness.controller)."""
    assert not Votes().ask_anything and not Votes(seconds=1.0, loop_seconds=2.0).ask_anything
    asking = [Votes(stop_reason="x"), Votes(signal=int(signal.SIGTERM)), Votes(savers={0}), Votes(lr_base=0.1),
              Votes(lr_scale=0.5), Votes(rollback_reason="nan")]
    assert all(v.ask_anything for v in asking)

