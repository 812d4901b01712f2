"""The exceptions the CLI turns into a one-line message and a non-zero exit, instead of a traceback."""
import signal


class FastltError(Exception):
    """A problem with the user's input (a file, a recipe, a checkpoint), stated in one line.

    The message names the file or setting and what is wrong with it; the CLI prints
    it as ``error: <message>`` and exits with status 1, without a traceback.
    """


class RunStopped(Exception):
    """A run stopped by SIGINT or SIGTERM after writing its checkpoint; the CLI prints the message and
    exits with 128 + the signal's number, as a shell reports a process a signal ended.

    ``what`` says where it stopped and ``next_step`` what to type to continue, kept apart so a command that
    trains through another (reproduce) can give its own next step."""

    def __init__(self, what: str, next_step: str, signum: int):
        super().__init__(f"{what}; {next_step}")
        self.what, self.next_step, self.signum = what, next_step, signum


class SecondSignal(KeyboardInterrupt):
    """SIGINT or SIGTERM while a run stops (not the first one repeated within seconds): the process ends at
    once, without the checkpoint it was writing (writes are atomic: the last complete one stays). A
    KeyboardInterrupt, so that no ``except Exception`` on the way holds it up; the CLI prints the message and
    exits with 128 + the signal."""

    def __init__(self, name: str, signum: int):
        super().__init__(f"{name} while stopping: ended at once, before its checkpoint was complete; "
                         "the last complete checkpoint stays")
        self.signum = signum


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM to a process outside a training loop (a sweep's worker while it loads or evaluates): it
    ends at once, and what it was doing is redone when the same command runs again."""

    def __init__(self, signum: int):
        super().__init__(f"{signal.Signals(signum).name}: interrupted")
        self.signum = signum
