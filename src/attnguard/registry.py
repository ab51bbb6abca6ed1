"""Name -> builder registries, in the style of timm's ``create_model``.

Every pluggable part (models, datasets, defenses, attacks, attention regularizers) lives
in a :class:`Registry`. The CLI, the YAML configs, ``attnguard list`` and the tests all
read the same registries, so adding an entry in one place makes it available everywhere.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Tuple

from .errors import UnknownNameError, plural


@dataclass(frozen=True)
class Entry:
    name: str
    builder: Callable[..., Any]
    description: str
    meta: Dict[str, Any] = field(default_factory=dict)


class Registry:
    """A mapping from names to builders, each with a one-line description.

    ``meta`` holds an entry's facts for whoever reads the registry (e.g. a model's ``pretrainable``).
    An entry whose meta has an ``example`` (a concrete name, for registries whose names are patterns
    such as ``pgd-K``) offers that example as the suggestion for a mistyped name.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Entry] = {}

    def register(self, name: str, description: str, **meta) -> Callable:
        """Decorator: ``@REG.register("name", "one line")`` over a builder."""

        def deco(builder):
            self.add(name, builder, description, **meta)
            return builder

        return deco

    def add(self, name: str, builder: Callable, description: str, **meta) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        if "\n" in description:
            raise ValueError("registry descriptions are one line")
        self._entries[name] = Entry(name, builder, description, dict(meta))

    def remove(self, name: str) -> Entry:
        """Unregister ``name`` and return its entry (tests use it to undo a registration)."""
        if name not in self._entries:
            raise self.unknown(name)
        return self._entries.pop(name)

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise self.unknown(name) from None

    def entries(self) -> List[Entry]:
        """Every entry, in registration order (the order parsers that try each entry use)."""
        return list(self._entries.values())

    def unknown(self, name: str) -> UnknownNameError:
        """The error for a name no entry has: one line, the valid names, the closest name or example."""
        err = UnknownNameError(self.kind, name, self._entries)
        examples = [e.meta["example"] for e in self._entries.values() if e.meta.get("example")]
        if not examples:
            return err
        close = difflib.get_close_matches(str(name).lower(), examples + self.names(), n=1)
        if close:
            # UnknownNameError suggests among the listed names only; where those are patterns
            # (pgd-K) a concrete example (pgd-20) is the suggestion a typo such as pdg-20 needs.
            hint = f" Did you mean '{close[0]}'?"
            err.args = (f"unknown {self.kind} '{name}'.{hint} Valid {plural(self.kind)}: {', '.join(err.valid)}",)
        return err

    def get(self, name: str) -> Callable:
        return self.entry(name).builder

    def build(self, name: str, *args, **kwargs):
        return self.get(name)(*args, **kwargs)

    def names(self) -> list:
        return sorted(self._entries)

    def describe(self) -> list[Tuple[str, str]]:
        return [(n, self._entries[n].description) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
