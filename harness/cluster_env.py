"""Who am I in this cluster: one answer from whichever platform started this process.

A synchronous multi-worker job learns its layout from explicit flags, TF_CONFIG (Kubeflow
TFJob, by hand), Vertex AI's CLUSTER_SPEC, SLURM's step variables, a Kubernetes Indexed Job's
JOB_COMPLETION_INDEX (with a `--worker_hosts` pattern), or GKE's TPU host variables. Exactly one
source wins, in that order; the others that are also set are recorded, so the caller can say in
one line what it ignored. Every refusal is one line naming the variable or flag and the fix.
Pure Python: no TensorFlow, so a job can be checked (`--describe_cluster`) in milliseconds.

A training cluster of exactly one task is a single process, whatever the source: it needs no
TF_CONFIG (a one-task MultiWorkerMirroredStrategy would only open a port and wait for itself).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from harness import slurm_nodes
from harness.errors import UsageError

SOURCES = ("flags", "TF_CONFIG", "vertex", "slurm", "kubernetes", "tpu")  # precedence, highest first
TRAINING_TASK_TYPES = ("chief", "worker")
# What to name in a log line for each source.
SOURCE_VARIABLES = {"flags": "--worker_hosts", "TF_CONFIG": "TF_CONFIG", "vertex": "CLUSTER_SPEC",
                    "slurm": "SLURM_*", "kubernetes": "JOB_COMPLETION_INDEX", "tpu": "TPU_WORKER_*"}

_TF_CONFIG_EXAMPLE = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
_CLUSTER_SPEC_EXAMPLE = ('{"cluster": {"workerpool0": ["host0:2222"], "workerpool1": ["host1:2222"]}, '
                         '"task": {"type": "workerpool1", "index": 0}} (workerpool0 is the chief, workerpool1 the '
                         'workers, workerpool3 the evaluators)')
_VERTEX_POOLS = {"workerpool0": "chief", "workerpool1": "worker", "workerpool3": "evaluator"}
_log = logging.getLogger(__name__)

_Fail = Callable[[str], UsageError]
_Tasks = tuple[dict[str, list[str]], str, int, str | None]  # training cluster, task type, index, evaluator address


@dataclasses.dataclass(frozen=True)
class ResolvedCluster:
    """This process's role in the job; `task_type` None means a single process (no cluster)."""

    source: str  # one of SOURCES, or "none"
    task_type: str | None = None  # "chief", "worker" or "evaluator"
    task_index: int = 0
    cluster: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # training tasks only
    evaluator_address: str | None = None
    ignored_sources: tuple[str, ...] = ()
    tpu: str | None = None  # "local" on a single-host TPU environment

    @property
    def is_evaluator(self) -> bool:
        return self.task_type == "evaluator"

    @property
    def is_chief(self) -> bool:
        """chief:0 if the cluster lists a chief, else worker:0; a single process is its own chief."""
        if self.task_type is None:
            return True
        return (self.task_type, self.task_index) == ("chief" if self.cluster.get("chief") else "worker", 0)

    @property
    def worker_addresses(self) -> list[str]:
        """The training tasks' addresses, chief first: the order of `worker_index`."""
        return [*self.cluster.get("chief", []), *self.cluster.get("worker", [])]

    @property
    def num_workers(self) -> int:
        return len(self.worker_addresses) or 1

    @property
    def worker_index(self) -> int:
        if self.is_evaluator:
            return -1
        return self.task_index + (len(self.cluster.get("chief", [])) if self.task_type == "worker" else 0)

    def tf_config(self) -> dict[str, Any] | None:
        """What MultiWorkerMirroredStrategy needs in TF_CONFIG; None for a single process and an evaluator."""
        if self.task_type not in TRAINING_TASK_TYPES:
            return None
        return {"cluster": {job: list(addresses) for job, addresses in self.cluster.items()},
                "task": {"type": self.task_type, "index": self.task_index}}

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "task_type": self.task_type, "task_index": self.task_index,
                "is_chief": self.is_chief, "is_evaluator": self.is_evaluator, "num_workers": self.num_workers,
                "worker_index": self.worker_index, "worker_addresses": self.worker_addresses,
                "ignored_sources": list(self.ignored_sources), "tpu": self.tpu}

    def summary(self) -> str:
        """One log line, e.g. "cluster from TF_CONFIG: worker:1 of 3 training tasks (SLURM_* also set, ignored)"."""
        if self.task_type is None:
            role = "single-host TPU" if self.tpu else "single process"
        elif self.is_evaluator:
            role = f"evaluator:{self.task_index}, outside the {self.num_workers} training tasks"
        else:
            role = f"{self.task_type}:{self.task_index} of {self.num_workers} training tasks"
        origin = "no cluster environment" if self.source == "none" else f"cluster from {SOURCE_VARIABLES[self.source]}"
        ignored = ", ".join(SOURCE_VARIABLES[s] for s in self.ignored_sources)
        return f"{origin}: {role}" + (f" ({ignored} also set, ignored)" if ignored else "")


