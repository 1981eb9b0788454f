"""README's Python examples: valid Python, formatted as the package's code is (``ruff format``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_examples_compile_and_are_formatted() -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 3  # the quickstart, the sparse files, the examples
    for number, block in enumerate(blocks):
        compile(block, f"README.md python block {number}", "exec")
        diff = subprocess.run(
            [sys.executable, "-m", "ruff", "format", "--diff", "--stdin-filename", "README_example.py", "-"],
            input=block,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert diff.stdout == "", f"README python block {number} is not formatted:\n{diff.stdout}"
