"""Name -> builder registries, in the style of timm's ``create_model``.

Every pluggable part (models, datasets, defenses, attacks, attention regularizers) lives
in a :class:`Registry`. The CLI, the YAML configs, ``attnguard list`` and the tests all
read the same registries, so adding an entry in one place makes it available everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Tuple

from .errors import UnknownNameError


@dataclass(frozen=True)
class Entry:
    name: str
    builder: Callable[..., Any]
    description: str
    meta: Dict[str, Any] = field(default_factory=dict)


class Registry:
    """A mapping from names to builders, each with a one-line description."""

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

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

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
