"""Parts from outside the package: the run config's ``imports`` lists Python modules to import before the config is
validated, so that their ``@REGISTRY.register(name)`` calls add criteria, methods, operators, relaxations or
discretizers that the rest of the config can then name::

    PYTHONPATH=. diffora run imports=[my_criteria] criterion.name=inverse_depth

A module is imported once per process (Python caches it), so a sweep's jobs and the ranks of a torchrun register
each part once. How to write each kind of part: docs/extending.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType

from nas.errors import ConfigError


def _is_missing(name: str, error: ModuleNotFoundError) -> bool:
    """Is the module ``name`` itself (or a package above it) what could not be found, not one that it imports?"""
    missing = error.name or ""
    return bool(missing) and (name == missing or name.startswith(missing + "."))


def import_extensions(names: Iterable[str]) -> list[ModuleType]:
    """Import every module in ``names`` (dotted names, as for ``import``), in order; returns the modules.

    A name that is a file path, a module that is not found, or one whose own code fails while it is imported (a
    missing dependency, a name registered twice) is a ConfigError naming the module and the fix."""
    modules = []
    for name in names:
        name = str(name)
        if not name or name.endswith(".py") or "/" in name or "\\" in name:
            stem = name.removesuffix(".py").replace("\\", "/").rsplit("/", 1)[-1] or "my_module"
            raise ConfigError(f"imports has {name!r}, which is not a module name; list the module as for `import` "
                              f"(e.g. imports=[{stem}]) and put its folder on PYTHONPATH")
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as error:
            if not _is_missing(name, error):
                raise ConfigError(f"imports: module {name} needs {error.name}, which is not installed; install it, "
                                  f"or see the traceback with python -c 'import {name}'") from error
            raise ConfigError(f"imports: module {name} cannot be imported (no module named {error.name}); is it on "
                              f"PYTHONPATH (e.g. PYTHONPATH=. for ./{name.replace('.', '/')}.py) or installed?"
                              ) from error
        except Exception as error:
            raise ConfigError(f"imports: module {name} failed while it was imported ({type(error).__name__}: "
                              f"{error}); fix it, and see the traceback with python -c 'import {name}'") from error
    return modules
