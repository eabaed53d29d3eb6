"""The one error of the importers and exporters: names the file (or folder) and what is wrong with it."""

from __future__ import annotations

from ..run_format import RunFormatError


class ImportFormatError(RunFormatError):
    """A source dataset (tub, LeRobot) or mapping file that cannot be read as asked.

    A :class:`~driver.datasets.run_format.RunFormatError`, so ``driver ingest`` reports it as one line,
    ``"<file>: <problem>"``, fails only the run it belongs to and ingests the others.
    """
