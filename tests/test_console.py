"""TensorFlow's C++ log lines are kept off stderr; every other line, and the last one before exit, passes."""

import os
import subprocess
import sys

import pytest

from harness.console import is_native_log
from tests.conftest import ROOT

NATIVE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"I0000 00:00:1795911595.317410    2453 port.cc:153] oneDNN custom operations are on. You may see slightly",
    b"E0000 00:00:1795912604.240089   24470 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
    b"W1129 01:08:08.339427 139664722049920 base_collective_executor.cc:252] BaseCollectiveExecutor::StartAbort",
    b"To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    b"appropriate compiler flags.",
]
OURS = [
    b"error: --epochs must be >= 1, got 0",
    b"W1129 01:08:08.339427 139664722049920 run.py:113] Cluster from TF_CONFIG: worker:0 of 2 training tasks.",
    b"Epoch 1/10 - 23 steps - 1.2s",
    b"Traceback (most recent call last):",
]


@pytest.mark.parametrize("line", NATIVE)
def test_native_log_lines_are_recognised(line):
    assert is_native_log(line)


@pytest.mark.parametrize("line", OURS)
def test_other_lines_are_not(line):
    assert not is_native_log(line)


def test_a_process_with_the_filter_shows_only_its_own_lines_and_the_last_one():
    code = (f"import os, sys; sys.path.insert(0, {ROOT!r}); from harness.console import FILTER; FILTER.install(); "
            f"[os.write(2, line + b'\\n') for line in {NATIVE!r}]; print('out', flush=True); "
            f"sys.stderr.write('error: the last line\\n'); os.write(2, b'no newline at the end')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout == b"out\n"
    assert result.stderr == b"error: the last line\nno newline at the end"


def test_stdout_lines_are_never_split_by_log_lines_in_a_pipe_that_carries_both():
    """The launcher runs workers unbuffered, with stdout and stderr in one pipe; a print is then two writes."""
    code = (f"import logging, sys; sys.path.insert(0, {ROOT!r}); from harness import console; console.configure(); "
            f"log = logging.getLogger('harness.t')\n"
            f"for i in range(3000):\n    print(f'out {{i}} done', flush=True); log.info('log %d done', i)")
    result = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=60)
    assert result.returncode == 0
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 6000 and all(line.endswith(" done") and line.count("done") == 1 for line in lines)
