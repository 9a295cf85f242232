"""The torch worker: results reach listeners connected after submit, and none after shutdown."""

import threading
import time

from app.plumbing.workers import TorchRunner


def _done_job(runner, ran: threading.Event):
    def factory():
        yield "progress"
        ran.set()
        return 42

    return runner.submit("quick", factory)


def test_a_job_that_finished_before_its_listeners_connected_still_reaches_them(qtbot):
    runner = TorchRunner()
    try:
        ran = threading.Event()
        job = _done_job(runner, ran)
        assert ran.wait(10)
        time.sleep(0.05)  # the worker has emitted everything, no listener connected yet
        got = []
        job.yielded.connect(got.append)
        job.returned.connect(got.append)
        job.finished.connect(lambda: got.append("finished"))
        qtbot.waitUntil(lambda: got == ["progress", 42, "finished"], timeout=5_000)
    finally:
        runner.shutdown()


def test_after_shutdown_nothing_more_is_delivered(qtbot):
    runner = TorchRunner()
    ran = threading.Event()
    job = _done_job(runner, ran)
    got = []
    for signal in (job.yielded, job.returned, job.failed, job.finished):
        signal.connect(got.append)
    assert ran.wait(10)
    time.sleep(0.05)
    runner.shutdown()  # the results are still queued for the GUI thread: dropped
    qtbot.wait(100)
    assert got == [] and job.cancelled
