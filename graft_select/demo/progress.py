"""Plain progress lines for the demo when its output goes to a file, a pipe or CI.

tqdm's bars are for a terminal; redirected, they print nothing useful for minutes.
:class:`ProgressLines` prints one line when a run ends and, within a run, one line
every ``interval`` seconds: at a test evaluation (every third of an epoch) once the
interval has passed, else from a background thread that says where the run is, so
that a slow refit or a loaded machine does not leave the log silent. Each line starts
with the time since the demo started.
"""

import sys
import threading
import time

__all__ = ["ProgressLines"]


def _label(strategy, fraction, seed):
    group = strategy if fraction >= 1.0 else f"{strategy} {fraction:g}"
    return f"{group}, seed {seed}"


class ProgressLines:
    """Progress of the demo as plain lines on ``stream`` (default: stderr).

    Parameters
    ----------
    n_runs : int
        Training runs the demo will make (for the "run k/n" count).
    stream : file, default=None
        Where the lines go; ``None`` for ``sys.stderr`` at the time of writing.
    interval : float, default=10.0
        Seconds between two lines within a run; a run's end always prints one.
    """

    def __init__(self, n_runs, stream=None, interval=10.0):
        self.n_runs, self.stream, self.interval = n_runs, stream, interval
        self.started = self.last = time.perf_counter()
        self.done, self.where = 0, "starting"
        self._lock, self._stop, self._thread = threading.Lock(), threading.Event(), None

    def say(self, text):
        """Print ``text`` after the elapsed time, and flush."""
        with self._lock:
            now = time.perf_counter()
            self.last = now
            stream = sys.stderr if self.stream is None else self.stream
            print(f"[{now - self.started:6.0f} s] {text}", file=stream, flush=True)

    def update(self, strategy, fraction, seed, *, epoch, seen, planned, accuracy):
        """Within a run: a line if ``interval`` seconds passed since the last one."""
        self.where = (f"run {self.done + 1}/{self.n_runs} ({_label(strategy, fraction, seed)}):"
                      f" epoch {epoch + 1}, {seen:,} of {planned:,} samples")
        if time.perf_counter() - self.last >= self.interval:
            self.say(f"{self.where}, test accuracy {100 * accuracy:.2f}%")

    def __enter__(self):
        """Start the thread that prints where the demo is when nothing else printed."""
        self._thread = threading.Thread(target=self._heartbeat, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()

    def _heartbeat(self):
        while not self._stop.wait(self.interval / 4):
            if time.perf_counter() - self.last >= self.interval:
                self.say(f"{self.where} (still training)")

    def run_done(self, run):
        """A run ended: its accuracy, samples and cost."""
        self.done += 1
        self.say(f"run {self.done}/{self.n_runs} done "
                 f"({_label(run['strategy'], run['fraction'], run['seed'])}): "
                 f"test accuracy {100 * run['test_accuracy']:.2f}%, "
                 f"{run['samples_seen']:,} samples, {run['wall_seconds']:.1f} s wall-clock, "
                 f"{run['cpu_seconds']:.1f} s CPU")
