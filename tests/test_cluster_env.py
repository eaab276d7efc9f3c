"""Who am I in this cluster: recorded platform environments -> the role each task resolves to.

Pure Python (no TensorFlow, no subprocess): every environment is a dict handed to
`resolve_cluster`, and every example under docs/examples is read and simulated as its platform
would start it.
"""

import ast
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from harness import slurm_nodes
from harness.cluster_env import SOURCES, default_output_dirs, parse_tf_config, resolve_cluster
from harness.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "docs", "examples")


def cfg(cluster, task, **extra):
    return json.dumps({"cluster": cluster, "task": task, **extra})


TWO = {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}


# --- parse_tf_config: the cases of tests/test_cluster.py, against this module -------------------------------------

@pytest.mark.parametrize("raw, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({"task": {"type": "worker", "index": 0}}), "no 'cluster'"),
    (json.dumps({"cluster": TWO}), "no 'task'"),
    (cfg({**TWO, "ps": ["127.0.0.1:2003"]}, {"type": "worker", "index": 0}), "'ps' job"),
    (cfg(TWO, {"type": "chief", "index": 0}), "task type 'chief' has no entry"),
    (cfg(TWO, {"type": "worker", "index": 2}), "index 2 is out of range"),
    (cfg(TWO, {"type": "worker", "index": -1}), "out of range"),
    (cfg(TWO, {"type": "worker", "index": "0"}), "not an integer"),
    (cfg({"worker": ["127.0.0.1:2001", "127.0.0.1:2001"]}, {"type": "worker", "index": 0}), "more than once"),
    (cfg({"worker": ["127.0.0.1"]}, {"type": "worker", "index": 0}), "host:port"),
    (cfg({"worker": ["127.0.0.1:99999"]}, {"type": "worker", "index": 0}), "1..65535"),
    (cfg({"worker": []}, {"type": "worker", "index": 0}), "non-empty list"),
    (cfg({"chief": ["a:1", "b:2"], "worker": ["c:3"]}, {"type": "chief", "index": 0}), "at most one chief"),
    (cfg({"master": ["a:1"], "chief": ["b:2"]}, {"type": "chief", "index": 0}), "both 'master' and 'chief'"),
    # New refusals, each with its own line.
    (cfg({**TWO, "ps": ["127.0.0.1:2003"]}, {"type": "ps", "index": 0}), "synchronous training uses chief and worker"),
    (cfg(TWO, {"type": "ps", "index": 0}), "task type 'ps' is a parameter server"),
    (json.dumps({"sparseCluster": {"worker": {"1": "w1:2222"}}, "task": {"type": "worker", "index": 1}}),
     "'sparseCluster'.*enableDynamicWorker: false"),
    (cfg({"evaluator": ["e:1"]}, {"type": "evaluator", "index": 0}), "no chief or worker task"),
    (cfg({**TWO, "evaluator": ["e:1"]}, {"type": "evaluator", "index": 1}), "index 1 is out of range"),
    (cfg(TWO, {"type": "evaluator", "index": -1}), "must be >= 0"),
    (cfg({**TWO, "evaluator": ["127.0.0.1:2001"]}, {"type": "worker", "index": 0}), "more than once"),
    (cfg(TWO, {"type": "trainer", "index": 0}), "task type 'trainer' is unknown"),
])
def test_bad_tf_config_fails_with_one_clear_line(raw, message):
    with pytest.raises(UsageError, match=message) as e:
        parse_tf_config(raw)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("TF_CONFIG ") and "expected e.g." in str(e.value)


def test_master_is_mapped_to_chief():
    config = parse_tf_config(cfg({"master": ["a:1"], "worker": ["b:2"]}, {"type": "master", "index": 0}))
    assert config["cluster"] == {"chief": ["a:1"], "worker": ["b:2"]}
    assert config["task"] == {"type": "chief", "index": 0}


def test_valid_config_passes_through():
    config = parse_tf_config(cfg(TWO, {"type": "worker", "index": 1}))
    assert config["cluster"] == TWO and config["task"]["index"] == 1


def test_evaluator_task_is_accepted_and_kept_out_of_the_cluster():
    config = parse_tf_config(cfg({**TWO, "evaluator": ["127.0.0.1:2009"]}, {"type": "evaluator", "index": 0}))
    assert config["cluster"] == TWO and config["task"] == {"type": "evaluator", "index": 0}
    kubeflow = parse_tf_config(cfg(TWO, {"type": "evaluator", "index": 0}))  # the operator lists no evaluator
    assert kubeflow["cluster"] == TWO and kubeflow["task"]["type"] == "evaluator"


def test_extra_top_level_keys_pass_through():
    raw = cfg(TWO, {"type": "worker", "index": 0, "trial": "3"}, environment="cloud", job={"a": 1}, rpc_layer="grpc")
    config = parse_tf_config(raw)
    assert config["environment"] == "cloud" and config["rpc_layer"] == "grpc" and config["task"]["trial"] == "3"


# --- Recorded environments -> describe() ---------------------------------------------------------------------------

SINGLE = {"source": "none", "task_type": None, "task_index": 0, "is_chief": True, "is_evaluator": False,
          "num_workers": 1, "worker_index": 0, "worker_addresses": [], "ignored_sources": [], "tpu": None}