def _failer(variable: str, example: str) -> _Fail:
    return lambda problem: UsageError(f"{variable} {problem}; expected e.g. {example}")


def _address_problem(address: Any) -> str | None:
    if not isinstance(address, str) or ":" not in address:
        return "is not 'host:port'"
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "is not 'host:port' with a port in 1..65535"
    return None


def _json_object(raw: str, fail: _Fail) -> Mapping[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise fail(f"is not valid JSON ({e.msg} at position {e.pos})") from None
    if not isinstance(value, Mapping):
        raise fail("must be a JSON object")
    return value


def _tasks(config: Mapping[str, Any], fail: _Fail) -> _Tasks:
    """Validates a TF_CONFIG-shaped config: (training cluster, task type, task index, evaluator's own address)."""
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, Mapping) or not cluster:
        raise fail("has no 'cluster' object listing the tasks' addresses")
    if not isinstance(task, Mapping):
        raise fail("has no 'task' object saying which task this process is")
    cluster = {str(job): addresses for job, addresses in cluster.items()}
    task_type, task_index = task.get("type"), task.get("index", 0)
    if "master" in cluster or task_type == "master":  # legacy name of chief (tensorflow issue 27058)
        if "chief" in cluster:
            raise fail("has both 'master' and 'chief' tasks; keep only 'chief'")
        _log.warning("task type 'master' is the legacy name of 'chief'; treating it as 'chief'.")
        cluster = {"chief" if job == "master" else job: addresses for job, addresses in cluster.items()}
        task_type = "chief" if task_type == "master" else task_type

    for job, addresses in cluster.items():
        if job == "ps":
            raise fail("cluster has a 'ps' job (parameter servers), but synchronous training uses chief and "
                       "worker tasks only; remove the 'ps' tasks")
        if job not in (*TRAINING_TASK_TYPES, "evaluator"):
            raise fail(f"cluster has a {job!r} job, which synchronous training does not use; "
                       "list only chief and worker tasks (and an evaluator)")
        if not isinstance(addresses, list) or not addresses:
            raise fail(f"cluster job {job!r} must be a non-empty list of 'host:port' addresses")
        for i, address in enumerate(addresses):
            problem = _address_problem(address)
            if problem:
                raise fail(f"address {address!r} of {job}:{i} {problem}")
    if len(cluster.get("chief", [])) > 1:
        raise fail(f"lists {len(cluster['chief'])} chief tasks; a cluster has at most one chief")
    every = [address for addresses in cluster.values() for address in addresses]
    repeated = sorted({address for address in every if every.count(address) > 1})
    if repeated:
        raise fail(f"lists the address {repeated[0]} more than once; give every task its own port")
    evaluators = cluster.pop("evaluator", [])
    if not cluster:
        raise fail("lists no chief or worker task; synchronous training needs at least one")

    if task_type == "ps":
        raise fail("task type 'ps' is a parameter server, but synchronous training uses chief and worker tasks only")
    if task_type not in (*TRAINING_TASK_TYPES, "evaluator"):
        raise fail(f"task type {task_type!r} is unknown; use 'chief', 'worker' or 'evaluator'")
    if task_type != "evaluator" and task_type not in cluster:
        raise fail(f"task type {task_type!r} has no entry in 'cluster'")
    if isinstance(task_index, bool) or not isinstance(task_index, int):
        raise fail(f"task index {task_index!r} is not an integer")
    count = len(evaluators) if task_type == "evaluator" else len(cluster[task_type])
    if task_index < 0 and not count:
        raise fail(f"task index {task_index} is out of range: it must be >= 0")
    if task_index < 0 or (count and task_index >= count):
        raise fail(f"task index {task_index} is out of range: cluster has {count} {task_type} task(s), "
                   f"indices 0..{count - 1}")
    own_address = evaluators[task_index] if evaluators and task_type == "evaluator" else None
    return cluster, task_type, task_index, own_address


