"""Moved to `modeling_icmoe.medical.cli` (issue 22). This old path keeps working for one release: each name is the
new module's own, with a `DeprecationWarning`; `python -m modeling_icmoe.cli` runs the command, with the warning."""

from ._moved import forward_to as _forward_to

__getattr__ = _forward_to("modeling_icmoe.cli", "modeling_icmoe.medical.cli")

if __name__ == "__main__":
    import sys
    import warnings

    warnings.warn("`python -m modeling_icmoe.cli` moved to `python -m modeling_icmoe.medical.cli` (or the `icmoe-sam` "
                  "command); the old path will be removed in the next release.", DeprecationWarning, stacklevel=1)
    from .medical.cli import main

    sys.exit(main())
