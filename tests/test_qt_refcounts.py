"""The installed Qt binding must not leak or drop references when signals are emitted.

PySide6 6.12.0 drops one reference to `True` on every emit: after a few thousand signals
(a labeling session streams one per token) CPython aborts with "bool_dealloc: deallocating
True or False". pyproject.toml excludes that version; this test stops any other that does
the same from passing CI.
"""

import sys

from PySide6.QtCore import QObject, QThread, Signal


class _Emitter(QObject):
    carried = Signal(object)
    bare = Signal()
    numbers = Signal(int, str, int)


# Few emits on purpose: a binding that drops references must fail here, not abort the run.
def test_emitting_signals_keeps_the_refcount_of_true_and_false(qapp):
    e, got = _Emitter(), []
    e.carried.connect(got.append)
    e.bare.connect(lambda: got.append(None))
    e.numbers.connect(lambda *a: got.append(a))
    before = sys.getrefcount(True), sys.getrefcount(False)
    for _ in range(50):
        e.carried.emit({"finished": True, "ended": False})
        e.bare.emit()
        e.numbers.emit(1, "x", 2)
    got.clear()
    assert (sys.getrefcount(True), sys.getrefcount(False)) == before


def test_queued_signals_from_a_worker_thread_keep_the_refcount_of_true(qtbot):
    e, got = _Emitter(), []
    e.carried.connect(got.append)

    class Worker(QObject):
        def run(self):
            for _ in range(50):
                e.carried.emit(("text", 3, True))

    worker, thread = Worker(), QThread()
    worker.moveToThread(thread)
    thread.started.connect(worker.run)
    before = sys.getrefcount(True)
    thread.start()
    qtbot.waitUntil(lambda: len(got) == 50, timeout=10_000)
    thread.quit()
    thread.wait()
    got.clear()
    # a binding that drops a reference per emit loses 50 here; thread start-up may hold one more
    assert sys.getrefcount(True) >= before - 1
