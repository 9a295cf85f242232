"""Run engine generators off the GUI thread.

One `TorchRunner` owns one QThread: every torch job (loading, generation, training,
eval) runs there, one at a time, so jobs never share a model object concurrently and on a
CPU never fight for the cores (DESIGN.md, Threads). Each job is a plain engine generator;
every value it yields is re-emitted on the GUI thread through its `Job`'s signals, and a
cancel request is checked between yields (each yield is a safe stopping point).

A long job submitted with `background=True` (training) yields to the others: after each
of its yields (a step boundary) the worker first runs every short job queued meanwhile
(sampling answers for labeling), then resumes it. So a person can keep labeling while a
run trains, and the two never compete for the cores.
"""

from __future__ import annotations

import itertools
import queue
import traceback
from typing import Any, Callable, Iterator

from PySide6.QtCore import QObject, QThread, Signal

from dpo_engine.errors import DPOStudioError


class Job(QObject):
    """Handle of one queued job; its signals arrive on the GUI thread.

    The worker emits the private `_w_*` signals; the Job (a GUI-thread object) re-emits
    them as the public ones when the GUI thread's event loop delivers them. Two things
    follow: a caller that connects right after `submit` misses nothing, even when the job
    has already run (Qt picks a signal's receivers when it is emitted, and the private
    ones are connected before the job is queued); and after `detach` (the runner shutting
    down) nothing is re-emitted, so no handler runs against a closed project.
    """

    started = Signal()
    yielded = Signal(object)  # each value the generator yields
    returned = Signal(object)  # the generator's return value
    failed = Signal(str)  # a message for the person (traceback text only for bugs)
    finished = Signal()  # always last, after returned, failed or a cancel

    _w_started = Signal()
    _w_yielded = Signal(object)
    _w_returned = Signal(object)
    _w_failed = Signal(str)
    _w_finished = Signal()

    _ids = itertools.count(1)

    def __init__(self, name: str, factory: Callable[[], Iterator[Any]], background: bool = False):
        super().__init__()
        self.id = next(self._ids)
        self.name = name
        self.factory = factory
        self.background = background  # long job: lets queued short jobs run at each of its yields
        self.cancelled = False
        self.detached = False
        for private, public in ((self._w_started, self.started), (self._w_yielded, self.yielded),
                                (self._w_returned, self.returned), (self._w_failed, self.failed),
                                (self._w_finished, self.finished)):
            private.connect(self._relay(public))

    def _relay(self, public: Signal):
        def relay(*args):
            if not self.detached:
                public.emit(*args)
        return relay

    def cancel(self) -> None:
        """Ask the job to stop at its next yield (or not to start at all)."""
        self.cancelled = True

    def detach(self) -> None:
        """Cancel, and deliver nothing more to the job's listeners."""
        self.cancelled = self.detached = True


class _JobQueue:
    """Jobs in submission order, except that urgent ones (loading the active model) go
    first; None (the stop marker) goes last."""

    def __init__(self):
        self._q: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()

    def put(self, job: "Job | None", urgent: bool = False) -> None:
        rank = 2 if job is None else (0 if urgent else 1)
        self._q.put((rank, next(self._seq), job))

    def get(self) -> "Job | None":
        return self._q.get()[2]

    def get_nowait(self) -> "Job | None":
        return self._q.get_nowait()[2]


class _Loop(QObject):
    def __init__(self, jobs: _JobQueue):
        super().__init__()
        self._jobs = jobs

    def run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._run_one(job)

    def _run_waiting_short_jobs(self) -> None:
        """Run the short jobs queued now; put background jobs and the stop marker back."""
        deferred = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None or job.background:
                deferred.append(job)
            else:
                self._run_one(job)
        for job in deferred:
            self._jobs.put(job)

    def _run_one(self, job: Job) -> None:
        if job.cancelled:
            job._w_finished.emit()
            return
        job._w_started.emit()
        try:
            gen = job.factory()
            result = None
            while True:
                if job.cancelled:
                    gen.close()
                    break
                try:
                    job._w_yielded.emit(next(gen))
                    if job.background:
                        self._run_waiting_short_jobs()
                except StopIteration as stop:
                    result = stop.value
                    job._w_returned.emit(result)
                    break
        except DPOStudioError as exc:
            job._w_failed.emit(str(exc))
        except MemoryError:
            job._w_failed.emit("Out of memory. Close other programs or use a smaller model.")
        except Exception as exc:  # a bug: show it, keep the app alive
            job._w_failed.emit(f"{exc.__class__.__name__}: {exc}\n\n{traceback.format_exc(limit=6)}")
        finally:
            job._w_finished.emit()


class TorchRunner(QObject):
    """A single worker thread running torch jobs in submission order."""

    def __init__(self, parent: QObject | None = None, name: str = "torch-worker"):
        super().__init__(parent)
        self._jobs = _JobQueue()
        self._thread = QThread()
        self._thread.setObjectName(name)
        self._loop = _Loop(self._jobs)
        self._loop.moveToThread(self._thread)
        self._thread.started.connect(self._loop.run)
        self._thread.start()
        self._pending: list[Job] = []

    def submit(self, name: str, factory: Callable[[], Iterator[Any]], background: bool = False,
               urgent: bool = False) -> Job:
        """Queue a generator factory; connect to the returned Job's signals before the
        event loop runs again (see `Job`: nothing is missed). An urgent job runs before
        the jobs already waiting."""
        job = Job(name, factory, background)
        self._pending.append(job)  # keep the QObject alive while queued
        job.finished.connect(lambda j=job: self._pending.remove(j) if j in self._pending else None)
        self._jobs.put(job, urgent)
        return job

    def busy(self) -> bool:
        return bool(self._pending)

    def background_busy(self) -> bool:
        """A background job (a training run) is queued or running."""
        return any(job.background for job in self._pending)

    def pending_jobs(self) -> list:
        return list(self._pending)

    def cancel_foreground(self) -> None:
        """Cancel the queued and running foreground jobs; background jobs (training) stop by their
        own flag, because cancelling one would skip its checkpoint."""
        for job in list(self._pending):
            if not job.background:
                job.cancel()

    def shutdown(self, wait_ms: int | None = None) -> None:
        """Stop the thread after its current job. With no `wait_ms`, wait as long as that takes:
        a QThread destroyed while running aborts the process (seen closing during a .gguf
        conversion), so MainWindow lets running jobs reach a safe stop first."""
        for job in list(self._pending):
            job.detach()
        self._jobs.put(None)
        self._thread.quit()
        if wait_ms is None:
            self._thread.wait()
        else:
            self._thread.wait(wait_ms)
