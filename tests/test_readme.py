"""The README is the front door: its flag table is the flags (names and defaults), and its output table
names what a run writes. A run's files and summary.json keys are checked against the table."""

import dataclasses
import json
import os
import re

import pytest

from harness.run_config import RunConfig
from tests.conftest import ROOT

README = open(os.path.join(ROOT, "README.md")).read()
FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def table_after(heading):
    """The rows (lists of cells) of the first Markdown table after `heading`."""
    section = README[README.index(heading):]
    block = []
    for line in section.splitlines()[1:]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif block:
            break
    return block[2:]  # without the header and its rule


FLAG_ROWS = table_after("### Flags of `scripts/train.py`")


def documented_defaults():
    for cells in FLAG_ROWS:
        names = re.findall(r"`--(\w+)`", cells[0])
        defaults = [d.strip() for d in cells[1].split(" / ")]
        for i, name in enumerate(names):
            yield name, defaults[i] if len(defaults) == len(names) else defaults[0]


def parse(text):
    """A default as the README writes it: `unset`, a `literal` in backticks, or prose (None: not checked)."""
    if text.startswith("unset"):
        return ("value", None)
    literal = re.fullmatch(r"`([^`]*)`", text)
    if not literal:
        return ("prose", text)
    value = literal.group(1)
    if value in ("true", "false"):
        return ("value", value == "true")
    try:
        return ("value", float(value))
    except ValueError:
        return ("value", value)


def test_every_flag_is_in_the_readme_and_every_documented_flag_exists():
    documented = dict(documented_defaults())
    assert set(documented) - set(FIELDS) == set(), "documented flags that do not exist"
    assert set(FIELDS) - set(documented) == set(), "flags the README does not document"


@pytest.mark.parametrize("name, text", list(documented_defaults()))
def test_the_documented_default_is_the_real_one(name, text):
    kind, value = parse(text)
    default = FIELDS[name].default
    if kind == "prose":
        assert default is None or isinstance(default, str), (name, text, default)
        return
    if isinstance(default, bool) or value is None or isinstance(value, str):
        assert (default or None if value is None else default) == value, (name, text, default)
    else:
        assert float(default) == value, (name, text, default)


@pytest.mark.slow
def test_a_run_writes_what_the_output_table_names(tmp_path, data_dir):
    from harness.run import run

    model_dir = tmp_path / "run"
    run(RunConfig(strategy="default", epochs=2, steps_per_epoch=3, model_dir=str(model_dir), data_dir=data_dir,
                  progress=False, save_best_only=True, early_stopping_patience=5, restore_best_weights=True))
    rows = table_after("### Outputs (under `--model_dir`, written by the chief only)")
    for cells in rows:
        for path in re.findall(r"`([^`]+)`", cells[0]):
            pattern = path.replace("<global step>", "*").replace("<N>", "*")
            found = list(model_dir.glob(pattern)) or list(model_dir.glob(pattern + ".*"))  # a checkpoint's prefix
            assert found, f"the README names {path}, which the run did not write"
    summary = json.loads((model_dir / "summary.json").read_text())
    summary_row = next(cells for cells in rows if cells[0] == "`summary.json`")
    keys = set(re.findall(r"`(\w+)`", re.sub(r"\([^()]*\)", "", summary_row[1])))  # outside the parentheses
    assert keys and keys <= set(summary), sorted(keys - set(summary))
    assert set(summary) <= keys, f"summary.json keys the README does not name: {sorted(set(summary) - keys)}"
