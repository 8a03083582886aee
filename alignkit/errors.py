"""Errors a user can fix. They are printed as one or two lines, never as a traceback."""


class AlignkitError(Exception):
    """A problem with the user's config, data, model or output folder; the message says how to fix it."""


class ConfigError(AlignkitError):
    pass


class DataError(AlignkitError):
    pass


class ModelError(AlignkitError):
    pass


class OutputDirError(AlignkitError):
    pass