def role(source, task_type, task_index, worker_index, addresses, *, chief=False, evaluator=False, ignored=()):
    return {**SINGLE, "source": source, "task_type": task_type, "task_index": task_index, "is_chief": chief,
            "is_evaluator": evaluator, "num_workers": len(addresses), "worker_index": worker_index,
            "worker_addresses": addresses, "ignored_sources": list(ignored)}


TFJOB_CHIEF = ["job-chief-0.ns.svc:2222"]
TFJOB_WORKERS = ["job-worker-0.ns.svc:2222", "job-worker-1.ns.svc:2222"]
TFJOB = {"chief": TFJOB_CHIEF, "worker": TFJOB_WORKERS}
VERTEX_CLUSTER = {"workerpool0": ["cmle-training-workerpool0-ab12-0:2222"],
                  "workerpool1": ["cmle-training-workerpool1-ab12-0:2222", "cmle-training-workerpool1-ab12-1:2222"]}
VERTEX_ADDRESSES = [*VERTEX_CLUSTER["workerpool0"], *VERTEX_CLUSTER["workerpool1"]]
VERTEX_EXTRA = ["cmle-training-workerpoolN-ab12-0:2222"]  # one replica of a further pool
SLURM = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "5", "SLURM_STEP_NODELIST": "n[1-2,5]",
         "SLURM_STEP_TASKS_PER_NODE": "2(x2),1", "SLURMD_NODENAME": "n2", "SLURM_LOCALID": "1",
         "SLURM_JOB_NODELIST": "n[1-2,5]", "SLURM_NTASKS": "5", "SLURM_TASKS_PER_NODE": "2(x2),1"}
SLURM_ADDRESSES = ["n1:8888", "n1:8889", "n2:8888", "n2:8889", "n5:8888"]
POD_PATTERN = {"worker_hosts": "train-{index}.train:2222", "num_workers": 3}
PODS = ["train-0.train:2222", "train-1.train:2222", "train-2.train:2222"]


def vertex(pool, index, **task):
    return json.dumps({"cluster": VERTEX_CLUSTER, "task": {"type": pool, "index": index, **task},
                       "job": json.dumps({"workerPoolSpecs": []})})


