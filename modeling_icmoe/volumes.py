"""Moved to `modeling_icmoe.medical.volumes` (issue 22). This old path keeps working for one release: each name is
the new module's own, with a `DeprecationWarning`."""

from ._moved import forward_to as _forward_to

# `mask_box` moved to `imaging` a release earlier: straight there, with that warning.
__getattr__ = _forward_to("modeling_icmoe.volumes", "modeling_icmoe.medical.volumes",
                          elsewhere={"mask_box": "modeling_icmoe.imaging"})
