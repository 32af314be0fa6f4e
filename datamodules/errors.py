"""Data errors that say what went wrong and which option fixes it."""


class DataError(RuntimeError):
    pass


class MissingDataError(DataError, FileNotFoundError):
    pass


class CorruptImageError(DataError):
    pass


class NoLabelsError(DataError):
    """The source has no labelled split (an unlabelled folder): the probes and evaluation need another set."""
