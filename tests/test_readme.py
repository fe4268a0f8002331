"""The README and the usage guide as written: every Python block runs (against the bundled stand-in SAM and data), every
shell block is valid bash, every `training/run.py` command's arguments parse, the README's sections come in the order
a new user needs them, every relative link of the documents resolves, and every dependency is named with its
reason."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from helpers import child_env
from training.arguments import parse_args

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
USAGE = (REPO / "docs" / "USAGE.md").read_text(encoding="utf-8")
DOCUMENTS = ("README.md", "docs/USAGE.md", "docs/METHOD.md", "docs/HISTORY.md", "docs/BENCHMARKS.md",
             "docs/METRICS.md")


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


PYTHON_BLOCKS = _blocks(README, "python")
USAGE_PYTHON_BLOCKS = _blocks(USAGE, "python")  # they continue the README's example
BASH_BLOCKS = _blocks(README, "bash") + _blocks(USAGE, "bash")


def _commands(block: str) -> list[str]:
    """The block's commands with `\\` continuations joined."""
    return [command.strip() for command in block.replace("\\\n", " ").splitlines() if command.strip()]


def test_the_documents_have_the_blocks_this_file_checks():
    assert len(PYTHON_BLOCKS) >= 2 and len(_blocks(README, "bash")) >= 4
    assert len(USAGE_PYTHON_BLOCKS) >= 2 and len(_blocks(USAGE, "bash")) >= 8


def test_the_readme_has_the_two_commands_and_the_fast_lane():
    commands = [c for block in _blocks(README, "bash") for c in _commands(block)]
    install = "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e "
    assert f'{install}".[train]" && accelerate launch training/run.py' in commands
    assert f'{install}".[test]" && python -m pytest -q' in commands
    assert '`python -m pytest -q -m "not slow"`' in README


def test_the_readme_sections_come_in_the_order_a_new_user_needs_them():
    headings = re.findall(r"^## (.+)$", README, flags=re.M)
    assert headings == ["The two commands", "Limitations, first", "Use the model", "Train on your data", "Results",
                        "Dependencies, and why", "Layout"]
    limitations = README[README.index("## Limitations, first"):README.index("## Use the model")]
    for point in ("stand-in", "off by default", "docs/METHOD.md", "level with LoRA", "U-Net"):
        assert point in limitations, point
    assert len(README.splitlines()) <= 250


@pytest.mark.slow
def test_python_blocks_run_as_written(tmp_path):
    """Run in a scratch folder that sees the repository's `training/` (bundled base and data) as the README assumes
    the repository root, so the snippets' outputs (`my-icmoe`, ...) land there. The usage guide's blocks continue the
    README's example in the same script."""
    (tmp_path / "training").symlink_to(REPO / "training", target_is_directory=True)
    script = tmp_path / "readme_snippets.py"
    script.write_text("\n".join(PYTHON_BLOCKS + USAGE_PYTHON_BLOCKS), encoding="utf-8")
    env = child_env(PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    # The default objective's weights, then its terms' values: the terms that weigh 0 by default are not shown.
    assert "{'dice': 1.0, 'bce': 1.0, 'iou': 1.0, 'load_balance': 0.1, 'pixel': 0.1}" in result.stdout
    pattern = r"\{'dice': [-\d.e]+, 'bce': [-\d.e]+, 'iou': [-\d.e]+, 'load_balance': [-\d.e]+, 'pixel': [-\d.e]+\}"
    assert re.search(pattern, result.stdout), result.stdout
    assert "'vote'" not in result.stdout and "'contrastive'" not in result.stdout
    assert "(1, 128, 128)" in result.stdout
    # Wrapping a SAM checkpoint says in one line that the adapters are new, instead of a table of missing tensors.
    assert "new IC-MoE adapter tensors" in result.stderr and "MISSING" not in result.stderr
    assert (tmp_path / "my-icmoe" / "config.json").is_file() and (tmp_path / "my-icmoe-adapter").is_dir()
    assert (tmp_path / "my-organs" / "config.json").is_file()


def test_the_readme_shows_the_default_objective_only():
    """`vote` and `contrastive` weigh 0 in the default `IcMoeAdapterConfig`: the example does not present them as
    terms of the default objective (what the printed weights are is checked against the model above)."""
    from modeling_icmoe import IcMoeAdapterConfig

    weights = {name: weight for name, weight in IcMoeAdapterConfig().loss_weights.items() if weight}
    assert f"print(weights)  # {weights}" in README
    assert weights.keys() == {"dice", "bce", "iou", "load_balance", "pixel"}


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


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation but `-` and `_` dropped, spaces as `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    return {_slug(heading) for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


LINKS = [(name, target) for name in DOCUMENTS
         for target in re.findall(r"\]\(([^)\s]+)\)", (REPO / name).read_text(encoding="utf-8"))
         if not target.startswith(("http://", "https://", "mailto:"))]


@pytest.mark.parametrize("document, target", LINKS, ids=[f"{d}->{t}" for d, t in LINKS])
def test_relative_links_resolve(document, target):
    """Every relative link of the README and the docs names a file that exists and, after `#`, one of its headings."""
    path, _, anchor = target.partition("#")
    file = (REPO / document).parent / path if path else REPO / document
    assert file.exists(), f"{document}: {target} names no file"
    if anchor:
        assert file.suffix == ".md", target
        assert anchor in _anchors(file.read_text(encoding="utf-8")), f"{document}: {target} names no heading"


def test_every_dependency_is_named_with_its_reason():
    """The README's dependency table names every requirement of the package, its extras and its tests."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    names = {re.match(r"[A-Za-z0-9_.\-]+", r).group(0).lower() for r in requirements}
    names.discard("icmoe-sam")
    table = README[README.index("## Dependencies, and why"):README.index("## Layout")]
    first_cells = " ".join(line.split("|")[1] for line in table.splitlines() if line.startswith("| ")).lower()
    named = set(re.findall(r"[a-z0-9_\-]+", first_cells))
    assert names <= named, sorted(names - named)
