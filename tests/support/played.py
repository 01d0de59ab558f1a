"""A part of the world an operator module plays on a thread of its own (kube-scheduler, the
kubelets, the agents, Jenkins' queue): a round every ROUND_SECONDS until stopped. What a round
raises ends the thread, and `check` raises it on the test's thread."""

import threading


class PlayedOnAThread:
    ROUND_SECONDS = 0.05

    def __init__(self) -> None:
        """Call last in a subclass's __init__: the thread starts here."""
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cluster")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def check(self) -> None:
        if self.errors:
            raise self.errors[0]

    def _round(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.ROUND_SECONDS):
                self._round()
        except BaseException as err:  # raised on the test's thread by `check`
            self.errors.append(err)
