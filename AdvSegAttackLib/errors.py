"""The one exception type for bad user input."""


class InputError(Exception):
    """Bad input: the message is one sentence naming the file or option and what is wrong.

    The CLI prints it (no traceback) and exits with status 2; nothing partial is left on disk.
    """
