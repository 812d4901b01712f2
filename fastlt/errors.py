"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class FastltError(Exception):
    """A problem with the user's input (a file, a recipe, a checkpoint), stated in one line.

    The message names the file or setting and what is wrong with it; the CLI prints
    it as ``error: <message>`` and exits with status 1, without a traceback.
    """
