"""Errors of the composition root.

    HealthiotError
    ├── SettingsError (also ValueError): a setting is missing, malformed or a placeholder
    └── ServerUnavailable (also RuntimeError): a server the stack needs could not be started
"""


class HealthiotError(Exception):
    """Root of every error raised by the healthiot package."""


class SettingsError(HealthiotError, ValueError):
    """A setting is missing, malformed, or a placeholder where a real secret is needed."""


class ServerUnavailable(HealthiotError, RuntimeError):
    """PostgreSQL or Mosquitto could not be found or started; the message says what to do."""
