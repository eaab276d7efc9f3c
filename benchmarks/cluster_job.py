"""One task of the 2-worker cluster benchmark; `benchmarks/cluster.py` runs it on every task through harness.launch.

Every worker builds the same MLP under MultiWorkerMirroredStrategy (one replica each) and a
`harness.Trainer` on it, and runs one short `fit` (its callbacks, context and decision maker).
Then, in blocks that alternate (ABBA...), with a barrier (one all-reduce) before each block:

1. With --decision, the decision overhead at K=1: bare one-step loop calls (`trainer.run_train_loop`,
   the gradient all-reduce included) against one-step loops as `fit` runs them, each with its
   decision point (`controller.run_loop`, which carries this worker's votes in the gradient
   all-reduce of one call in READ_EVERY_STEPS, then `controller._decide(context, LOOP)`: see
   `harness.controller`), in pairs
   (AB, BA, ...) of blocks of READ_EVERY_STEPS calls (one of which reads the votes), each block
   timed, `--decision_pairs` pairs per round, a barrier before each of `--decision_rounds` rounds;
   per round and kind, the median block. The overhead is their difference over the bare loop. (It
   is a fraction of a millisecond per call against a 5 ms step that wanders by more over a second:
   short interleaved blocks see the same machine, and medians drop the blocks another process delayed.)
2. Cost of the cluster over one process at the same global batch, per K: a block of N/K
   K-step loop calls, each followed by its decision point, on the cluster, against the same on
   worker 0 alone, with a default-strategy Trainer on the whole global batch (worker 1 waits
   in the next barrier meanwhile).

Worker 0 (the chief) times each block by wall clock and by its process's CPU time and prints
one line `RESULT <json>` with every block, and its thread count before and after. The strategy
is the harness's default (`harness.build_strategy("multi_worker_mirrored")`). Its collective
timeout once was TensorFlow's per-collective one, which left about two threads behind per
collective until it expired (about 3,000 threads here, and a longer job aborted with
"std::system_error: Resource temporarily unavailable"); it is now one watchdog thread
(`harness/collective_watchdog.py`), and the count stays flat (120 -> 130 in a quick run).
`benchmarks/cluster.py` still starts one job per K, so each K starts from fresh processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf

import harness
from benchmarks.harness_fit import HarnessFit
from benchmarks.settings import ModelSpec
from benchmarks.workload import Workload
from harness.controller import LOOP, READ_EVERY_STEPS

GLOBAL_BATCH = 64


class _Runner:
    """One Trainer's K-step loop and decision point, outside `fit` (after a short fit built them)."""

    def __init__(self, contender: HarnessFit, workload: Workload):
        contender.first_step()
        self.trainer = contender.trainer
        self.controller = self.trainer.controller
        self.context = self.controller.context
        self.iterator = iter(self.trainer.distribute(workload.dataset_fn))

    def loops(self, calls: int, k: int, decide: bool, sync: bool = True) -> None:
        """`calls` K-step loop calls: bare, or as `fit` runs them (the votes they carry, their decision points)."""
        for _ in range(calls):
            if decide:  # as Controller._train_epoch does, its hooks and validation aside
                self.controller.run_loop(self.iterator, k)
                self.controller.state.global_step += k
                self.controller._decide(self.context, LOOP)  # pylint: disable=protected-access
            else:
                self.trainer.run_train_loop(self.iterator, k)
        if sync:
            self.trainer.restored_global_step()  # reads the step variable: every op of the block has run

    def pairs(self, count: int) -> dict[str, dict[str, float]]:
        """`count` blocks of READ_EVERY_STEPS bare one-step loop calls and as many blocks with their decision
        points, alternating (AB, BA, ...), each block timed: per kind, `count` times the median block's wall
        and CPU seconds. A block of decisions holds one point that reads what rode on the calls (see
        `harness.controller`); a median, not a sum, so that a block another process delayed does not move it."""
        times: dict[str, dict[str, list[float]]] = {name: {"wall_s": [], "cpu_s": []} for name in ("loop", "decide")}
        for i in range(count):
            for decide in ((False, True) if i % 2 == 0 else (True, False)):
                wall, cpu = time.perf_counter(), time.process_time()
                self.loops(READ_EVERY_STEPS, 1, decide, sync=False)
                kind = times["decide" if decide else "loop"]
                kind["wall_s"].append(time.perf_counter() - wall)
                kind["cpu_s"].append(time.process_time() - cpu)
        self.trainer.restored_global_step()
        return {name: {clock: statistics.median(values) * count for clock, values in kind.items()}
                for name, kind in times.items()}


def threads() -> int:
    """This process's threads (each collective under the harness's default collective timeout leaves some behind)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


def timed(fn, *args) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--steps_per_block", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--steps_per_execution", type=int, nargs="+", required=True)
    parser.add_argument("--decision", action="store_true", help="also measure the decision point at K=1")
    parser.add_argument("--decision_rounds", type=int, default=60)
    parser.add_argument("--decision_pairs", type=int, default=50)
    args = parser.parse_args(argv)
    from absl import logging  # pylint: disable=import-outside-toplevel

    logging.set_verbosity(logging.ERROR)
    strategy = harness.build_strategy("multi_worker_mirrored")
    info = harness.ClusterInfo.from_strategy(strategy)
    spec = ModelSpec("mlp", (8, 8, 1), GLOBAL_BATCH, epochs=1, steps_per_epoch=1)
    workload = Workload("multi_worker_mirrored", strategy, spec)
    cluster = _Runner(HarnessFit(workload, os.path.join(args.model_dir, "cluster")), workload)
    barrier = lambda: cluster.controller.maker.all_equal(0)  # one all-reduce: every worker is here
    single = None
    if info.worker_index == 0:
        alone = Workload("default", tf.distribute.get_strategy(), spec)
        single = _Runner(HarnessFit(alone, os.path.join(args.model_dir, "single")), alone)
    n = args.steps_per_block
    result: dict = {"workers": info.num_workers, "replicas": strategy.num_replicas_in_sync,
                    "global_batch_size": GLOBAL_BATCH, "steps_per_block": n, "decision": [], "cost": {},
                    "threads_start": threads()}

    if args.decision:
        result["decision_calls"] = args.decision_pairs * READ_EVERY_STEPS
        for r in range(args.decision_rounds + 1):  # the first round warms up
            barrier()
            sample = cluster.pairs(args.decision_pairs)
            if r:
                result["decision"].append(sample)

    for k in args.steps_per_execution:
        calls = max(1, n // k)
        samples = []
        for r in range(args.rounds + 1):  # the first round warms up
            sample = {"steps": calls * k}
            for name in (("cluster", "single") if r % 2 == 0 else ("single", "cluster")):
                barrier()
                if name == "cluster":
                    sample[name] = timed(cluster.loops, calls, k, True)
                elif single is not None:
                    sample[name] = timed(single.loops, calls, k, True)
            if r:
                samples.append(sample)
        result["cost"][str(k)] = samples
    barrier()
    result["threads_end"] = threads()
    if info.worker_index == 0:
        print("RESULT " + json.dumps(result), flush=True)
    barrier()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Past the last barrier nothing is left to do; TensorFlow's teardown of a cluster's threads (coordination
    # service, collectives) was seen to abort with std::system_error once the other worker had gone.
    os._exit(code)
