"""The generated bindings of the world `module` (sluice:module@0.2.0), in one place.

componentize-py generates the package `wit_world` while it builds a component; every use of it by
the SDK goes through this module. Host calls raise ``componentize_py_types.Err(types.Error)``.
"""

from componentize_py_types import Err  # noqa: F401  (re-exported)
from wit_world.imports import host, types  # noqa: F401  (re-exported)
