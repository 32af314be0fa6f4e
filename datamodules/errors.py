"""Data errors that say what went wrong and which option fixes it."""


class DataError(RuntimeError):
    pass


class MissingDataError(DataError, FileNotFoundError):
    pass


class CorruptImageError(DataError):
    pass
