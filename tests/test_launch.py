"""The local launcher, with fake tasks (tests/launch_tasks/task.py, no TensorFlow): TF_CONFIG of every task,
usage errors, exit codes and summary lines, restarts, signals, and that no process outlives it."""

import io
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from harness.errors import UsageError
from harness.launch import launch, local_cluster, tasks, train_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, "scripts/launch_local.py")
TASK = os.path.join(ROOT, "tests/launch_tasks/task.py")
FAST = {"grace_s": 0.3, "kill_after_s": 0.5}


def run_tasks(tmp_path, *specs, num_workers=2, **options):
    """Launches task.py in-process; returns the exit code and the output."""
    out = io.StringIO()
    code = launch([sys.executable, TASK, str(tmp_path), *specs], num_workers=num_workers, out=out,
                  **{**FAST, **options})
    return code, out.getvalue()


def start_launcher(*args):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return subprocess.Popen([sys.executable, LAUNCHER, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def starts(tmp_path):
    path = tmp_path / "starts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def alive(pid):
    """Whether `pid` runs (a zombie, dead but not yet reaped by its parent, does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def assert_nothing_left(tmp_path):
    """No task or child of one runs (SIGKILLed ones get a moment to die: the signal is delivered asynchronously)."""
    pids, deadline = [int(p) for p in (tmp_path / "pids").read_text().split()], time.monotonic() + 1
    while [p for p in pids if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pids and not [p for p in pids if alive(p)]


def launcher_lines(output):
    return [line for line in output.splitlines() if line.startswith("[launcher] ")]


def test_help_exits_0_at_once():
    began = time.monotonic()
    process = start_launcher("--help")
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert time.monotonic() - began < 2
    assert "--max_restarts" in out and "--evaluator" in out and "--script" in out


def test_the_launcher_imports_no_tensorflow():
    code = ("import importlib.util, sys; sys.path.insert(0, sys.argv[1]); import harness.launch; "
            "spec = importlib.util.spec_from_file_location('launch_local', sys.argv[2]); "
            "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    result = subprocess.run([sys.executable, "-c", code, ROOT, LAUNCHER], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


TASKS = "--script={task} -- {dir} *=exit:0"  # a task would record its start


@pytest.mark.parametrize("args, names", [
    ("--bogus " + TASKS, "'bogus'"),
    ("--epochs=3 " + TASKS, "'epochs'"),  # a training flag before `--`
    ("extra " + TASKS, "'extra'"),  # an argument before `--`
    ("--num_workers=0 " + TASKS, "--num_workers"),
    ("--num_workers=-1 --chief " + TASKS, "--num_workers"),
    ("--num_workers=0 --evaluator " + TASKS, "--num_workers"),  # an evaluator does not train
    ("--num_workers=two " + TASKS, "--num_workers=two"),
    ("--grace_s=-1 " + TASKS, "--grace_s"),
    ("--grace_s=nan " + TASKS, "--grace_s"),
    ("--grace_s=inf " + TASKS, "--grace_s"),
    ("--kill_after_s=-inf " + TASKS, "--kill_after_s"),
    ("--kill_after_s=nan " + TASKS, "--kill_after_s"),
    ("--max_restarts=-1 " + TASKS, "--max_restarts"),
    ("--script=no_such_script.py -- {dir}", "no_such_script.py"),
    ("-- --strategy=mirrored --model_dir={dir}", "'mirrored'"),
    ("--num_workers=1 -- --model_dir={dir} --strategy one_device", "'one_device'"),
    ("-- --strategy=multi_worker_mirrored -strategy=default", "'default'"),  # absl: the last one counts
    ("-- --epochs=1 --strategy", "''"),
])
def test_a_usage_error_is_one_line_exit_2_and_starts_nothing(tmp_path, args, names):
    process = start_launcher(*shlex.split(args.format(task=TASK, dir=tmp_path)))
    out, err = process.communicate(timeout=30)
    assert process.returncode == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and names in err, err
    assert "Traceback (most recent call last)" not in out + err
    assert out == "" and not starts(tmp_path)


@pytest.mark.parametrize("options", [{"num_workers": 0}, {"grace_s": math.nan}, {"kill_after_s": -1.0},
                                     {"max_restarts": -1}])
def test_launch_refuses_bad_options_before_starting_anything(tmp_path, options):
    with pytest.raises(UsageError, match=f"^--{next(iter(options))} must be"):
        run_tasks(tmp_path, **options)
    assert not starts(tmp_path)


@pytest.mark.parametrize("args, expected", [
    ([], ["--strategy=multi_worker_mirrored"]),
    (["--epochs=1"], ["--strategy=multi_worker_mirrored", "--epochs=1"]),
    (["--strategy=multi_worker_mirrored", "--epochs=1"], ["--strategy=multi_worker_mirrored", "--epochs=1"]),
    (["--strategy", "multi_worker_mirrored"], ["--strategy", "multi_worker_mirrored"]),
])
def test_train_py_runs_as_multi_worker(args, expected):
    assert train_args(args) == expected


def test_a_user_script_gets_exactly_the_arguments_after_the_separator(tmp_path):
    args = [str(tmp_path), "*=print:hello", "--strategy=mirrored", "--", "plain"]
    process = start_launcher("--num_workers=1", f"--script={TASK}", "--", *args)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, out + err
    assert [s["args"] for s in starts(tmp_path)] == [args[1:]]
    assert "[worker:0] hello" in out and "[launcher] all tasks finished" in out


@pytest.mark.parametrize("num_workers, chief, evaluator", [(2, False, True), (1, True, True), (0, True, False)])
def test_every_task_sees_the_cluster_and_its_own_task(tmp_path, num_workers, chief, evaluator):
    code, output = run_tasks(tmp_path, num_workers=num_workers, with_chief=chief, with_evaluator=evaluator)
    assert code == 0, output
    seen = {(s["tf_config"]["task"]["type"], s["tf_config"]["task"]["index"]): s["tf_config"] for s in starts(tmp_path)}
    cluster = next(iter(seen.values()))["cluster"]
    jobs = {"chief": int(chief), "worker": num_workers, "evaluator": int(evaluator)}
    assert {job: len(addresses) for job, addresses in cluster.items()} == {j: n for j, n in jobs.items() if n}
    addresses = [a for job in cluster.values() for a in job]
    assert len(set(addresses)) == len(addresses) and all(a.startswith("127.0.0.1:") for a in addresses)
    assert seen == {(job, i): {"cluster": cluster, "task": {"type": job, "index": i}}
                    for job, n in jobs.items() for i in range(n)}


def test_the_launcher_waits_for_the_evaluator_too(tmp_path):
    code, output = run_tasks(tmp_path, "evaluator:0=sleep:0.5;print:evaluated", with_evaluator=True)
    assert code == 0, output
    assert output.splitlines()[-2:] == ["[evaluator:0] evaluated", "[launcher] all tasks finished"]


def test_local_cluster_lists_the_evaluator_last():
    cluster = local_cluster(2, with_chief=True, with_evaluator=True)
    assert list(cluster) == ["chief", "worker", "evaluator"]
    assert tasks(cluster) == [("chief", 0), ("worker", 0), ("worker", 1), ("evaluator", 0)]


# Each case: what the tasks do, launch options, the exit code, how many times the tasks ran, what the launcher said
# (besides "stopping the other tasks").
RESTARTS = {
    "killed once, restarted": (["worker:1=kill_once", "*=sleep:1"], {"max_restarts": 1}, 0, 2, [
        "worker:1 was killed by SIGKILL; restarting every task (restart 1 of 1)", "all tasks finished"]),
    "killed, no restarts": (["worker:1=kill_once", "*=sleep:1"], {}, 137, 1, [
        "failed: worker:1 was killed by SIGKILL"]),
    "the evaluator killed once": (["evaluator:0=kill_once", "*=sleep:1"], {"max_restarts": 2, "with_evaluator": True},
                                  0, 2, ["evaluator:0 was killed by SIGKILL; restarting every task (restart 1 of 2)",
                                         "all tasks finished"]),
    "fails every time": (["worker:1=print:error: disk full;exit:3", "*=sleep:1"], {"max_restarts": 2}, 3, 3, [
        "worker:1 exited with code 3: disk full; restarting every task (restart 1 of 2)",
        "worker:1 exited with code 3: disk full; restarting every task (restart 2 of 2)",
        "failed: worker:1 exited with code 3: disk full"]),
    "usage error": (["worker:0=print:error: --epochs must be >= 1;exit:2", "*=sleep:1"], {"max_restarts": 3}, 2, 1, [
        "failed: worker:0 exited with code 2: --epochs must be >= 1"]),
    "preempted": (["worker:1=exit:75", "*=on_term:75;sleep:5"], {"max_restarts": 3, "grace_s": 1}, 75, 1, [
        "worker:1 was preempted (exit 75): saved; rerun the same command to resume"]),
}


@pytest.mark.parametrize("specs, options, code, runs, lines", RESTARTS.values(), ids=RESTARTS.keys())
@pytest.mark.slow
def test_restarts(tmp_path, specs, options, code, runs, lines):
    got, output = run_tasks(tmp_path, *specs, **options)
    assert got == code, output
    said = launcher_lines(output)
    assert [line for line in said if "stopping the other tasks" not in line] == [f"[launcher] {x}" for x in lines]
    clusters = [s["tf_config"]["cluster"] for s in starts(tmp_path) if s["tf_config"]["task"]["index"] == 0
                and s["tf_config"]["task"]["type"] == "worker"]
    assert len(clusters) == runs and len({json.dumps(c) for c in clusters}) == runs  # new ports every time
    assert_nothing_left(tmp_path)


def test_the_summary_names_the_first_task_that_failed_with_its_error_line(tmp_path):
    code, output = run_tasks(tmp_path, "worker:1=print:error: disk full;exit:1",
                             "worker:0=sleep:0.5;print:error: lost worker:1 (127.0.0.1:1);exit:4", grace_s=10)
    assert code == 1, output
    assert "[worker:0] error: lost worker:1 (127.0.0.1:1)" in output
    assert launcher_lines(output) == [
        "[launcher] worker:1 exited with code 1: disk full; stopping the other tasks within 10.5s",
        "[launcher] failed: worker:1 exited with code 1: disk full"]


def test_a_traceback_is_summarized_by_its_exception_line(tmp_path):
    code, output = run_tasks(tmp_path, "worker:0=print:loading;raise:boom", "*=sleep:2")
    assert code == 1, output
    assert "[worker:0] Traceback (most recent call last):" in output and "[worker:0] ValueError: boom" in output
    assert launcher_lines(output)[-1] == ("[launcher] failed: worker:0 exited with code 1: ValueError: boom "
                                          "(a traceback; its full output is above)")
    assert all(line.startswith(("[worker:0] ", "[worker:1] ", "[launcher] ")) for line in output.splitlines())


def test_binary_garbage_and_a_very_long_line_do_not_stop_the_output(tmp_path):
    code, output = run_tasks(tmp_path, "worker:0=garbage;print:done")
    assert code == 0, output[-2000:]
    lines = output.splitlines()
    assert "[worker:0] \ufffd\ufffd bad \x00 bytes" in lines and "[worker:0] after" in lines
    assert "[worker:0] done" in lines and output.count("x") == 1_000_000
    assert max(len(line) for line in lines) < 70_000  # shown in pieces


def test_a_tasks_printed_lines_are_never_split_by_its_other_threads_lines(tmp_path):
    code, output = run_tasks(tmp_path, "*=chatter:3000")
    assert code == 0, output[-2000:]
    tasks_lines = [line for line in output.splitlines() if not line.startswith("[launcher] ")]
    assert len(tasks_lines) == 2 * 2 * 3000
    assert all(line.endswith(" done") and line.count("done") == 1 for line in tasks_lines)


def test_a_task_that_ignores_sigterm_is_killed_in_bounded_time(tmp_path):
    began = time.monotonic()
    code, output = run_tasks(tmp_path, "worker:1=exit:1", "*=ignore:TERM;child;sleep:60")
    assert code == 1 and time.monotonic() - began < 10, output
    assert launcher_lines(output)[-1] == "[launcher] failed: worker:1 exited with code 1"
    assert_nothing_left(tmp_path)


def test_children_of_a_finished_task_do_not_outlive_the_launcher(tmp_path):
    code, output = run_tasks(tmp_path, "*=child;print:done")
    assert code == 0, output
    assert_nothing_left(tmp_path)


def wait_until_ready(tmp_path, process, count):
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("ready.*"))) < count:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)


def test_sigterm_to_the_launcher_reaches_every_task_and_it_exits_75(tmp_path):
    process = start_launcher("--num_workers=2", "--evaluator", f"--script={TASK}", "--", str(tmp_path),
                             "*=on_term:75;child;ready;sleep:60")
    wait_until_ready(tmp_path, process, 3)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 75, out + err
    assert "[launcher] received SIGTERM; forwarding it to every task" in out
    assert launcher_lines(out)[-1] == ("[launcher] stopped on SIGTERM: every task exited 0 or 75; saved; rerun the "
                                       "same command to resume")
    assert_nothing_left(tmp_path)


def test_sigterm_to_the_launcher_exits_with_a_tasks_failure(tmp_path):
    process = start_launcher("--num_workers=2", f"--script={TASK}", "--grace_s=5", "--", str(tmp_path),
                             "worker:1=on_term:3;ready;sleep:60", "*=on_term:75;ready;sleep:60")
    wait_until_ready(tmp_path, process, 2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 3, out + err
    assert launcher_lines(out)[-1] == "[launcher] failed: worker:1 exited with code 3"


def test_a_second_ctrl_c_kills_every_task_at_once(tmp_path):
    process = start_launcher("--num_workers=2", f"--script={TASK}", "--max_restarts=3", "--", str(tmp_path),
                             "*=ignore:INT;child;ready;sleep:60")
    wait_until_ready(tmp_path, process, 2)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    began = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130 and time.monotonic() - began < 5, out + err
    assert launcher_lines(out)[-2:] == ["[launcher] received SIGINT again; killing every task",
                                        "[launcher] killed every task on a second SIGINT"]
    assert len(starts(tmp_path)) == 2  # not restarted
    assert_nothing_left(tmp_path)
