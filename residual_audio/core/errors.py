"""The error every bad parameter raises: one line naming the key (or the file and line)."""


class ParamError(ValueError):
    """A parameter is missing or out of range; the message names the key."""
