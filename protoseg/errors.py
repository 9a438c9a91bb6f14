"""Errors that users see: each names the file or config key and the problem."""

from __future__ import annotations

from pathlib import Path


class ProtosegError(Exception):
    """Base class for every error protoseg raises on purpose."""


class InputError(ProtosegError):
    """A bad input file: ``InputError(path, problem)`` reads ``path: problem``."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(ProtosegError):
    """A bad config value: ``ConfigError("masks.method", problem)``."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}")


class OutputError(ProtosegError):
    """An output that could not be written: ``OutputError(path, problem)`` reads ``path: problem``.

    Raised by :func:`protoseg.io.atomic_path` (every writer goes through it), most often
    when the disk is full.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
