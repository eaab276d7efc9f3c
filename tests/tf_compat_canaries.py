"""Runs each upstream behaviour that harness/tf_compat.py works around, with and without the workaround.

Run in a process of its own (a collective that fails can leave the process's collectives
aborted); prints one `CANARY <json>` line per check for tests/test_tf_compat.py.
"""

import inspect
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
import tensorflow as tf

import harness

harness.configure_cpu_devices(2)

from harness import tf_compat
from harness.errors import UsageError


def report(name, **outcome):
    print("CANARY " + json.dumps({"name": name, **outcome}), flush=True)


def fails(fn):
    try:
        fn()
    except Exception as e:
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e).strip() else ''}"
    return None


def autograph():
    class Plain(ValueError):
        pass

    def raising(error_type):
        @tf.function
        def fn(x):
            raise error_type("one line")
        try:
            fn(tf.constant(1))
        except Exception as e:
            return type(e).__name__, str(e)

    plain, ours = raising(Plain), raising(UsageError)
    report("autograph_pass_through", without=plain[0] != "Plain" or "\n" in plain[1],
           with_marker=ours == ("UsageError", "one line"))


def async_checkpoints():
    def two_saves(patched):
        directory = tempfile.mkdtemp()
        checkpoint = tf.train.Checkpoint(model=keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
        options = tf.train.CheckpointOptions(enable_async=True)
        for name in ("a", "b"):
            if patched:
                with tf_compat.async_checkpoint_copies():
                    checkpoint.write(f"{directory}/{name}", options=options)
            else:
                checkpoint.write(f"{directory}/{name}", options=options)
            checkpoint.sync()

    report("async_checkpoint_copies", without=fails(lambda: two_saves(False)), with_workaround=fails(
        lambda: two_saves(True)))


def async_checkpoint_errors():
    def failed_save(checked):
        directory = tempfile.mkdtemp()
        open(f"{directory}/file", "w").close()  # a file where the checkpoint's directory belongs
        checkpoint = tf.train.Checkpoint(step=tf.Variable(1))
        checkpoint.write(f"{directory}/file/ckpt", options=tf.train.CheckpointOptions(enable_async=True))
        checkpoint.sync()  # the background write failed, but TensorFlow raises nothing here
        try:
            if checked:
                tf_compat.raise_async_checkpoint_error(checkpoint)
        finally:
            checkpoint._async_checkpointer_impl._async_error = None  # (no traceback at exit)

    report("async_checkpoint_errors", without=fails(lambda: failed_save(False)),
           with_workaround=fails(lambda: failed_save(True)))


def download_retries():
    from tensorflow_datasets.core.download import downloader

    with tf_compat.few_download_retries(3):
        during = downloader.MAX_RETRIES
    report("tfds_download_retries", default=downloader.MAX_RETRIES, during=during,
           read_per_request="MAX_RETRIES" in inspect.getsource(downloader._open_with_requests))


def optimizer_reduction():
    strategy = tf_compat.MirroredStrategyWithOwnKeys(["/cpu:0", "/cpu:1"])

    def one_update(already_reduced):
        with strategy.scope():
            variable = keras.Variable(0.0)
            optimizer = keras.optimizers.SGD(1.0)
            optimizer.build([variable])

        def step():
            if already_reduced:
                with tf_compat.gradients_already_reduced(optimizer):
                    optimizer.apply([tf.constant(1.0)], [variable])
            else:
                optimizer.apply([tf.constant(1.0)], [variable])

        tf.function(lambda: strategy.run(step))()
        return float(variable.numpy())

    report("gradients_already_reduced", without=one_update(False), with_workaround=one_update(True))


def collective_keys():
    def two_strategies(make):
        for shape in ((3,), (5,)):
            strategy = make()
            fn = tf.function(lambda s=strategy, shape=shape: s.run(
                lambda: tf.distribute.get_replica_context().all_reduce("sum", tf.ones(shape))))
            strategy.experimental_local_results(fn())

    devices = ["/cpu:0", "/cpu:1"]
    ours = fails(lambda: two_strategies(lambda: tf_compat.MirroredStrategyWithOwnKeys(devices)))
    report("mirrored_strategy_keys", with_workaround=ours,
           without=fails(lambda: two_strategies(lambda: tf.distribute.MirroredStrategy(devices))))


def private_signatures():
    from tensorflow.python.distribute import collective_all_reduce_strategy as collective
    from tensorflow.python.eager import context

    def parameters(fn):
        return list(inspect.signature(fn).parameters)

    report("private_signatures", signatures={
        "CollectiveAllReduceExtended.__init__": parameters(collective.CollectiveAllReduceExtended.__init__),
        "CollectiveAllReduceExtended._initialize_local_devices":
            parameters(collective.CollectiveAllReduceExtended._initialize_local_devices),
        "Context.configure_coordination_service": parameters(context.Context.configure_coordination_service),
        "Context.set_config_key_value": parameters(context.Context.set_config_key_value),
        "Context.get_config_key_value": parameters(context.Context.get_config_key_value),
        "Context.report_error_to_cluster": parameters(context.Context.report_error_to_cluster),
        "MirroredStrategy has _collective_key_base": hasattr(tf.distribute.MirroredStrategy(devices=["/cpu:0"]),
                                                             "_collective_key_base"),
    })


if __name__ == "__main__":
    for check in (autograph, async_checkpoints, async_checkpoint_errors, download_retries, optimizer_reduction,
                  private_signatures, collective_keys):
        check()
