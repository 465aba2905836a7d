"""The README's Python examples run as written; CI runs the README's test command."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)  # the trainer example writes runs/linear here
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs" / "linear" / "summary.json").exists()


def test_ci_runs_the_quickstart_test_command():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    (command,) = [line for line in text.splitlines() if line.endswith("python -m pytest -q")]
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert command.replace("install ", "install -q ") in ci  # the same command, quieter
