"""Registries of the pluggable stages: each maps a name to an implementation that declares what it needs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from neuron_explainer.core.errors import UserError

ItemT = TypeVar("ItemT")


@dataclass(frozen=True)
class Needs:
    """What an implementation needs from the run that builds it, so callers check one declaration, not name lists."""

    llm: bool = False
    """An LLM backend (`--llm`)."""
    slot_distributions: bool = False
    """A backend that returns a probability distribution at each token slot (best, not required)."""
    subject: bool = False
    """The subject model itself (to run it on new text)."""


class Name(str):
    """The name of a registered implementation: a plain string (stored as such) that is also its own `.value`.

    Equal names are the same object, so `kind is ExplainerKind.SASC` holds for names read back from a database."""

    __slots__ = ()
    _interned: ClassVar[dict[str, Name]]

    def __init_subclass__(cls) -> None:
        cls._interned = {}

    def __new__(cls, value: str) -> Name:
        text = str.__str__(value)
        existing = cls._interned.get(text)
        if existing is None:
            existing = super().__new__(cls, text)
            cls._interned[text] = existing
        return existing

    @property
    def value(self) -> str:
        """The name as a plain string."""
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"


class Registry(Generic[ItemT]):
    """Implementations of one stage by name, in registration order (the order error messages list them in)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, ItemT] = {}

    def register(self, name: str, item: ItemT) -> ItemT:
        """Add `item` under `name` (a second registration of a name replaces the first)."""
        self._items[str.__str__(name)] = item
        return item

    def get(self, name: str) -> ItemT:
        """The implementation registered under `name`; a UserError listing the choices otherwise."""
        try:
            return self._items[str.__str__(name)]
        except KeyError:
            raise UserError(f"unknown {self.what} {name!r}: choose one of {', '.join(self._items)}") from None

    def names(self) -> list[str]:
        """Every registered name."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and str.__str__(name) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))
