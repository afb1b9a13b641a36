"""Errors of ``mmsy build`` that the user can fix by changing the input or the options."""


class BuildError(Exception):
    """A dataset build that cannot go on; the message names the value and the fix."""


class SourceNotFoundError(BuildError, FileNotFoundError):
    """A source folder or file is missing."""


class MalformedSourceError(BuildError, ValueError):
    """A source file that is not valid JSON or has a row of the wrong shape."""


class OutputExistsError(BuildError, FileExistsError):
    """The output directory exists and ``--overwrite`` was not given."""


class DatasetDirError(BuildError, FileNotFoundError):
    """A dataset directory that is missing, incomplete or not written by ``mmsy build``."""


class InvalidOptionError(BuildError, ValueError):
    """A build option (a mapping, a pattern, a count) that is invalid."""
