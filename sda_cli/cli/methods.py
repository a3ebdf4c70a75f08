"""The posterior methods' options on the command line, read from the one registry (:data:`sda_cli.guidance.METHODS`).

:func:`with_method_options` adds a ``--flag`` for every option any method declares to a command's signature, with the
help of each method that takes it; the command receives them as keyword arguments and hands them to the library, which
checks them. A new method's options appear here without a change.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar

import typer

from sda_cli.guidance import METHODS, Option, PosteriorMethod

__all__ = ["method_help", "steps_help", "with_method_options"]

PANEL = "Method options (each method checks its own; see --method)"
Command = TypeVar("Command", bound=Callable[..., Any])


def _options_by_name() -> dict[str, list[tuple[str, Option]]]:
    found: dict[str, list[tuple[str, Option]]] = {}
    for name, kind in METHODS.items():
        for option in kind.options:
            found.setdefault(option.name, []).append((name, option))
    return found


def _parameters() -> Iterable[inspect.Parameter]:
    for name, uses in _options_by_name().items():
        described = "; ".join(
            f"{method}: {option.help}, {option.range_text()} ({option.default:g})" for method, option in uses
        )
        kind = int if all(option.integer for _, option in uses) else float
        flag = typer.Option(uses[0][1].flag, help=f"{described}.", rich_help_panel=PANEL, show_default=False)
        yield inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, flag]
        )


def with_method_options(command: Command) -> Command:
    """``command`` with a keyword parameter per method option (module docstring); its ``**options`` receive them."""
    signature = inspect.signature(command, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    added = list(_parameters())
    command.__signature__ = signature.replace(parameters=[*kept, *added])  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in [*kept, *added]} | {"return": None}
    return command


def method_help(methods: Iterable[type[PosteriorMethod]], default: str) -> str:
    """The ``--method`` help: each method's name and summary."""
    lines = [f"{kind.name}{' (default)' if kind.name == default else ''}: {kind.summary}" for kind in methods]
    return "; ".join(lines) + "."


def steps_help(methods: Iterable[type[PosteriorMethod]]) -> str:
    """The ``--steps`` help: each method's default."""
    defaults = ", ".join(f"{kind.name} {kind.STEPS}" for kind in methods if kind.STEPS is not None)
    return f"Steps of the method (default: {defaults})."


def method_options(options: dict[str, Any]) -> dict[str, Any]:
    """The method options given on the command line (the others are ``None``)."""
    names = _options_by_name()
    return {name: value for name, value in options.items() if name in names and value is not None}
