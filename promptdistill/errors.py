"""User-facing errors.

Every problem caused by the user's input (a file, a config key, a model name)
is raised as `PromptDistillError`, carrying the file, line and field it comes
from. The CLI prints these as one clear line and exits non-zero; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class PromptDistillError(Exception):
    """An error in the user's input, reported without a traceback."""

    def __init__(self, message: str, *, path=None, line: int | None = None, field: str | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ""
        if self.path:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
        if self.field:
            where = f"{where} field '{self.field}'" if where else f"field '{self.field}'"
        return f"{where}: {self.message}" if where else self.message