def _parse_tf_config(raw: str) -> tuple[Mapping[str, Any], _Tasks]:
    fail = _failer("TF_CONFIG", _TF_CONFIG_EXAMPLE)
    config = _json_object(raw, fail)
    if "sparseCluster" in config:
        raise fail("has a 'sparseCluster' (a TFJob with enableDynamicWorker), but synchronous training needs "
                   "every task to know the whole cluster; set enableDynamicWorker: false")
    return config, _tasks(config, fail)


def parse_tf_config(raw: str) -> dict[str, Any]:
    """Parses and validates a TF_CONFIG string for synchronous multi-worker training.

    Returns it normalised: a legacy `master` task is renamed `chief` (every process maps it the
    same way), and an evaluator's address is taken out of `cluster` (an evaluator must not join
    the training cluster: tensorflow issue 46169). Other top-level keys pass through.
    """
    config, (cluster, task_type, task_index, _) = _parse_tf_config(raw)
    return {**config, "cluster": cluster, "task": {**config["task"], "type": task_type, "index": task_index}}


def _vertex(raw: str) -> _Tasks:
    """Vertex AI's CLUSTER_SPEC: workerpool0 is the chief, workerpool1 the workers, workerpool3 the evaluators."""
    fail = _failer("CLUSTER_SPEC", _CLUSTER_SPEC_EXAMPLE)
    spec = _json_object(raw, fail)
    cluster, task = spec.get("cluster"), spec.get("task")
    if not isinstance(cluster, Mapping) or not isinstance(task, Mapping):
        return _tasks(spec, fail)  # says which object is missing
    if task.get("type") == "workerpool2":
        raise fail("puts this task in workerpool2 (a parameter server), but synchronous training uses workerpool0 "
                   "(chief) and workerpool1 (workers) only; remove workerPoolSpecs[2] from the job")
    if "workerpool2" in cluster:
        raise fail("lists workerpool2 (parameter servers or a Reduction Server), which this harness does not drive: "
                   "its workers all-reduce among themselves; remove workerPoolSpecs[2] from the job")
    unknown = sorted(set(cluster) - set(_VERTEX_POOLS))
    if unknown:
        raise fail(f"cluster has a {unknown[0]!r} pool; Vertex AI names worker pools workerpool0..workerpool3")
    pool = task.get("type")
    if pool not in _VERTEX_POOLS:
        raise fail(f"task type {pool!r} is not a worker pool of this job; use workerpool0, workerpool1 or workerpool3")
    renamed = {"cluster": {_VERTEX_POOLS[name]: addresses for name, addresses in cluster.items()},
               "task": {**task, "type": _VERTEX_POOLS[pool]}}
    return _tasks(renamed, fail)


def _index_variable(environ: Mapping[str, str], name: str) -> int:
    value = environ[name].strip()
    if not value.isdigit():
        raise UsageError(f"{name}={value!r} is not a non-negative integer; unset it or let the scheduler set it")
    return int(value)


