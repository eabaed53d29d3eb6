"""driver: behavioral cloning for small autonomous cars."""

__version__ = "0.1.0"