ENVIRONMENTS = {
    "nothing set": ({}, {}, SINGLE),
    "TFJob without chief, worker 1": (
        {"TF_CONFIG": cfg({"worker": TFJOB_WORKERS}, {"type": "worker", "index": 1}, environment="cloud")}, {},
        role("TF_CONFIG", "worker", 1, 1, TFJOB_WORKERS)),
    "TFJob without chief, worker 0 is the chief": (
        {"TF_CONFIG": cfg({"worker": TFJOB_WORKERS}, {"type": "worker", "index": 0}, environment="cloud")}, {},
        role("TF_CONFIG", "worker", 0, 0, TFJOB_WORKERS, chief=True)),
    "TFJob with chief, the chief": (
        {"TF_CONFIG": cfg(TFJOB, {"type": "chief", "index": 0}, environment="cloud")}, {},
        role("TF_CONFIG", "chief", 0, 0, [*TFJOB_CHIEF, *TFJOB_WORKERS], chief=True)),
    "TFJob with chief, worker 0 counts after the chief": (
        {"TF_CONFIG": cfg(TFJOB, {"type": "worker", "index": 0}, environment="cloud")}, {},
        role("TF_CONFIG", "worker", 0, 1, [*TFJOB_CHIEF, *TFJOB_WORKERS])),
    "TFJob with master, the master is the chief": (
        {"TF_CONFIG": cfg({"master": TFJOB_CHIEF, "worker": TFJOB_WORKERS}, {"type": "master", "index": 0})}, {},
        role("TF_CONFIG", "chief", 0, 0, [*TFJOB_CHIEF, *TFJOB_WORKERS], chief=True)),
    "TFJob with master, a worker sees the master as chief": (
        {"TF_CONFIG": cfg({"master": TFJOB_CHIEF, "worker": TFJOB_WORKERS}, {"type": "worker", "index": 1})}, {},
        role("TF_CONFIG", "worker", 1, 2, [*TFJOB_CHIEF, *TFJOB_WORKERS])),
    "TFJob evaluator's own view": (
        {"TF_CONFIG": cfg(TFJOB, {"type": "evaluator", "index": 0}, environment="cloud")}, {},
        role("TF_CONFIG", "evaluator", 0, -1, [*TFJOB_CHIEF, *TFJOB_WORKERS], evaluator=True)),
    "TFJob with extra keys (environment, job, trial, rpc_layer)": (
        {"TF_CONFIG": cfg(TFJOB, {"type": "worker", "index": 1, "trial": "7"}, environment="cloud",
                          job={"job_name": "x"}, rpc_layer="grpc")}, {},
        role("TF_CONFIG", "worker", 1, 2, [*TFJOB_CHIEF, *TFJOB_WORKERS])),
    "one-task TF_CONFIG is a single process": (
        {"TF_CONFIG": cfg({"chief": TFJOB_CHIEF}, {"type": "chief", "index": 0})}, {},
        {**SINGLE, "source": "TF_CONFIG"}),
    "Vertex worker without trial": (
        {"CLUSTER_SPEC": vertex("workerpool1", 1)}, {}, role("vertex", "worker", 1, 2, VERTEX_ADDRESSES)),
    "Vertex chief with trial (hyperparameter tuning)": (
        {"CLUSTER_SPEC": vertex("workerpool0", 0, trial="12")}, {},
        role("vertex", "chief", 0, 0, VERTEX_ADDRESSES, chief=True)),
    "Vertex with TF_CONFIG also set: TF_CONFIG wins, same role": (
        {"CLUSTER_SPEC": vertex("workerpool1", 0),
         "TF_CONFIG": cfg({"chief": VERTEX_CLUSTER["workerpool0"], "worker": VERTEX_CLUSTER["workerpool1"]},
                          {"type": "worker", "index": 0}, environment="cloud", job={"workerPoolSpecs": []})}, {},
        role("TF_CONFIG", "worker", 0, 1, VERTEX_ADDRESSES, ignored=["vertex"])),
    "Vertex evaluator in workerpool3": (
        {"CLUSTER_SPEC": json.dumps({"cluster": {**VERTEX_CLUSTER, "workerpool3": VERTEX_EXTRA},
                                     "task": {"type": "workerpool3", "index": 0}})}, {},
        role("vertex", "evaluator", 0, -1, VERTEX_ADDRESSES, evaluator=True)),
    "Vertex single replica is a single process": (
        {"CLUSTER_SPEC": json.dumps({"cluster": {"workerpool0": ["cmle-training-workerpool0-ab12-0:2222"]},
                                     "task": {"type": "workerpool0", "index": 0}})}, {},
        {**SINGLE, "source": "vertex"}),
    "SLURM n[1-2,5] with 2(x2),1: task 3 is the second on n2": (
        SLURM, {}, role("slurm", "worker", 3, 3, SLURM_ADDRESSES)),
    "SLURM task 0 is the chief, base port from --port": (
        {**SLURM, "SLURM_PROCID": "0", "SLURMD_NODENAME": "n1", "SLURM_LOCALID": "0"}, {"port": 2222},
        role("slurm", "worker", 0, 0, ["n1:2222", "n1:2223", "n2:2222", "n2:2223", "n5:2222"], chief=True)),
    "SLURM job-level fallbacks (SLURM_NTASKS, SLURM_JOB_NODELIST, SLURM_TASKS_PER_NODE)": (
        {"SLURM_PROCID": "4", "SLURM_NTASKS": "5", "SLURM_JOB_NODELIST": "n[1-2,5]",
         "SLURM_TASKS_PER_NODE": "2(x2),1"}, {}, role("slurm", "worker", 4, 4, SLURM_ADDRESSES)),
    "SLURM without tasks per node splits evenly": (
        {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "gpu-[01-02]"}, {},
        role("slurm", "worker", 1, 1, ["gpu-01:8888", "gpu-02:8888"])),
    "SLURM one-task step is a single process": (
        {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_STEP_NODELIST": "n1",
         "SLURM_STEP_TASKS_PER_NODE": "1", "SLURM_NTASKS": "1"}, {}, SINGLE),
    "Kubernetes Indexed Job with the pattern flag": (
        {"JOB_COMPLETION_INDEX": "2"}, POD_PATTERN, role("kubernetes", "worker", 2, 2, PODS)),
    "Kubernetes Indexed Job, pod 0 is the chief": (
        {"JOB_COMPLETION_INDEX": "0"}, POD_PATTERN, role("kubernetes", "worker", 0, 0, PODS, chief=True)),
    "GKE TPU single host": (
        {"TPU_WORKER_ID": "0", "TPU_WORKER_HOSTNAMES": "localhost"}, {}, {**SINGLE, "source": "tpu", "tpu": "local"}),
    "GKE TPU single host in an Indexed Job": (
        {"TPU_WORKER_ID": "0", "TPU_WORKER_HOSTNAMES": "t1", "JOB_COMPLETION_INDEX": "0"}, {},
        {**SINGLE, "source": "tpu", "tpu": "local", "ignored_sources": ["kubernetes"]}),
    "TF_CONFIG + CLUSTER_SPEC + SLURM + TPU: TF_CONFIG wins, the others are ignored": (
        {"TF_CONFIG": cfg(TFJOB, {"type": "worker", "index": 1}), "CLUSTER_SPEC": vertex("workerpool1", 0), **SLURM,
         "TPU_WORKER_HOSTNAMES": "a,b"}, {},
        role("TF_CONFIG", "worker", 1, 2, [*TFJOB_CHIEF, *TFJOB_WORKERS], ignored=["vertex", "slurm", "tpu"])),
    "broken lower sources are ignored unread": (
        {"TF_CONFIG": cfg(TWO, {"type": "worker", "index": 0}), "CLUSTER_SPEC": "{oops",
         "SLURM_PROCID": "x", "SLURM_STEP_NODELIST": "n[", "JOB_COMPLETION_INDEX": "-1"}, {},
        role("TF_CONFIG", "worker", 0, 0, TWO["worker"], chief=True, ignored=["vertex", "slurm", "kubernetes"])),
    "flags override TF_CONFIG": (
        {"TF_CONFIG": cfg(TFJOB, {"type": "chief", "index": 0})},
        {"worker_hosts": "h1:2222,h2:2222", "task_index": 1},
        role("flags", "worker", 1, 1, ["h1:2222", "h2:2222"], ignored=["TF_CONFIG"])),
    "flags: --task_index wins over JOB_COMPLETION_INDEX": (
        {"JOB_COMPLETION_INDEX": "0"}, {**POD_PATTERN, "task_index": 1},
        role("flags", "worker", 1, 1, PODS, ignored=["kubernetes"])),
    "flags: hosts without a port take --port": (
        {}, {"worker_hosts": "h1, h2", "task_index": 0, "port": 3000},
        role("flags", "worker", 0, 0, ["h1:3000", "h2:3000"], chief=True)),
    "flags: an evaluator outside the listed workers": (
        {}, {"worker_hosts": "h1:1,h2:1", "task_type": "evaluator"},
        role("flags", "evaluator", 0, -1, ["h1:1", "h2:1"], evaluator=True)),
    "flags: a one-host list is a single process": (
        {}, {"worker_hosts": "h1:1", "task_index": 0}, {**SINGLE, "source": "flags"}),
}


