"""The one error type user-facing code raises for bad input.

Every message names where the problem is (file and field), what is wrong, and how to fix it. The CLI
turns a `HelixInputError` into one line on stderr and exit code 2; the HTTP server into a 4xx.
"""

from __future__ import annotations


class HelixInputError(ValueError):
    """Bad input from a user: a config file, a CLI flag, a plan, a trace or a request.

    Attributes:
        where: the file (or flag / request part) the problem is in, e.g. ``cluster.yaml``.
        field: the dotted field path, e.g. ``nodes[3].gpu``.
        problem: what is wrong.
        fix: what to do about it.
    """

    def __init__(self, problem: str, *, where: str = "", field: str = "", fix: str = "") -> None:
        self.where = where
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(self.format())

    def format(self) -> str:
        location = ": ".join(part for part in (self.where, self.field) if part)
        text = f"{location}: {self.problem}" if location else self.problem
        return f"{text} (fix: {self.fix})" if self.fix else text

    def located(self, where: str) -> HelixInputError:
        """The same error with `where` filled in (used by loaders that learn the file name late)."""
        return HelixInputError(self.problem, where=self.where or where, field=self.field, fix=self.fix)
