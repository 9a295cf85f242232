"""The main window: a page list on the left, the pages, and a status bar with the model,
the device and what the app is doing. It builds each page's controller and hands it to
the page (`Page(ctx, controller)`): pages present and forward, controllers decide."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QLabel,
    QListWidget,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QWidget,
)

from app.controllers import keys, pace
from app.controllers.compare_controller import CompareController
from app.controllers.data_controller import DataController
from app.controllers.label_controller import LabelController
from app.controllers.train_controller import TrainController
from app.pages.compare_page import ComparePage
from app.pages.data_page import DataPage
from app.pages.label_page import LabelPage
from app.pages.model_choice import choose_model
from app.pages.train_page import TrainPage
from app.plumbing.context import AppContext

ASK_AFTER_MS = 1500  # a job still running this long after a close request has no pause point: ask


def build_pages(ctx: AppContext) -> list[tuple[str, QWidget]]:
    """(name, page) for each page, in sidebar order, each with its controller."""
    return [
        ("Label", LabelPage(ctx, LabelController(ctx, pace_memory=pace.memory_file()))),
        ("Data", DataPage(ctx, DataController(ctx.project_path, on_changed=ctx.comparisonsChanged.emit,
                                              submit=ctx.submit))),
        ("Train", TrainPage(ctx, TrainController(ctx))),
        ("Compare", ComparePage(ctx, CompareController(ctx))),
    ]


class MainWindow(QMainWindow):
    def __init__(self, ctx: AppContext):
        super().__init__()
        self.ctx = ctx
        self.setObjectName("mainWindow")
        self.setWindowTitle(f"DPO Studio — {ctx.project_path.name}")
        self.resize(1280, 820)

        self.nav = QListWidget()
        self.nav.setObjectName("navList")
        self.nav.setAccessibleName("Pages")
        self.nav.setFixedWidth(150)
        self.stack = QStackedWidget()
        self.stack.setObjectName("pageStack")
        self.pages: dict[str, QWidget] = {}
        for name, page in build_pages(ctx):
            self.pages[name] = page
            self.nav.addItem(name)
            self.stack.addWidget(page)
        self.nav.currentRowChanged.connect(self.stack.setCurrentIndex)
        self.nav.setCurrentRow(0)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.nav)
        split.addWidget(self.stack)
        split.setStretchFactor(1, 1)
        self.setCentralWidget(split)
        self._build_status_bar()

        ctx.modelStateChanged.connect(self._on_ctx_modelStateChanged)
        ctx.navigateRequested.connect(self.show_page)
        ctx.saveFailed.connect(self._on_ctx_saveFailed)
        self._finishing = False  # a close was requested and waits for the worker
        self._busy_box: QMessageBox | None = None  # "Still working": shown when a job cannot stop midway
        self._close_poll = QTimer(self)
        self._close_poll.setInterval(100)
        self._close_poll.timeout.connect(self._on_close_poll_timeout)

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.model_label = QLabel()
        self.model_label.setObjectName("statusModel")
        self.model_label.setAccessibleName("Active model")
        device = self.ctx.device
        self.device_label = QLabel(f"Device: {device.describe()} ({device.precision_reason})")
        self.device_label.setObjectName("statusDevice")
        self.device_label.setAccessibleName("Device")
        self.device_label.setToolTip(f"Device chosen because: {device.reason}. Precision: {device.precision_reason}."
                                     + (f"\nWarning: {device.warning}" if device.warning else ""))
        self.state_label = QLabel()
        self.state_label.setObjectName("statusState")
        self.state_label.setAccessibleName("Model state")
        self.progress = QProgressBar()
        self.progress.setObjectName("statusProgress")
        self.progress.setMaximumWidth(160)
        self.progress.setRange(0, 0)
        self.choose_model_button = QPushButton("Change model…")
        self.choose_model_button.setObjectName("chooseModelButton")
        self.choose_model_button.setAccessibleName("Choose the model to teach")
        self.choose_model_button.setToolTip("Pick a model on this machine (Hugging Face cache, Ollama, LM Studio, "
                                            "a folder or a .gguf file); it becomes the model you label with and "
                                            "the base the training starts from.")
        self.choose_model_button.clicked.connect(self._on_choose_model_clicked)
        for w in (self.model_label, self.choose_model_button, self.device_label):
            bar.addPermanentWidget(w)
        bar.addWidget(self.state_label, 1)
        bar.addWidget(self.progress)
        self._on_ctx_modelStateChanged(*self.ctx.model_state)

    def show_page(self, name: str) -> None:
        if name in self.pages:
            self.nav.setCurrentRow(list(self.pages).index(name))

    def _on_ctx_modelStateChanged(self, state: str, detail: str) -> None:
        ref = self.ctx.model_ref
        # a folder's name, its path in the tooltip: a long path left the state beside it ~300 px. The name
        # loaded last only while it is the one in use: after a failed switch it would name the wrong model
        name = self.ctx.loaded_name if state == "ready" else ""
        self.model_label.setText(f"Model: {name or (Path(ref).name if Path(ref).exists() else ref)}")
        self.model_label.setToolTip(ref)
        self.progress.setVisible(state == "loading")
        text = {"loading": "Loading model…", "ready": "Ready", "error": "Model failed to load"}.get(state, state)
        if state == "loading" and detail:
            text = detail  # preparing (first run: download, conversion), then the tokenizer and the weights
        # an error's first line says what failed and what to do (a model that does not fit: how much it needs,
        # how much is free): wrapped onto more lines of the bar, never cut at the label's width
        self.state_label.setWordWrap(state == "error")
        self.state_label.setText(text if state != "error" else f"{text}: {detail.splitlines()[0] if detail else ''}")
        self.state_label.setToolTip(detail)

    def _on_choose_model_clicked(self) -> None:
        choice = choose_model(self, self.ctx, "Choose the model to teach", self.ctx.model_ref)
        if choice is not None:
            self.use_model(choice)

    def use_model(self, choice) -> None:
        """The person's own model: it becomes the base (the reference of later runs) and the
        model the Label page samples from; LoRA / checkpointing turn on when only they fit."""
        self.ctx.base_model_ref = choice.path
        self.ctx.set_active_model(choice.path)
        note = self.pages["Train"].adapt_to_model(choice)
        if note:
            self.state_label.setText(note)

    def _on_ctx_saveFailed(self, message: str) -> None:
        """A person's action was not saved (disk full, read-only, ...): say so in a dialog that
        names the file and what to do; the action can be retried once the cause is fixed."""
        box = QMessageBox(QMessageBox.Icon.Warning, "Not saved", message, QMessageBox.StandardButton.Ok, self)
        box.setObjectName("saveFailedDialog")
        box.setTextFormat(Qt.TextFormat.PlainText)  # paths and messages are text, never HTML
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()  # window-modal, and it does not block the event loop
        self.state_label.setText(f"Not saved: {message.splitlines()[0]}")

    def closeEvent(self, event) -> None:
        """Close only when the worker is idle: a running job first reaches a safe stop (a training
        run saves its checkpoint and is recorded `stopped`), with "Finishing…" in the status bar;
        a second close request while finishing just waits too."""
        if self.ctx.runner.busy():
            event.ignore()
            if not self._finishing:
                self._finishing = True
                training = self.ctx.runner.background_busy()
                self.state_label.setText("Finishing: saving the training run's checkpoint, then closing…" if training
                                         else "Finishing the current job, then closing…")
                self.progress.setVisible(True)
                self.ctx.request_close()
                self._close_poll.start()
                if not training:  # a job without pause points (converting a .gguf, an export) may take a while
                    QTimer.singleShot(ASK_AFTER_MS, self._ask_while_finishing)
            return
        self._close_poll.stop()
        self.ctx.shutdown()
        super().closeEvent(event)

    def _ask_while_finishing(self) -> None:
        """Still busy after a moment: the job cannot stop midway. Say so, and let the person keep
        working instead of waiting (the thread is never destroyed under a running job)."""
        if not self._finishing or not self.ctx.runner.busy():
            return
        names = ", ".join(sorted({job.name for job in self.ctx.runner.pending_jobs()})) or "a job"
        box = QMessageBox(QMessageBox.Icon.Question, "Still working",
                          f"DPO Studio is finishing {names}, which cannot stop midway. It closes by itself as "
                          "soon as that is done.", QMessageBox.StandardButton.NoButton, self)
        box.setObjectName("closeWhileBusyDialog")
        box.setTextFormat(Qt.TextFormat.PlainText)
        box.addButton("Close when done", QMessageBox.ButtonRole.AcceptRole).setObjectName("closeWhenDone")
        keep = box.addButton("Keep working", QMessageBox.ButtonRole.RejectRole)
        keep.setObjectName("keepWorking")
        keep.clicked.connect(self._cancel_close)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(self._on_busy_box_finished)
        self._busy_box = box
        box.open()

    def _on_busy_box_finished(self, *_) -> None:
        self._busy_box = None

    def _cancel_close(self) -> None:
        self._finishing = False
        self._close_poll.stop()
        self.progress.setVisible(False)
        self.state_label.setText(
            f"Kept open: press {keys.REGENERATE.key} on the Label page if a pair stopped sampling.")

    def _on_close_poll_timeout(self) -> None:
        if not self._finishing:
            self._close_poll.stop()
        elif not self.ctx.runner.busy():
            self._close_poll.stop()
            if self._busy_box is not None:
                self._busy_box.done(0)  # the job ended: the question is moot
            self.close()
