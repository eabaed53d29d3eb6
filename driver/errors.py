"""Errors the user must act on. The CLI prints them as one line (exit code 2), never as a traceback."""


class DriverError(Exception):
    """Base of driver's own non-ValueError errors (ValueError and OSError are reported the same way)."""


class SpeedRequired(DriverError, ValueError):
    """A model trained with the car's speed as an input (``speed_input``) was run without the speed."""
