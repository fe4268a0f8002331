"""The old import paths of modules that moved (issue 22: the medical toolkit went to `modeling_icmoe.medical`).

Each old module file is a shim whose module-level `__getattr__` is `forward_to(old, new)`: a name asked of the old
module comes from the new one, the same object, with a `DeprecationWarning` that names the new path. The shims keep
working for one release and are then removed.
"""

from __future__ import annotations

import importlib
import warnings

# Old module -> new module. The shims, their tests and the import-graph test read this.
MOVED_MODULES = {
    f"modeling_icmoe.{name}": f"modeling_icmoe.medical.{name}"
    for name in ("annotation", "app", "cli", "dicom", "export", "propagation", "volume_metrics", "volumes")
}


def forward_to(old: str, new: str, elsewhere: dict[str, str] | None = None):
    """A module `__getattr__` for the old module `old`: every name of `new` (imported on first use), with a warning.
    `elsewhere` maps names that an earlier release already moved out of `old` to their module: they come from there,
    and the warning names it."""

    def __getattr__(name: str):
        if name.startswith("__") and name.endswith("__"):  # the import system's and tools' probes: no forwarding
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        home = (elsewhere or {}).get(name, new)
        module = importlib.import_module(home)
        try:
            value = getattr(module, name)
        except AttributeError:
            raise AttributeError(f"module {old!r} has no attribute {name!r}") from None
        warnings.warn(f"`{old}.{name}` moved to `{home}.{name}`; the old path will be removed in the next release.",
                      DeprecationWarning, stacklevel=2)
        return value

    return __getattr__
