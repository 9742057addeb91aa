"""The ``mgpo`` command line: a Typer shell over the pipeline library in :mod:`stages`."""

from stages import __version__

__all__ = ["__version__"]
