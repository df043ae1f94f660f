"""A task's parameters, declared once: checked at submit time (CLI and API alike) and described for forms.

A Schema is a tuple of Params; each Param has a check that returns the value or raises
BadParams naming the parameter. `Schema.validate()` accepts camelCase or snake_case keys
(the platform sends camelCase), refuses unknown keys unless the schema is open (debug
drills), and stores snake_case. Values are kept as given: the task normalises them when it
runs, so a job reads the same whichever door it came in by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from geoworker.casing import camel, snake
from geoworker.errors import BadParams

Check = Callable[[Any, Any], Any]  # (value, settings) -> value; raises BadParams


@dataclass(frozen=True)
class Param:
    """One parameter.

    Attributes:
        name: snake_case, as stored.
        kind: "integer", "number", "boolean", "string" or "choice" (what a form shows).
        help: one line for people.
        check: raises BadParams when the value is wrong.
        choices: the allowed values of a "choice".
        default: the value when absent, or a function of the settings giving it.
        main: offered in the dashboard's upload form.
    """

    name: str
    kind: str
    help: str
    check: Check
    choices: tuple[str, ...] = ()
    default: Any = None
    main: bool = False

    def default_for(self, settings: Any) -> Any:
        return self.default(settings) if callable(self.default) else self.default

    def describe(self, settings: Any) -> dict[str, Any]:
        doc = {"name": self.name, "key": camel(self.name), "kind": self.kind, "help": self.help,
               "default": self.default_for(settings), "main": self.main}
        if self.choices:
            doc["choices"] = list(self.choices)
        return doc


@dataclass(frozen=True)
class Schema:
    """The parameters of a task.

    Attributes:
        params: the declared parameters.
        open: undeclared keys are kept as they are (debug drills) instead of refused.
        check_all: a rule that spans keys, run after each key passed: (params, settings) -> None.
    """

    params: tuple[Param, ...] = ()
    open: bool = False
    check_all: Callable[[Mapping[str, Any], Any], None] | None = field(default=None, compare=False)

    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def validate(self, given: Any, settings: Any) -> dict[str, Any]:
        """Check a job's parameters; returns them with snake_case keys.

        Raises:
            BadParams: naming the parameter (exc.key, as the caller spelt it).
        """
        if given is None:
            return {}
        if not isinstance(given, Mapping):
            raise BadParams(f"parameters must be an object of key/value pairs, got {type(given).__name__}")
        declared = {p.name: p for p in self.params}
        out: dict[str, Any] = {}
        for key, value in given.items():
            name = snake(key)
            if name in out:
                raise BadParams(f"{name} is given twice (camelCase and snake_case)", key=str(key))
            param = declared.get(name)
            if param is None:
                if not self.open:
                    known = ", ".join(camel(n) for n in sorted(declared)) or "none"
                    raise BadParams(f"unknown parameter (known: {known})", key=str(key))
            else:
                try:
                    param.check(value, settings)
                except BadParams as exc:
                    raise BadParams(str(exc), key=str(key)) from None
            out[name] = value
        if self.check_all is not None:
            self.check_all(out, settings)
        return out

    def describe(self, settings: Any) -> list[dict[str, Any]]:
        """Every parameter as {name, key, kind, help, default, main[, choices]} (forms, docs)."""
        return [p.describe(settings) for p in self.params]

    def __add__(self, other: "Schema") -> "Schema":
        return Schema(self.params + other.params, self.open or other.open, self.check_all or other.check_all)


# --- checks every task family uses ----------------------------------------------------------


def number(name: str, minimum: float = 0.0, maximum: float | None = None) -> Check:
    """A finite number in [minimum, maximum] (booleans are not numbers)."""

    def check(value: Any, settings: Any) -> Any:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < minimum or (maximum is not None and value > maximum):
            bound = f" and at most {maximum:g}" if maximum is not None else ""
            raise BadParams(f"{name} must be a number of at least {minimum:g}{bound}, got {value!r}")
        return value

    return check


def boolean(name: str) -> Check:
    def check(value: Any, settings: Any) -> Any:
        if not isinstance(value, bool):
            raise BadParams(f"{name} must be true or false, got {value!r}")
        return value

    return check


def text(name: str, max_length: int = 2000) -> Check:
    def check(value: Any, settings: Any) -> Any:
        if not isinstance(value, str) or len(value) > max_length or "\x00" in value:
            raise BadParams(f"{name} must be a string of at most {max_length} characters, got {value!r:.80}")
        return value

    return check


def _check_timeout(value: Any, settings: Any) -> Any:
    limit = settings.worker.max_processing_time
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0 < value <= limit:
        raise BadParams(f"timeout must be a number of seconds above 0 and at most {limit:g} "
                        "(worker.max_processing_time)")
    return value


TIMEOUT = Param("timeout", "number", "seconds this job may run (replaces worker.max_processing_time for it)",
                _check_timeout, default=lambda s: s.worker.max_processing_time)
# every task takes a timeout: the watchdog applies it whatever the task is
COMMON = Schema((TIMEOUT,))
