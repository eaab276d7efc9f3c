"""A SLURM step's tasks and their addresses, from the variables srun sets, in pure Python.

TensorFlow's SlurmClusterResolver asks `scontrol` for host names and `nvidia-smi` for GPUs;
neither exists on every node (CPU-only nodes, containers). The variables SLURM sets for a
step say everything needed: `n[1-2,5],gpu-[01-03]` names the nodes, `2(x2),1` says how many
tasks run on each, and tasks fill the nodes in order (block distribution), each listening on
the base port plus its rank on the node.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping

from harness.errors import UsageError

DEFAULT_BASE_PORT = 8888
NODELIST_VARIABLES = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST")
TASK_COUNT_VARIABLES = ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
TASKS_PER_NODE_VARIABLES = ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")

_NODELIST_EXAMPLE = "n[1-2,5],gpu-[01-03]"
_TASKS_PER_NODE_EXAMPLE = "2(x2),1"
_PIECE = re.compile(r"\[[^\[\]]*\]|[^\[\]]+")
_TASKS = re.compile(r"(\d+)(?:\(x(\d+)\))?")


def _groups(nodelist: str) -> list[str]:
    """Splits at the commas outside brackets: `n[1-2],m5` -> `n[1-2]`, `m5`."""
    groups, depth, current = [], 0, ""
    for char in nodelist:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise ValueError("unbalanced brackets")
        if char == "," and depth == 0:
            groups.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise ValueError("unbalanced brackets")
    return [*groups, current]


def _numbers(body: str) -> list[str]:
    """`1-2,5` -> 1 2 5; `01-03` -> 01 02 03 (zero-padded to the width of the lower bound, as SLURM does)."""
    numbers = []
    for part in body.split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()) or (dash and int(high) < int(low)):
            raise ValueError(f"bad range {part!r}")
        numbers += [str(n).zfill(len(low)) for n in range(int(low), int(high if dash else low) + 1)]
    return numbers


def _expand_group(group: str) -> list[str]:
    """`a[1-2]b[3-4]` -> a1b3 a1b4 a2b3 a2b4 (every bracket is a dimension, the leftmost varies slowest)."""
    pieces = _PIECE.findall(group)
    if not group or "".join(pieces) != group:
        raise ValueError(f"bad host name {group!r}")
    choices = [_numbers(piece[1:-1]) if piece.startswith("[") else [piece] for piece in pieces]
    return ["".join(names) for names in itertools.product(*choices)]


def expand_nodelist(nodelist: str, variable: str) -> list[str]:
    """The node names of a SLURM node list, in its order; `variable` names it in errors."""
    try:
        nodes = [node for group in _groups(nodelist.strip()) for node in _expand_group(group)]
    except ValueError as e:
        raise UsageError(f"{variable}={nodelist!r} is not a SLURM node list ({e}); expected e.g. "
                         f"{_NODELIST_EXAMPLE!r}: start the tasks with srun, which sets it") from None
    repeated = sorted({node for node in nodes if nodes.count(node) > 1})
    if repeated:
        raise UsageError(f"{variable}={nodelist!r} names node {repeated[0]!r} more than once; "
                         "start the tasks with srun, which lists every node once")
    return nodes


def expand_tasks_per_node(tasks_per_node: str, variable: str) -> list[int]:
    """`2(x2),1` -> [2, 2, 1]: tasks on each node of the node list, in its order."""
    counts = []
    for part in tasks_per_node.strip().split(","):
        match = _TASKS.fullmatch(part.strip())
        if not match or int(match[1]) < 1 or (match[2] and int(match[2]) < 1):
            raise UsageError(f"{variable}={tasks_per_node!r} is not a SLURM tasks-per-node list (bad part {part!r}); "
                             f"expected e.g. {_TASKS_PER_NODE_EXAMPLE!r}: start the tasks with srun, which sets it")
        counts += [int(match[1])] * int(match[2] or 1)
    return counts


def block_layout(tasks_per_node: list[int]) -> list[tuple[int, int]]:
    """(node index, local rank) of every task: consecutive task ids share a node, nodes in list order."""
    return [(node, local) for node, count in enumerate(tasks_per_node) for local in range(count)]


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    """The first of `names` that is set and not empty (step variables before job variables)."""
    return next((name for name in names if environ.get(name, "").strip()), None)


def _count(environ: Mapping[str, str], name: str) -> int:
    value = environ[name].strip()
    if not value.isdigit():
        raise UsageError(f"{name}={value!r} is not a non-negative integer; start the tasks with srun, which sets it")
    return int(value)


def is_multi_task_step(environ: Mapping[str, str]) -> bool:
    """SLURM_PROCID and a node list are set, and the step does not declare a single task."""
    count = _first(environ, TASK_COUNT_VARIABLES)
    return bool(environ.get("SLURM_PROCID", "").strip() and _first(environ, NODELIST_VARIABLES)
                and not (count and environ[count].strip() == "1"))


def _tasks_per_node(environ: Mapping[str, str], nodes: list[str], nodes_var: str) -> list[int]:
    count_var, per_node_var = _first(environ, TASK_COUNT_VARIABLES), _first(environ, TASKS_PER_NODE_VARIABLES)
    num_tasks = _count(environ, count_var) if count_var else None
    if not per_node_var:
        if num_tasks and num_tasks % len(nodes) == 0:
            return [num_tasks // len(nodes)] * len(nodes)
        raise UsageError(f"SLURM_STEP_TASKS_PER_NODE is not set and {num_tasks or 'an unknown number of'} tasks do "
                         f"not split evenly over the {len(nodes)} nodes of {nodes_var}; start the tasks with srun")
    per_node = expand_tasks_per_node(environ[per_node_var], per_node_var)
    if len(per_node) != len(nodes):
        raise UsageError(f"{per_node_var}={environ[per_node_var]!r} describes {len(per_node)} nodes but {nodes_var}="
                         f"{environ[nodes_var]!r} lists {len(nodes)}; start the tasks with srun, which sets "
                         "matching SLURM_STEP_* variables")
    if num_tasks is not None and sum(per_node) != num_tasks:
        raise UsageError(f"{count_var}={num_tasks} but {per_node_var}={environ[per_node_var]!r} places "
                         f"{sum(per_node)} tasks; start the tasks with srun, which sets matching SLURM_STEP_* "
                         "variables")
    return per_node


def task_addresses(environ: Mapping[str, str], base_port: int | None = None) -> tuple[list[str], int]:
    """(every task's 'node:port', this task's SLURM_PROCID) for a step whose tasks fill the nodes in order."""
    nodes_var = _first(environ, NODELIST_VARIABLES)
    nodes = expand_nodelist(environ[nodes_var], nodes_var)
    per_node = _tasks_per_node(environ, nodes, nodes_var)
    base = DEFAULT_BASE_PORT if base_port is None else base_port
    if base + max(per_node) - 1 > 65535:
        raise UsageError(f"--port={base} leaves no room for {max(per_node)} tasks per node (ports {base}.."
                         f"{base + max(per_node) - 1}); use a lower --port")
    layout = block_layout(per_node)
    rank = _count(environ, "SLURM_PROCID")
    if rank >= len(layout):
        raise UsageError(f"SLURM_PROCID={rank} is out of range for a step of {len(layout)} tasks; "
                         "start the tasks with srun")
    node, local_rank = layout[rank]
    here, local_id = environ.get("SLURMD_NODENAME", "").strip(), environ.get("SLURM_LOCALID", "").strip()
    if (here and here != nodes[node]) or (local_id and local_id != str(local_rank)):
        raise UsageError(f"SLURM_PROCID={rank} should be local task {local_rank} on node {nodes[node]} but runs as "
                         f"SLURM_LOCALID={local_id or '?'} on SLURMD_NODENAME={here or '?'}: tasks are not laid out "
                         "in block order; start them with srun --distribution=block")
    return [f"{nodes[n]}:{base + local}" for n, local in layout], rank
