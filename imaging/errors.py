"""The error every layer raises for input that cannot be analysed."""


class StageError(Exception):
    """The input cannot be analysed (bad or missing data); retrying will not help.

    A stage that meets it fails its job for good (no retry), with this message.
    """