def _flag_addresses(worker_hosts: str, num_workers: int | None, port: int | None) -> list[str]:
    """`--worker_hosts` as a list of addresses: `host:port,...`, or a `{index}` pattern expanded `num_workers` times."""
    spec = worker_hosts.strip()
    if num_workers is not None and num_workers < 1:
        raise UsageError(f"--num_workers={num_workers} must be >= 1")
    if "{" in spec.replace("{index}", "") or "}" in spec.replace("{index}", ""):
        raise UsageError(f"--worker_hosts={spec!r} has a placeholder other than {{index}}; "
                         "write e.g. 'train-{index}.train:2222'")
    if "{index}" in spec:
        if "," in spec:
            raise UsageError(f"--worker_hosts={spec!r} mixes a pattern and a list; give either one pattern like "
                             "'train-{index}.train:2222' with --num_workers, or 'host1:port,host2:port'")
        if num_workers is None:
            raise UsageError(f"--worker_hosts={spec!r} is a pattern: pass --num_workers=N to expand it to N hosts")
        hosts = [spec.replace("{index}", str(i)) for i in range(num_workers)]
    else:
        hosts = [host.strip() for host in spec.split(",")]
        if num_workers is not None and num_workers != len(hosts):
            raise UsageError(f"--num_workers={num_workers} but --worker_hosts lists {len(hosts)} hosts; "
                             "make them agree, or drop --num_workers")
    addresses = []
    for host in hosts:
        if host and ":" not in host:
            if port is None:
                raise UsageError(f"--worker_hosts entry {host!r} has no port; write 'host:port' or pass --port")
            host = f"{host}:{port}"
        problem = _address_problem(host)
        if problem:
            raise UsageError(f"--worker_hosts entry {host!r} {problem}; e.g. --worker_hosts=host1:2222,host2:2222")
        addresses.append(host)
    repeated = sorted({address for address in addresses if addresses.count(address) > 1})
    if repeated:
        raise UsageError(f"--worker_hosts lists {repeated[0]} more than once; give every task its own address")
    return addresses


def _flags(environ: Mapping[str, str], worker_hosts: str, num_workers: int | None, task_type: str | None,
           task_index: int | None, port: int | None) -> tuple[str, _Tasks]:
    """Every host of `--worker_hosts` is a worker and worker 0 is the chief; an evaluator is none of them."""
    addresses = _flag_addresses(worker_hosts, num_workers, port)
    task_type = task_type or "worker"
    if task_type == "chief":
        raise UsageError("--task_type=chief: with --worker_hosts the first host is the chief; "
                         "pass --task_type=worker --task_index=0")
    if task_type not in ("worker", "evaluator"):
        raise UsageError(f"--task_type={task_type!r} is unknown; use 'worker' (the default) or 'evaluator'")
    source = "flags"
    if task_index is None and environ.get("JOB_COMPLETION_INDEX", "").strip():
        task_index, source = _index_variable(environ, "JOB_COMPLETION_INDEX"), "kubernetes"
    elif task_index is None and task_type == "worker":
        raise UsageError("--worker_hosts needs --task_index (this process's position in the list, from 0), unless "
                         "a Kubernetes Indexed Job sets JOB_COMPLETION_INDEX")
    task_index = task_index or 0
    where = "JOB_COMPLETION_INDEX" if source == "kubernetes" else "--task_index"
    if task_index < 0:
        raise UsageError(f"{where}={task_index} must be >= 0")
    if task_type == "worker" and task_index >= len(addresses):
        fix = "make --num_workers equal the Job's completions" if source == "kubernetes" else \
            "list every worker in --worker_hosts"
        raise UsageError(f"{where}={task_index} is out of range for {len(addresses)} workers in --worker_hosts "
                         f"(indices 0..{len(addresses) - 1}); {fix}")
    return source, ({"worker": addresses}, task_type, task_index, None)


