"""The search: data, store, loop, training, report, the CLI and the Python API (api.py).

This package is also `agesearch.search(...)`, the API's search function: a package cannot be a
function too, and the issue's API (`agesearch.search(space=..., data=..., ...)`, as KerasTuner's
`tuner.search()`) names it so. The module's class is made callable below, the way the Python
data model documents for customising a module (assigning `__class__` a ModuleType subclass);
imports of the sub-packages (`agesearch.search.loop.run`, ...) and `mock.patch` paths work as for
any package. Calling it imports the API (Optuna, then Keras) only then, so `import agesearch`
stays light.
"""

from __future__ import annotations

import sys
import types


class _CallablePackage(types.ModuleType):
    """`agesearch.search(...)` is `agesearch.search.api.search(...)`."""

    def __call__(self, *args, **kwargs):
        from agesearch.search.api import search

        return search(*args, **kwargs)

    @property
    def __signature__(self):  # inspect.signature / IDEs: the function's, not (*args, **kwargs)
        import inspect

        from agesearch.search.api import search  # light: the API imports its frameworks when called

        return inspect.signature(search)


sys.modules[__name__].__class__ = _CallablePackage