@pytest.mark.parametrize("environ, flags, expected", ENVIRONMENTS.values(), ids=ENVIRONMENTS.keys())
def test_recorded_environment_resolves_to_expected_role(environ, flags, expected):
    resolved = resolve_cluster(environ, **flags)
    assert resolved.describe() == expected
    json.dumps(resolved.describe())  # JSON-serialisable
    config = resolved.tf_config()
    if expected["task_type"] in ("chief", "worker"):
        assert config["task"] == {"type": expected["task_type"], "index": expected["task_index"]}
        addresses = [*config["cluster"].get("chief", []), *config["cluster"].get("worker", [])]
        assert addresses == expected["worker_addresses"]
        assert set(config) == {"cluster", "task"} and set(config["cluster"]) <= {"chief", "worker"}
    else:
        assert config is None


def test_worker_tf_config_leaves_the_evaluator_out_and_the_evaluator_knows_its_address():
    cluster = {**TFJOB, "evaluator": ["job-evaluator-0.ns.svc:2222"]}
    worker = resolve_cluster({"TF_CONFIG": cfg(cluster, {"type": "worker", "index": 0})})
    assert worker.tf_config() == {"cluster": TFJOB, "task": {"type": "worker", "index": 0}}
    assert worker.evaluator_address is None and worker.num_workers == 3
    evaluator = resolve_cluster({"TF_CONFIG": cfg(cluster, {"type": "evaluator", "index": 0})})
    assert evaluator.tf_config() is None and evaluator.evaluator_address == "job-evaluator-0.ns.svc:2222"
    assert evaluator.cluster == TFJOB and not evaluator.is_chief and evaluator.worker_index == -1


