"""Methods as objects: a registry per recipe, each method one class with its own settings.

A recipe's method (``ikl``, ``dkd``, ``trades``, ``fixmatch``, ...) is a subclass of the recipe's method
base class, registered by name in the recipe's :class:`Registry`. It declares the settings it reads as a
dataclass, ``Settings``; the run's config schema is the recipe's own fields plus the chosen method's
``Settings`` (:func:`dkl_train.config.load_config` assembles it), so

- a setting that the chosen method does not read is refused, naming the method(s) that read it;
- ``--help`` lists the settings grouped by the methods that read them;
- the method is built once from its own settings (``cls(settings)``) and the training loop calls it
  without knowing which method it is.

A recipe may have more than one such choice (SSL: the algorithm, ``method``, and its ``consistency``
loss); each is a config field naming a registry (``BaseConfig.components``).

Your own method needs no edit of the project: subclass the recipe's base class in your own file and
pass ``method=my_methods.py:MyMethod`` (a file) or ``method=my_package.my_module:MyMethod`` (an
importable module; the working directory is searched first, as ``python -m`` does). CONTRIBUTING.md
has a worked example.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from .config import ConfigError


class MethodError(ConfigError):
    """An unknown method name, or a ``module:Class`` that cannot be loaded or is not a method of this recipe."""


@dataclasses.dataclass
class NoSettings:
    """The settings of a method that reads none of its own."""


class Method:
    """The base of every recipe's method base class: a name, the settings it reads, a cross-setting check.

    Subclasses set ``name`` (the registry key, what ``method=`` takes) and ``Settings`` (a dataclass whose
    fields, with a ``# comment`` each, are the settings this method reads; inherit a parent's to share
    them). The recipe's base class adds the interface its loop calls (e.g. ``loss(model, batch)``).
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    @classmethod
    def check(cls, config: Any) -> None:
        """Refuse (``ConfigError``) a combination of settings this method cannot run; the whole config is given."""

    @classmethod
    def from_config(cls, config: Any) -> Method:
        """The method built from its own settings, taken from the run's resolved config."""
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls.Settings)}
        return cls(cls.Settings(**values))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings})"


M = TypeVar("M", bound=Method)


class Registry(Generic[M]):
    """The methods of one recipe (or one choice of it), by name, in registration order (the paper's columns).

    Args:
        base: the class every entry subclasses (the recipe's method interface).
        field: the config field that names the choice (``method``, ``consistency``).
    """

    def __init__(self, base: type[M], field: str = "method") -> None:
        self.base = base
        self.field = field
        self._classes: dict[str, type[M]] = {}

    def register(self, cls: type[M]) -> type[M]:
        """Class decorator: add ``cls`` under ``cls.name``."""
        if not issubclass(cls, self.base):
            raise TypeError(f"{cls.__name__} must subclass {self.base.__name__} to be a {self.field}")
        if not cls.name or cls.name in self._classes:
            raise TypeError(f"{cls.__name__}: name {cls.name!r} is empty or already registered")
        self._classes[cls.name] = cls
        return cls

    def names(self) -> tuple[str, ...]:
        return tuple(self._classes)

    def __iter__(self) -> Iterator[type[M]]:
        return iter(self._classes.values())

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def get(self, name: str) -> type[M]:
        """The class registered as ``name``, or loaded from ``file.py:Class`` / ``module:Class``."""
        if name in self._classes:
            return self._classes[name]
        if ":" in name:
            return self._load(name)
        close = difflib.get_close_matches(name, list(self._classes), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise MethodError(
            f"unknown {self.field} {name!r}.{hint} Known: {', '.join(self._classes)}; or your own class as "
            f"{self.field}=my_file.py:MyClass (a subclass of {_qualified(self.base)})"
        )

    def _load(self, spec: str) -> type[M]:
        where, _, class_name = spec.rpartition(":")
        module = _import(where, spec, self.field)
        cls = getattr(module, class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            found = "not found" if cls is None else f"is {cls!r}"
            raise MethodError(
                f"{self.field}={spec}: {class_name} {found} in {where}; it must be a subclass of {_qualified(self.base)}"
            )
        return cls


def _import(where: str, spec: str, field: str) -> Any:
    """The module of ``spec``: a ``.py`` file (by path) or a dotted module name (working directory first)."""
    try:
        if where.endswith(".py"):
            path = Path(where).resolve()
            if not path.is_file():
                raise FileNotFoundError(f"no file {where}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[path.stem] = module  # dataclasses and pickling look classes up by module
            module_spec.loader.exec_module(module)
            return module
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        return importlib.import_module(where)
    except (ImportError, FileNotFoundError, SyntaxError) as err:
        raise MethodError(f"{field}={spec}: cannot load {where} ({err})") from None


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
