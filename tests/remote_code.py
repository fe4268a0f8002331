"""Running a script in a fresh process where this package cannot be imported: what loading by remote code means
for a user who has only transformers installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

BLOCK_PACKAGE = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "modeling_icmoe" or name.startswith("modeling_icmoe."):
            raise ModuleNotFoundError("modeling_icmoe is blocked in this process")
sys.meta_path.insert(0, Block())
"""


def run_without_package(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Runs `script` (dedented) offline, with an empty Hub cache and `modeling_icmoe` unimportable; asserts that it
    succeeded and that the package stayed out of reach."""
    check = '\ntry:\n    import modeling_icmoe\nexcept ModuleNotFoundError:\n    print("REMOTE-OK")\n'
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", BLOCK_PACKAGE + textwrap.dedent(script) + check], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-OK" in result.stdout
    return result