REFUSALS = {
    "TF_CONFIG with a ps job": (
        {"TF_CONFIG": cfg({**TFJOB, "ps": ["ps-0:2222"]}, {"type": "worker", "index": 0})}, {},
        r"^TF_CONFIG cluster has a 'ps' job .*chief and worker tasks only"),
    "TF_CONFIG sparseCluster (dynamic workers)": (
        {"TF_CONFIG": json.dumps({"sparseCluster": {"worker": {"1": "w-1:2222"}, "ps": []},
                                  "task": {"type": "worker", "index": 1}})}, {},
        r"^TF_CONFIG has a 'sparseCluster'.*enableDynamicWorker: false"),
    "Vertex Reduction Server pool": (
        {"CLUSTER_SPEC": json.dumps({"cluster": {**VERTEX_CLUSTER, "workerpool2": VERTEX_EXTRA},
                                     "task": {"type": "workerpool1", "index": 0}})}, {},
        r"^CLUSTER_SPEC lists workerpool2 \(parameter servers or a Reduction Server\).*remove workerPoolSpecs\[2\]"),
    "Vertex parameter server task": (
        {"CLUSTER_SPEC": json.dumps({"cluster": {**VERTEX_CLUSTER, "workerpool2": VERTEX_EXTRA},
                                     "task": {"type": "workerpool2", "index": 0}})}, {},
        r"^CLUSTER_SPEC puts this task in workerpool2 \(a parameter server\)"),
    "Vertex unknown pool": (
        {"CLUSTER_SPEC": json.dumps({"cluster": {**VERTEX_CLUSTER, "workerpool7": ["x:1"]},
                                     "task": {"type": "workerpool1", "index": 0}})}, {},
        r"^CLUSTER_SPEC .*'workerpool7'"),
    "Vertex invalid JSON": ({"CLUSTER_SPEC": "{oops"}, {}, r"^CLUSTER_SPEC is not valid JSON"),
    "Vertex task index out of range": (
        {"CLUSTER_SPEC": vertex("workerpool1", 2)}, {}, r"^CLUSTER_SPEC task index 2 is out of range"),
    "SLURM task count disagrees with tasks per node": (
        {**SLURM, "SLURM_STEP_NUM_TASKS": "6"}, {},
        r"^SLURM_STEP_NUM_TASKS=6 but SLURM_STEP_TASKS_PER_NODE='2\(x2\),1'"),
    "SLURM tasks per node for fewer nodes than the node list": (
        {**SLURM, "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_STEP_NUM_TASKS": "4"}, {},
        r"^SLURM_STEP_TASKS_PER_NODE='2\(x2\)' describes 2 nodes but SLURM_STEP_NODELIST='n\[1-2,5\]' lists 3"),
    "SLURM bad node list": ({**SLURM, "SLURM_STEP_NODELIST": "n[3-1]"}, {}, r"^SLURM_STEP_NODELIST='n\[3-1\]' is not"),
    "SLURM cyclic distribution": (
        {**SLURM, "SLURMD_NODENAME": "n5"}, {}, r"^SLURM_PROCID=3 .*--distribution=block"),
    "SLURM uneven tasks without tasks per node": (
        {"SLURM_PROCID": "0", "SLURM_NTASKS": "3", "SLURM_JOB_NODELIST": "n[1-2]"}, {},
        r"^SLURM_STEP_TASKS_PER_NODE is not set and 3 tasks do not split evenly over the 2 nodes"),
    "SLURM base port leaves no room": (SLURM, {"port": 65535}, r"^--port=65535 leaves no room for 2 tasks per node"),
    "Kubernetes index without the pattern flag": (
        {"JOB_COMPLETION_INDEX": "1"}, {},
        r"^JOB_COMPLETION_INDEX .*--worker_hosts='<pod>-\{index\}\.<service>:<port>' --num_workers=N"),
    "Kubernetes index beyond --num_workers": (
        {"JOB_COMPLETION_INDEX": "3"}, POD_PATTERN, r"^JOB_COMPLETION_INDEX=3 is out of range for 3 workers"),
    "Kubernetes index not a number": ({"JOB_COMPLETION_INDEX": "x"}, POD_PATTERN, r"^JOB_COMPLETION_INDEX='x' is not"),
    "GKE multi-host TPU": (
        {"TPU_WORKER_ID": "1", "TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, {},
        r"^TPU_WORKER_HOSTNAMES lists 4 hosts: a multi-host TPU pod slice.*--tpu=local.*--tpu=<name>"),
    "GKE TPU worker id beyond 0": ({"TPU_WORKER_ID": "2"}, {}, r"^TPU_WORKER_ID='2': a multi-host TPU pod slice"),
    "pattern without --num_workers": ({}, {"worker_hosts": "w-{index}.svc:2222", "task_index": 0},
                                      r"^--worker_hosts='w-\{index\}.svc:2222' is a pattern: pass --num_workers=N"),
    "pattern mixed with a list": ({}, {"worker_hosts": "w-{index}:1,x:1", "num_workers": 2, "task_index": 0},
                                  r"^--worker_hosts=.* mixes a pattern and a list"),
    "unknown placeholder": ({}, {"worker_hosts": "w-{rank}:1", "task_index": 0}, r"placeholder other than \{index\}"),
    "--task_index out of range": ({}, {"worker_hosts": "a:1,b:1", "task_index": 2},
                                  r"^--task_index=2 is out of range for 2 workers"),
    "negative --task_index": ({}, {"worker_hosts": "a:1,b:1", "task_index": -1}, r"^--task_index=-1 must be >= 0"),
    "list without --task_index": ({}, {"worker_hosts": "a:1,b:1"}, r"^--worker_hosts needs --task_index"),
    "--num_workers disagrees with the list": ({}, {"worker_hosts": "a:1,b:1", "num_workers": 3, "task_index": 0},
                                              r"^--num_workers=3 but --worker_hosts lists 2 hosts"),
    "--num_workers below 1": ({}, {**POD_PATTERN, "num_workers": 0, "task_index": 0}, r"^--num_workers=0 must be >= 1"),
    "host without a port and no --port": ({}, {"worker_hosts": "a,b", "task_index": 0},
                                          r"^--worker_hosts entry 'a' has no port; write 'host:port' or pass --port"),
    "bad port in --worker_hosts": ({}, {"worker_hosts": "a:0,b:1", "task_index": 0},
                                   r"^--worker_hosts entry 'a:0' .*1\.\.65535"),
    "duplicate --worker_hosts": ({}, {"worker_hosts": "a:1,a:1", "task_index": 0},
                                 r"^--worker_hosts lists a:1 more than once"),
    "--task_type=chief": ({}, {"worker_hosts": "a:1,b:1", "task_type": "chief", "task_index": 0},
                          r"^--task_type=chief: .*--task_type=worker --task_index=0"),
    "unknown --task_type": ({}, {"worker_hosts": "a:1,b:1", "task_type": "ps", "task_index": 0},
                            r"^--task_type='ps' is unknown"),
    "--task_index without --worker_hosts": ({"TF_CONFIG": cfg(TFJOB, {"type": "chief", "index": 0})},
                                            {"task_index": 1}, r"^--task_index only applies with --worker_hosts"),
    "--num_workers without --worker_hosts": ({}, {"num_workers": 2},
                                             r"^--num_workers only applies with --worker_hosts"),
    "--port out of range": ({}, {"port": 70000}, r"^--port=70000 is not a port"),
}


@pytest.mark.parametrize("environ, flags, message", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusal_is_one_line_naming_the_input_and_the_fix(environ, flags, message):
    with pytest.raises(UsageError, match=message) as e:
        resolve_cluster(environ, **flags)
    assert "\n" not in str(e.value)


def test_summary_is_one_line_naming_the_source_and_what_was_ignored():
    environ = {"TF_CONFIG": cfg(TFJOB, {"type": "worker", "index": 1}), **SLURM}
    assert resolve_cluster(environ).summary() == \
        "cluster from TF_CONFIG: worker:1 of 3 training tasks (SLURM_* also set, ignored)"
    assert resolve_cluster({}).summary() == "no cluster environment: single process"


def test_vertex_output_dirs_are_the_set_aip_variables():
    environ = {"AIP_MODEL_DIR": "gs://b/run/model/", "AIP_CHECKPOINT_DIR": "gs://b/run/checkpoints/",
               "AIP_TENSORBOARD_LOG_DIR": "", "OTHER": "x"}
    expected = {"model_dir": "gs://b/run/model/", "checkpoint_dir": "gs://b/run/checkpoints/"}
    assert default_output_dirs(environ) == expected
    assert default_output_dirs({}) == {}


# --- SLURM node and task lists ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("nodelist, nodes", [
    ("n1", ["n1"]),
    ("n[1-2,5]", ["n1", "n2", "n5"]),
    ("gpu-[01-03]", ["gpu-01", "gpu-02", "gpu-03"]),
    ("n[8-10]", ["n8", "n9", "n10"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("n1,m[2-3]", ["n1", "m2", "m3"]),
    ("a[1-2]b[3-4]", ["a1b3", "a1b4", "a2b3", "a2b4"]),
    ("rack[1-2]-n[1,3],login", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3", "login"]),
])
def test_slurm_node_list_expands_in_order(nodelist, nodes):
    assert slurm_nodes.expand_nodelist(nodelist, "SLURM_STEP_NODELIST") == nodes


@pytest.mark.parametrize("nodelist", ["n[3-1]", "n[1-2", "n]1[", "n[]", "n[a-b]", "", "n1,,n2", "n[1-2],n2", "n[[1]]"])
def test_bad_slurm_node_list_is_refused_with_one_line(nodelist):
    with pytest.raises(UsageError, match=r"^SLURM_JOB_NODELIST=") as e:
        slurm_nodes.expand_nodelist(nodelist, "SLURM_JOB_NODELIST")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("tasks_per_node, counts", [("2(x2),1", [2, 2, 1]), ("4", [4]), ("1(x3)", [1, 1, 1])])
def test_slurm_tasks_per_node_expands_repeat_counts(tasks_per_node, counts):
    assert slurm_nodes.expand_tasks_per_node(tasks_per_node, "SLURM_TASKS_PER_NODE") == counts


@pytest.mark.parametrize("tasks_per_node", ["2(x0)", "0", "x2", "2(x2", "", "1,,1"])
def test_bad_slurm_tasks_per_node_is_refused(tasks_per_node):
    with pytest.raises(UsageError, match=r"^SLURM_TASKS_PER_NODE=.*expected e.g. '2\(x2\),1'"):
        slurm_nodes.expand_tasks_per_node(tasks_per_node, "SLURM_TASKS_PER_NODE")


def test_every_slurm_task_resolves_to_its_own_address_in_block_order():
    roles = []
    for rank, (node, local) in enumerate([("n1", 0), ("n1", 1), ("n2", 0), ("n2", 1), ("n5", 0)]):
        environ = {**SLURM, "SLURM_PROCID": str(rank), "SLURMD_NODENAME": node, "SLURM_LOCALID": str(local)}
        resolved = resolve_cluster(environ)
        roles.append((resolved.worker_index, resolved.is_chief, resolved.worker_addresses[resolved.worker_index]))
    assert roles == [(i, i == 0, address) for i, address in enumerate(SLURM_ADDRESSES)]


# --- The examples under docs/examples, as their platforms start them --------------------------------------------------

_KEY = re.compile(r"([A-Za-z_][\w.-]*):(?:\s+(.*))?")


def _scalar(text):
    if text[0] in "[{\"":
        return json.loads(text)
    if text[0] == "'":
        return text[1:-1].replace("''", "'")
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return {"true": True, "false": False, "null": None, "~": None}.get(text, text)


def _is_item(line):
    return line == "-" or line.startswith("- ")


def _node(lines, i, indent):
    """A block list or map whose lines start at `indent` (the YAML subset of the examples)."""
    if _is_item(lines[i][1]):
        items = []
        while i < len(lines) and lines[i][0] == indent and _is_item(lines[i][1]):
            rest = lines[i][1][1:].lstrip()
            if not rest:
                value, i = _node(lines, i + 1, lines[i + 1][0])
            elif _KEY.fullmatch(rest):  # "- key: value" opens a map at the column of "key"
                column = indent + len(lines[i][1]) - len(rest)
                value, i = _node([*lines[:i], (column, rest), *lines[i + 1:]], i, column)
            else:
                value, i = _scalar(rest), i + 1
            items.append(value)
        return items, i
    mapping = {}
    while i < len(lines) and lines[i][0] == indent:
        match = _KEY.fullmatch(lines[i][1])
        assert match, f"not a 'key: value' line: {lines[i][1]!r}"
        key, rest = match[1], match[2]
        nested = i + 1 < len(lines) and (lines[i + 1][0] > indent or
                                         (lines[i + 1][0] == indent and _is_item(lines[i + 1][1])))
        if rest:
            mapping[key], i = _scalar(rest), i + 1
        elif nested:
            mapping[key], i = _node(lines, i + 1, lines[i + 1][0])
        else:
            mapping[key], i = None, i + 1
    return mapping, i


def read_yaml(path):
    """The documents of a YAML file: block maps and lists, plain and quoted scalars (PyYAML is not a dependency)."""
    with open(path) as f:
        text = f.read()
    documents = []
    for chunk in re.split(r"^---[ \t]*$", text, flags=re.MULTILINE):
        lines = []
        for line in chunk.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).rstrip()
            if line.strip():
                lines.append((len(line) - len(line.lstrip(" ")), line.strip()))
        if lines:
            value, end = _node(lines, 0, lines[0][0])
            assert end == len(lines), f"{path}: could not read from {lines[end]}"
            documents.append(value)
    return documents


def read_script(path):
    """A shell script's lines with backslash continuations joined."""
    with open(path) as f:
        return f.read().replace("\\\n", " ").splitlines()


def train_flags(argv):
    """The `--name=value` flags after scripts/train.py in an argv, looking inside `bash -c`-style strings."""
    for i, token in enumerate(argv):
        if token == "scripts/train.py":
            return dict(arg[2:].partition("=")[::2] for arg in argv[i + 1:])
        if "scripts/train.py" in token:
            return train_flags(shlex.split(token.partition("=")[2] if token.startswith("--") else token))
    raise AssertionError(f"no scripts/train.py in {argv}")


def cluster_flags(flags):
    """The flags of train.py that resolve_cluster takes."""
    types = {"worker_hosts": str, "num_workers": int, "task_type": str, "task_index": int, "port": int}
    return {name: types[name](value) for name, value in flags.items() if name in types}


def describe_cluster(environ, flags):
    """What `scripts/train.py --describe_cluster` prints for this environment and these flags (no TensorFlow)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "CLUSTER_SPEC") and not k.startswith(
        ("SLURM_", "TPU_WORKER", "AIP_")) and k != "JOB_COMPLETION_INDEX"}
    argv = [f"--{name}={value}" if value else f"--{name}" for name, value in flags.items()]
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"), *argv, "--describe_cluster"],
                            env={**env, **environ}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def check_describe_cluster(environ, flags, resolved):
    """The command line says what the resolver says, with the run's strategy and output directories."""
    printed = describe_cluster(environ, flags)
    assert {k: printed[k] for k in resolved.describe()} == resolved.describe()
    assert printed["strategy"] == flags.get("strategy", "mirrored")
    assert {"model_dir", "checkpoint_dir", "tensorboard_dir"} <= set(printed)
    return printed


def check_indexed_job(path):
    service, job = read_yaml(path)
    assert (service["kind"], job["kind"], job["spec"]["completionMode"]) == ("Service", "Job", "Indexed")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    (container,) = pod["containers"]
    flags = train_flags(container["command"])
    assert flags["strategy"] == "multi_worker_mirrored"
    workers = int(flags["num_workers"])
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == workers
    port = container["ports"][0]["containerPort"]
    assert port == service["spec"]["ports"][0]["port"]
    # Kubernetes names pod i "<job>-<i>"; the Service makes it "<job>-<i>.<service>".
    pods = [f"{job['metadata']['name']}-{i}.{service['metadata']['name']}:{port}" for i in range(workers)]
    for i in range(workers):
        resolved = resolve_cluster({"JOB_COMPLETION_INDEX": str(i)}, **cluster_flags(flags))
        assert resolved.describe() == role("kubernetes", "worker", i, i, pods, chief=i == 0)
    check_describe_cluster({"JOB_COMPLETION_INDEX": "1"}, flags, resolved if workers == 2 else resolve_cluster(
        {"JOB_COMPLETION_INDEX": "1"}, **cluster_flags(flags)))


def check_vertex_job(path):
    (spec,) = read_yaml(path)
    pools = spec["workerPoolSpecs"]
    assert len(pools) == 2 and pools[0]["replicaCount"] == 1
    cluster = {f"workerpool{p}": [f"cmle-training-workerpool{p}-ab12-{r}:2222" for r in range(pool["replicaCount"])]
               for p, pool in enumerate(pools)}
    addresses = [*cluster["workerpool0"], *cluster["workerpool1"]]
    base = spec["baseOutputDirectory"]["outputUriPrefix"]
    for p, pool in enumerate(pools):
        flags = train_flags(pool["containerSpec"]["command"] + pool["containerSpec"]["args"])
        assert flags["strategy"] == "multi_worker_mirrored" and not cluster_flags(flags)
        task_type = ("chief", "worker")[p]
        for r in range(pool["replicaCount"]):
            environ = {"CLUSTER_SPEC": json.dumps({"cluster": cluster, "task": {"type": f"workerpool{p}", "index": r},
                                                   "job": json.dumps(spec)}),
                       "AIP_MODEL_DIR": f"{base}/model/", "AIP_CHECKPOINT_DIR": f"{base}/checkpoints/",
                       "AIP_TENSORBOARD_LOG_DIR": f"{base}/logs/"}
            expected = role("vertex", task_type, r, p + r, addresses, chief=p == 0)
            assert resolve_cluster(environ).describe() == expected
            tf_config = cfg({"chief": cluster["workerpool0"], "worker": cluster["workerpool1"]},
                            {"type": task_type, "index": r}, environment="cloud", job=spec)
            both = resolve_cluster({**environ, "TF_CONFIG": tf_config})  # Vertex AI sets both for TensorFlow
            assert both.describe() == {**expected, "source": "TF_CONFIG", "ignored_sources": ["vertex"]}
            assert default_output_dirs(environ)["model_dir"] == f"{base}/model/"
            printed = check_describe_cluster(environ, flags, resolve_cluster(environ))
            assert printed["model_dir"] == flags.get("model_dir", f"{base}/model/")  # a flag wins over AIP_MODEL_DIR
            assert printed["tensorboard_dir"] == flags.get("tensorboard_dir", f"{base}/logs/")


def check_sbatch(path):
    lines = read_script(path)
    directives = [line.split(None, 1)[1] for line in lines if line.startswith("#SBATCH")]
    sbatch = dict(directive.lstrip("-").partition("=")[::2] for directive in directives)
    nodes, per_node = int(sbatch["nodes"]), int(sbatch["ntasks-per-node"])
    assert nodes * per_node > 1
    (srun,) = [line for line in lines if line.startswith("srun ")]
    flags = train_flags(shlex.split(srun))
    assert flags["strategy"] == "multi_worker_mirrored"
    port = int(flags["port"])
    names = [f"node{n + 1:02d}" for n in range(nodes)]
    nodelist = f"node[01-{nodes:02d}]"
    tasks_per_node = f"{per_node}(x{nodes})" if nodes > 1 else str(per_node)
    addresses = [f"{name}:{port + local}" for name in names for local in range(per_node)]
    for rank in range(nodes * per_node):
        environ = {"SLURM_JOB_NODELIST": nodelist, "SLURM_NTASKS": str(nodes * per_node),
                   "SLURM_TASKS_PER_NODE": tasks_per_node, "SLURM_STEP_NODELIST": nodelist,
                   "SLURM_STEP_NUM_TASKS": str(nodes * per_node), "SLURM_STEP_TASKS_PER_NODE": tasks_per_node,
                   "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % per_node),
                   "SLURMD_NODENAME": names[rank // per_node]}
        resolved = resolve_cluster(environ, **cluster_flags(flags))
        assert resolved.describe() == role("slurm", "worker", rank, rank, addresses, chief=rank == 0)
    check_describe_cluster(environ, flags, resolved)


def check_tpu_vm(path):
    (command,) = [line for line in read_script(path) if "scripts/train.py" in line]
    flags = train_flags(shlex.split(command))
    assert (flags["strategy"], flags["tpu"]) == ("tpu", "local") and not cluster_flags(flags)
    assert flags["model_dir"].startswith("gs://")
    assert resolve_cluster({}, **cluster_flags(flags)).describe() == SINGLE  # a TPU VM sets no cluster variable
    gke = {"TPU_WORKER_ID": "0", "TPU_WORKER_HOSTNAMES": "localhost"}  # the same command on a GKE single-host TPU
    assert resolve_cluster(gke, **cluster_flags(flags)).describe() == {**SINGLE, "source": "tpu", "tpu": "local"}
    check_describe_cluster(gke, flags, resolve_cluster(gke, **cluster_flags(flags)))


def check_tfjob(path):
    (tfjob,) = read_yaml(path)
    assert tfjob["kind"] == "TFJob" and "PS" not in tfjob["spec"]["tfReplicaSpecs"]
    name, namespace = tfjob["metadata"]["name"], tfjob["metadata"].get("namespace", "default")
    cluster = {}
    for replica_type, spec in tfjob["spec"]["tfReplicaSpecs"].items():
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == "tensorflow"
        port = container["ports"][0]["containerPort"]
        flags = train_flags(container["command"])
        assert flags["strategy"] == "multi_worker_mirrored" and not cluster_flags(flags)
        rtype = replica_type.lower()  # as the training operator builds TF_CONFIG
        cluster[rtype] = [f"{name}-{rtype}-{i}.{namespace}.svc:{port}" for i in range(spec["replicas"])]
    addresses = [*cluster.get("chief", []), *cluster["worker"]]
    for rtype, tasks in cluster.items():
        for i in range(len(tasks)):
            environ = {"TF_CONFIG": cfg(cluster, {"type": rtype, "index": i}, environment="cloud")}
            worker_index = addresses.index(tasks[i])
            assert resolve_cluster(environ).describe() == role("TF_CONFIG", rtype, i, worker_index, addresses,
                                                               chief=worker_index == 0)
    check_describe_cluster(environ, flags, resolve_cluster(environ))


EXAMPLE_CHECKS = {"indexed-job.yaml": check_indexed_job, "vertex-job.yaml": check_vertex_job,
                  "train.sbatch": check_sbatch, "tpu-vm.sh": check_tpu_vm, "tfjob.yaml": check_tfjob}


@pytest.mark.parametrize("name", sorted(os.listdir(EXAMPLES)))
def test_example_gives_each_task_its_expected_role(name):
    assert name in EXAMPLE_CHECKS, f"docs/examples/{name} has no check in this file"
    EXAMPLE_CHECKS[name](os.path.join(EXAMPLES, name))


def test_clusters_doc_includes_every_example_and_the_precedence_order():
    with open(os.path.join(ROOT, "docs", "clusters.md")) as f:
        doc = f.read()
    for name in os.listdir(EXAMPLES):
        assert f"(examples/{name})" in doc, f"docs/clusters.md does not link docs/examples/{name}"
    order = ["**Flags**", "**TF_CONFIG**", "**Vertex AI**", "**SLURM**", "**Kubernetes", "**TPU", "**None**"]
    assert len(order) == len(SOURCES) + 1
    positions = [doc.index(entry) for entry in order]
    assert positions == sorted(positions)
    for key in SINGLE:
        assert f"| `{key}` |" in doc, f"docs/clusters.md does not describe the key {key!r}"


def test_resolver_imports_only_the_standard_library():
    for module in ("cluster_env", "slurm_nodes"):
        with open(os.path.join(ROOT, "harness", f"{module}.py")) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                allowed = name.split(".")[0] in sys.stdlib_module_names or name.startswith(
                    ("harness.errors.", "harness.slurm_nodes"))
                assert allowed, f"harness/{module}.py imports {name}"
