"""Moved to `modeling_icmoe.medical.propagation` (issue 22). This old path keeps working for one release: each name is
the new module's own, with a `DeprecationWarning`."""

from ._moved import forward_to as _forward_to

__getattr__ = _forward_to("modeling_icmoe.propagation", "modeling_icmoe.medical.propagation")
