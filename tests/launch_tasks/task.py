"""A fake task for tests/test_launch.py (no TensorFlow): does what its arguments say for its own task.

  task.py DIR 'worker:1=print:error: disk full;exit:1' '*=sleep:1'

Its task (`worker:1`) comes from TF_CONFIG; the first `TASK=ACTIONS` argument naming it, else
the one naming `*`, says what to do; other arguments are only recorded. Each start appends one
JSON line to DIR/starts.jsonl (pid, TF_CONFIG, arguments) and its pid, and those of its children,
to DIR/pids. Actions, `;`-separated, in order:

  print:TEXT   print TEXT              exit:N       exit with code N
  sleep:S      sleep S seconds         raise:TEXT   die with a traceback (ValueError: TEXT)
  kill_once    SIGKILL itself, only on the first start of this task (a marker file in DIR)
  on_term:N    exit N on SIGTERM       ignore:SIG   ignore SIGTERM or SIGINT (ignore:TERM)
  child        start a child (in this process group) that ignores SIGTERM and sleeps 60 s
  garbage      print invalid UTF-8, then a 1 MB line, then `after`
  ready        create DIR/ready.<task>
  chatter:N    print N lines while a thread writes N lines to stderr, as native logs do
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

CHILD = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


def append(path, text):
    with open(path, "a") as f:
        f.write(text + "\n")


def chatter(count):
    logs = threading.Thread(target=lambda: [os.write(2, f"log {i} done\n".encode()) for i in range(count)])
    logs.start()
    for i in range(count):
        print(f"out {i} done")  # unbuffered (the launcher's PYTHONUNBUFFERED): the text and its newline, two writes
    logs.join()


def main(directory, *args):
    config = json.loads(os.environ["TF_CONFIG"])
    name = f"{config['task']['type']}:{config['task']['index']}"
    append(os.path.join(directory, "starts.jsonl"), json.dumps({"pid": os.getpid(), "tf_config": config,
                                                                "args": list(args)}))
    append(os.path.join(directory, "pids"), str(os.getpid()))
    specs = dict(a.split("=", 1) for a in args if re.match(r"(\*|[a-z]+:\d+)=", a))
    for action in filter(None, specs.get(name, specs.get("*", "")).split(";")):
        verb, _, arg = action.partition(":")
        if verb == "print":
            print(arg)
        elif verb == "exit":
            sys.exit(int(arg))
        elif verb == "sleep":
            time.sleep(float(arg))
        elif verb == "raise":
            raise ValueError(arg)
        elif verb == "kill_once":
            marker = os.path.join(directory, f"killed.{name}")
            if not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
        elif verb == "on_term":
            signal.signal(signal.SIGTERM, lambda *_, code=int(arg): sys.exit(code))
        elif verb == "ignore":
            signal.signal(getattr(signal, f"SIG{arg}"), signal.SIG_IGN)
        elif verb == "child":
            append(os.path.join(directory, "pids"), str(subprocess.Popen([sys.executable, "-c", CHILD]).pid))
        elif verb == "garbage":
            sys.stdout.buffer.write(b"\xff\xfe bad \x00 bytes\n" + b"x" * 1_000_000 + b"\nafter\n")
            sys.stdout.flush()
        elif verb == "chatter":
            chatter(int(arg))
        elif verb == "ready":
            open(os.path.join(directory, f"ready.{name}"), "w").close()
        else:
            sys.exit(f"task.py: unknown action {action!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
