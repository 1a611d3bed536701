"""Errors of the registry: each one is a refusal with a message saying why; nothing was changed."""

from __future__ import annotations


class RegistryError(RuntimeError):
    """A registry operation was refused; the message says why. Nothing was changed."""


class UnknownVersion(RegistryError):
    pass


class UnknownAlias(RegistryError):
    pass


class InvalidTransition(RegistryError):
    """The version or alias is not in a state that allows this transition."""


class GateNotPassed(InvalidTransition):
    pass


class NoProductionVersion(InvalidTransition):
    pass


class InvalidWeight(RegistryError, ValueError):
    pass
