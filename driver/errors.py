"""Errors the user must act on. The CLI prints them as one line (exit code 2), never as a traceback
(``driver -v`` adds it); every error class of driver derives from :class:`DriverError`."""


class DriverError(Exception):
    """Base of every error class of driver. Most also derive from the builtin they refine (ValueError,
    OSError, RuntimeError), so code that catches the builtin keeps working."""


class SpeedRequired(DriverError, ValueError):
    """A model trained with the car's speed as an input (``speed_input``) was run without the speed."""
