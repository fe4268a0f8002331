"""The README's commands as written: every Python block runs (against the bundled stand-in SAM and data), every shell
block is valid bash, and every `training/run.py` command's arguments parse."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import child_env
from training.arguments import parse_args

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
BASH_BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def _commands(block: str) -> list[str]:
    """The block's commands with `\\` continuations joined."""
    return [command.strip() for command in block.replace("\\\n", " ").splitlines() if command.strip()]


def test_the_readme_has_the_blocks_this_file_checks():
    assert len(PYTHON_BLOCKS) >= 2 and len(BASH_BLOCKS) >= 4


@pytest.mark.slow
def test_python_blocks_run_as_written(tmp_path):
    """Run in a scratch folder that sees the repository's `training/` (bundled base and data) as the README assumes
    the repository root, so the snippets' outputs (`my-icmoe`, ...) land there."""
    (tmp_path / "training").symlink_to(REPO / "training", target_is_directory=True)
    script = tmp_path / "readme_snippets.py"
    script.write_text("\n".join(PYTHON_BLOCKS), encoding="utf-8")
    env = child_env(PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    # The default objective's terms, then every term the model computes and logs.
    assert "{'dice': 1.0, 'bce': 1.0, 'iou': 1.0, 'load_balance': 0.1, 'pixel': 0.1}" in result.stdout
    assert "['bce', 'contrastive', 'dice', 'iou', 'load_balance', 'pixel', 'router_z', 'vote']" in result.stdout
    assert "(1, 128, 128)" in result.stdout
    # Wrapping a SAM checkpoint says in one line that the adapters are new, instead of a table of missing tensors.
    assert "new IC-MoE adapter tensors" in result.stderr and "MISSING" not in result.stderr
    assert (tmp_path / "my-icmoe" / "config.json").is_file() and (tmp_path / "my-icmoe-adapter").is_dir()


@pytest.mark.parametrize("block", BASH_BLOCKS)
def test_bash_blocks_are_valid_and_have_no_comment_inside_a_command(block):
    syntax = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr
    lines = block.splitlines()
    for before, line in zip(lines, lines[1:]):
        # A comment on a continued line ends the command there: the lines after it run as commands of their own.
        if before.rstrip().endswith("\\") or line.rstrip().endswith("\\"):
            assert " #" not in line, f"comment inside a continued command: {line!r}"
    assert "<" not in block.replace("<=", ""), "placeholders in <...> are redirections in bash"


@pytest.mark.parametrize("command", [c for block in BASH_BLOCKS for c in _commands(block) if "training/run.py" in c])
def test_run_commands_parse(command):
    args = shlex.split(command.split("training/run.py", 1)[1])
    parse_args(args)  # exits with the argparse message on a wrong option