def _check_tpu(environ: Mapping[str, str]) -> None:
    hosts = [host for host in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if host.strip()]
    worker_id = environ.get("TPU_WORKER_ID", "").strip()
    if len(hosts) > 1 or worker_id not in ("", "0"):
        what = f"TPU_WORKER_HOSTNAMES lists {len(hosts)} hosts" if len(hosts) > 1 else f"TPU_WORKER_ID={worker_id!r}"
        raise UsageError(f"{what}: a multi-host TPU pod slice, which this harness does not support yet; it runs on "
                         "single-host TPU VMs (--strategy=tpu --tpu=local) and on TPUs it reaches by name "
                         "(--strategy=tpu --tpu=<name>)")


def present_sources(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The environment sources that are set, highest precedence first (a one-task SLURM step is not a cluster)."""
    present = []
    if environ.get("TF_CONFIG", "").strip():
        present.append("TF_CONFIG")
    if environ.get("CLUSTER_SPEC", "").strip():
        present.append("vertex")
    if slurm_nodes.is_multi_task_step(environ):
        present.append("slurm")
    if environ.get("JOB_COMPLETION_INDEX", "").strip():
        present.append("kubernetes")
    if environ.get("TPU_WORKER_HOSTNAMES", "").strip() or environ.get("TPU_WORKER_ID", "").strip():
        present.append("tpu")
    return tuple(present)


def resolve_cluster(environ: Mapping[str, str], *, worker_hosts: str | None = None, num_workers: int | None = None,
                    task_type: str | None = None, task_index: int | None = None,
                    port: int | None = None) -> ResolvedCluster:
    """This process's role, from the first source present: flags, TF_CONFIG, Vertex AI, SLURM, Kubernetes, TPU.

    `port` is SLURM's base port (default 8888) and the port of `--worker_hosts` entries without one.
    Raises UsageError (one line, naming the variable or flag) when the winning source is invalid.
    """
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"--port={port} is not a port; use 1..65535")
    present = present_sources(environ)
    tpu = None
    if worker_hosts and worker_hosts.strip():
        source, tasks = _flags(environ, worker_hosts, num_workers, task_type, task_index, port)
    else:
        for flag, value in (("num_workers", num_workers), ("task_type", task_type), ("task_index", task_index)):
            if value is not None:
                raise UsageError(f"--{flag} only applies with --worker_hosts; pass --worker_hosts too, "
                                 f"or drop --{flag}")
        source, tasks = next(iter(present), "none"), None
        if source == "TF_CONFIG":
            _, tasks = _parse_tf_config(environ["TF_CONFIG"])
        elif source == "vertex":
            tasks = _vertex(environ["CLUSTER_SPEC"])
        elif source == "slurm":
            addresses, rank = slurm_nodes.task_addresses(environ, port)
            tasks = {"worker": addresses}, "worker", rank, None
        elif source == "kubernetes" and "tpu" not in present:
            raise UsageError("JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but not the workers' addresses; "
                             "pass --worker_hosts='<pod>-{index}.<service>:<port>' --num_workers=N")
        elif source in ("kubernetes", "tpu"):  # GKE numbers TPU hosts with Indexed Jobs too
            _check_tpu(environ)
            source, tpu = "tpu", "local"
    ignored = tuple(s for s in present if s != source)
    if tasks is None:
        return ResolvedCluster(source, ignored_sources=ignored, tpu=tpu)
    cluster, task_type, task_index, evaluator_address = tasks
    if task_type != "evaluator" and sum(map(len, cluster.values())) == 1:
        return ResolvedCluster(source, ignored_sources=ignored)  # one training task, and it is this process
    return ResolvedCluster(source, task_type, task_index, cluster, evaluator_address, ignored)


def default_output_dirs(environ: Mapping[str, str]) -> dict[str, str]:
    """Vertex AI's output directories (from the job's baseOutputDirectory), for callers that default to them."""
    names = {"model_dir": "AIP_MODEL_DIR", "checkpoint_dir": "AIP_CHECKPOINT_DIR",
             "tensorboard_dir": "AIP_TENSORBOARD_LOG_DIR"}
    return {key: environ[name] for key, name in names.items() if environ.get(name, "").strip()}
