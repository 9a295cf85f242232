"""Train page: one button, live plots, progress, stop/resume, the run history. A view:
`app.controllers.train_controller.TrainController` decides what can run and what each
line says; this page lays out widgets, shows what the controller hands it and forwards
clicks."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.controllers.train_controller import RUN_COLUMNS, TrainController, TrainSettings
from app.pages.export_dialog import ExportDialog
from app.pages.model_choice import ModelChoice, choose_model
from app.plumbing.context import AppContext
from app.widgets.metric_plots import MetricPlots
from dpo_engine.train.config import field_kind, form_fields


def _setting_widget(f, value) -> QWidget:
    """The input for one TrainConfig form field (`dpo_engine.train.config.form_fields`)."""
    m, kind = f.metadata, field_kind(f)
    if kind == "choice":
        w = QComboBox()
        w.addItems([str(c) for c in m["choices"]])
        w.setCurrentText(str(value))
    elif kind == "bool":
        w = QCheckBox()
        w.setChecked(bool(value))
    elif kind == "int":
        w = QSpinBox(minimum=m.get("minimum", 0), maximum=m.get("maximum", 2**31 - 1), singleStep=m.get("step", 1))
        if "none" in m:
            w.setSpecialValueText(m["none"])  # the minimum stands for "unset"
        w.setValue(int(value or 0))
    else:
        w = QDoubleSpinBox(minimum=m.get("minimum", 0.0), maximum=m.get("maximum", 1e9),
                           singleStep=m.get("step", 0.1), decimals=m.get("decimals", 3))
        w.setValue(float(value))
    return w


class TrainPage(QWidget):
    def __init__(self, ctx: AppContext, controller: TrainController, parent=None):
        super().__init__(parent)
        self.setObjectName("page_train")
        self.ctx = ctx
        self.controller = controller
        self._build()
        self._connect()
        self._refresh_ready()
        self._refresh_runs()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.train_button = self._named(QPushButton("Train"), "trainButton", "Train")
        self.train_button.setStyleSheet("font-weight: bold; padding: 6px 18px;")
        self.stop_button = self._named(QPushButton("Stop"), "stopButton", "Stop training")
        self.stop_button.setEnabled(False)
        self.ready_label = QLabel()
        self.ready_label.setObjectName("readyLabel")
        self.ready_label.setWordWrap(True)
        self.estimate_label = QLabel()
        self.estimate_label.setObjectName("estimateLabel")
        self.estimate_label.setWordWrap(True)
        self.plan_label = self._named(QLabel(), "planLabel", "How the run will train")
        self.plan_label.setTextFormat(Qt.TextFormat.PlainText)  # reasons name paths and devices
        self.plan_label.setWordWrap(True)
        self.duration_label = self._named(QLabel(), "durationLabel", "How long the run will take")
        self.duration_label.setWordWrap(True)
        self.progress = self._named(QProgressBar(), "trainProgress", "Training progress")
        self.progress.setFormat("%v / %m steps")
        self.speed_label = QLabel()
        self.speed_label.setObjectName("speedLabel")
        top = QHBoxLayout()
        for w in (self.train_button, self.stop_button, self.progress):
            top.addWidget(w)
        top.addWidget(self.speed_label)

        self.plots = MetricPlots()
        self.smooth_box = self._named(QCheckBox("Smooth"), "smoothCheck", "Smooth curves")
        self.export_png = self._named(QPushButton("Export PNG…"), "exportPngButton", "Export plots as PNG")
        self.export_csv = self._named(QPushButton("Export CSV…"), "exportCsvButton", "Export curves as CSV")
        plot_tools = QHBoxLayout()
        for w in (self.smooth_box, self.export_png, self.export_csv):
            plot_tools.addWidget(w)
        plot_tools.addStretch(1)

        self.log = self._named(QPlainTextEdit(), "trainLog", "Training log")
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        self.runs_table = self._named(QTableWidget(0, len(RUN_COLUMNS)), "runsTable", "Run history")
        self.runs_table.setHorizontalHeaderLabels(list(RUN_COLUMNS))
        self.runs_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.runs_table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.runs_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.runs_table.horizontalHeader().setStretchLastSection(True)
        self.resume_button = self._named(QPushButton("Resume"), "resumeButton", "Resume the selected run")
        self.use_button = self._named(QPushButton("Use this model"), "useCheckpointButton",
                                      "Make the selected run's model the active model")
        self.export_button = self._named(QPushButton("Export…"), "exportRunButton",
                                         "Export the selected run's model (GGUF, Ollama, transformers, LoRA)")
        self.overlay_box = self._named(QCheckBox("Overlay selected runs"), "overlayCheck", "Overlay runs")
        hist_tools = QHBoxLayout()
        for w in (self.resume_button, self.use_button, self.export_button, self.overlay_box):
            hist_tools.addWidget(w)
        hist_tools.addStretch(1)
        history = QWidget()
        hl = QVBoxLayout(history)
        hl.setContentsMargins(0, 0, 0, 0)
        hl.addWidget(QLabel("Runs"))
        hl.addWidget(self.runs_table, 1)
        hl.addLayout(hist_tools)
        logbox = QWidget()
        ll = QVBoxLayout(logbox)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(QLabel("Log"))
        ll.addWidget(self.log, 1)
        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(history)
        bottom.addWidget(logbox)

        plots_box = QWidget()
        pl = QVBoxLayout(plots_box)
        pl.setContentsMargins(0, 0, 0, 0)
        pl.addWidget(self.plots, 1)
        pl.addLayout(plot_tools)
        vsplit = QSplitter(Qt.Orientation.Vertical)
        vsplit.addWidget(plots_box)
        vsplit.addWidget(bottom)
        vsplit.setStretchFactor(0, 3)
        vsplit.setStretchFactor(1, 1)

        main = QVBoxLayout()
        main.addLayout(top)
        main.addWidget(self.ready_label)
        main.addWidget(self.estimate_label)
        main.addWidget(self.plan_label)
        main.addWidget(self.duration_label)
        main.addWidget(vsplit, 1)
        outer = QHBoxLayout(self)
        outer.addLayout(main, 1)
        outer.addWidget(self._advanced())

    def _named(self, w, name: str, accessible: str):
        w.setObjectName(name)
        w.setAccessibleName(accessible)
        return w

    def _advanced(self) -> QWidget:
        s = self.controller.settings
        box = QGroupBox("Advanced")
        box.setObjectName("advancedBox")
        box.setFixedWidth(330)  # wide enough for every field and check box text unclipped
        form = QFormLayout(box)
        self.fields: dict[str, QWidget] = {}

        def add(key, label, widget):
            self._named(widget, f"adv_{key}", label)
            self.fields[key] = widget
            form.addRow(label, widget)

        for f in form_fields():  # TrainConfig's own settings: label, help and limits from the dataclass
            widget = _setting_widget(f, s.form[f.name])
            widget.setToolTip(f.metadata["help"])
            add(f.name, f.metadata["label"], widget)
        add("lora", "LoRA", QCheckBox())
        add("lora_rank", "LoRA rank", QSpinBox(minimum=1, maximum=512, value=s.lora_rank))
        add("base_bits", "Frozen base", self._base_choice())
        dtype = QComboBox()
        dtype.addItems(["auto", "float32", "bfloat16"])
        add("dtype", "Precision", dtype)
        device = QComboBox(editable=True)
        device.addItems(["auto", "cpu", "cuda", "mps"])
        device.setCurrentText(s.device)
        device.lineEdit().setObjectName("adv_device_edit")
        device.lineEdit().setAccessibleName("Device name")
        add("device", "Device", device)
        ref = self._named(QLineEdit(), "adv_reference", "Reference model")
        ref.setPlaceholderText("the base model")
        self.fields["reference"] = ref
        pick = self._named(QPushButton("…"), "adv_reference_pick", "Choose the reference model")
        pick.setToolTip("Choose the reference model from the models on this machine")
        pick.setFixedWidth(pick.fontMetrics().horizontalAdvance("…") + 24)  # a small button; the path gets the room
        pick.clicked.connect(self._on_reference_pick_clicked)
        row = QWidget()
        line = QHBoxLayout(row)
        line.setContentsMargins(0, 0, 0, 0)
        line.addWidget(ref, 1)
        line.addWidget(pick)
        form.addRow("Reference model", row)
        start = QComboBox()
        start.addItem("Active model", "active")
        start.addItem("Base model", "base")
        start.setToolTip("Active model: the next round continues from the model you label with (the last "
                         "run's). Base model: a fresh start.")
        start.setCurrentIndex(start.findData(s.start_from))
        add("start_from", "Start from", start)
        follow = QCheckBox()
        follow.setChecked(s.follow)
        follow.setToolTip("After a run, the Label page samples from the trained model (on-policy pairs); "
                          "the base stays the reference.")
        add("follow", "Label with the new model", follow)
        return box

    def _base_choice(self) -> QComboBox:
        """A LoRA run's frozen base: in the compute precision, or 4-bit NF4 where bitsandbytes runs
        (greyed with the reason where it does not)."""
        base = QComboBox()
        base.addItem("bf16 or fp32", 0)
        base.addItem("4-bit NF4", 4)
        reason = self.controller.four_bit_reason()
        if reason:
            item = base.model().item(1)
            item.setEnabled(False)
            item.setToolTip(reason)
            base.setToolTip(f"4-bit is not available here: {reason}")
        else:
            base.setToolTip("4-bit: a quarter of bf16's memory for the frozen base, slower steps (LoRA only)")
        return base

    # ------------------------------------------------------------------ wiring
    def _connect(self) -> None:
        c = self.controller
        self.train_button.clicked.connect(self._on_train_clicked)
        self.stop_button.clicked.connect(self._on_stop_clicked)
        self.smooth_box.toggled.connect(self.plots.set_smoothing)
        self.export_png.clicked.connect(self._on_export_png_clicked)
        self.export_csv.clicked.connect(self._on_export_csv_clicked)
        self.resume_button.clicked.connect(self._on_resume_clicked)
        self.use_button.clicked.connect(self._on_use_clicked)
        self.export_button.clicked.connect(self._on_export_clicked)
        self.runs_table.itemSelectionChanged.connect(self._on_runs_selectionChanged)
        self.overlay_box.toggled.connect(self._on_runs_selectionChanged)
        c.started.connect(self._on_controller_started)
        c.stepArrived.connect(self._on_controller_stepArrived)
        c.evalArrived.connect(self._on_controller_evalArrived)
        c.referenceProgress.connect(self._on_controller_referenceProgress)
        c.logLine.connect(self._append_log)
        c.finished.connect(self._on_controller_finished)
        c.failed.connect(self._on_controller_failed)
        c.runsChanged.connect(self._refresh_runs)
        c.runsChanged.connect(self._on_controller_runsChanged)  # a method: disconnected with the page
        self.ctx.comparisonsChanged.connect(self._refresh_ready)
        self.ctx.activeModelChanged.connect(self._refresh_ready)
        self.fields["start_from"].currentIndexChanged.connect(self._on_start_from_changed)
        for key in ("lora", "gradient_checkpointing"):
            self.fields[key].toggled.connect(self._on_plan_setting_changed)
        for key in ("base_bits", "dtype", "device"):
            self.fields[key].currentIndexChanged.connect(self._on_plan_setting_changed)
        for key in ("epochs", "max_steps", "batch_size", "grad_accum", "max_length"):  # the run's length only
            self.fields[key].valueChanged.connect(self._on_length_setting_changed)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self._refresh_ready()
        self._on_plan_setting_changed()

    def read_settings(self) -> TrainSettings:
        """The settings as the form shows them now."""
        values = {}
        for key, w in self.fields.items():
            if isinstance(w, QComboBox) and key == "base_bits":
                values[key] = w.currentData() or None  # 0: the compute precision
            elif isinstance(w, QComboBox):
                values[key] = w.currentData() if w.currentData() is not None else w.currentText()
            elif isinstance(w, QCheckBox):
                values[key] = w.isChecked()
            elif isinstance(w, QLineEdit):
                values[key] = w.text()
            else:
                values[key] = w.value()
        names = {f.name for f in form_fields()}
        return TrainSettings({k: v for k, v in values.items() if k in names},
                             **{k: v for k, v in values.items() if k not in names})

    # ------------------------------------------------------------------ models
    def _on_reference_pick_clicked(self) -> None:
        choice = choose_model(self, self.ctx, "Choose the reference model", self.fields["reference"].text() or None)
        if choice is not None:
            self.fields["reference"].setText(choice.path)

    def adapt_to_model(self, choice: ModelChoice) -> str:
        """Turn on what the chosen model needs to fit (the controller decides); returns what was
        changed, for the person ("" when nothing)."""
        change = self.controller.adaptation(choice, self.fields["lora"].isChecked(),
                                            self.fields["gradient_checkpointing"].isChecked(),
                                            self.fields["base_bits"].currentData(),
                                            (self.fields["batch_size"].value(), self.fields["grad_accum"].value()))
        if change.lora:
            self.fields["lora"].setChecked(True)
        if change.gradient_checkpointing:
            self.fields["gradient_checkpointing"].setChecked(True)
        if change.base_bits:
            self.fields["base_bits"].setCurrentIndex(self.fields["base_bits"].findData(change.base_bits))
        if change.batch:
            self.fields["batch_size"].setValue(change.batch[0])
            self.fields["grad_accum"].setValue(change.batch[1])
        if change.note:
            self._append_log(change.note)
        return change.note

    # ------------------------------------------------------------------ slots
    def _on_train_clicked(self) -> None:
        self.controller.settings = self.read_settings()
        self.plots.clear()
        self.log.clear()
        self.controller.start()

    def _on_stop_clicked(self) -> None:
        self.controller.stop()
        self.stop_button.setEnabled(False)
        self._append_log("Stopping after the current step; a checkpoint will be saved…")

    def _on_controller_started(self, run_id: int, _total: int) -> None:
        self.plots.clear()
        self.plots.set_series("live", self.controller.live_series(run_id))  # a resumed run's history
        self.train_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.ready_label.setText(self.controller.started_text(run_id))

    def _on_controller_referenceProgress(self, done: int, total: int) -> None:
        self.progress.setFormat("reference %v / %m pairs")
        self.progress.setRange(0, total)
        self.progress.setValue(done)

    def _on_controller_stepArrived(self, ev) -> None:
        shown = self.controller.step_view(ev)
        self.progress.setFormat("%v / %m steps")
        self.progress.setRange(0, shown.total_steps)
        self.progress.setValue(shown.step)
        self.speed_label.setText(shown.speed)
        self.ready_label.setText(shown.status)
        self.plots.add_point("live", ev.step, ev.metrics, self.controller.config.beta)

    def _on_controller_evalArrived(self, ev) -> None:
        self.plots.add_point("live", ev.step, ev.metrics)

    def _on_controller_finished(self, summary) -> None:
        self.stop_button.setEnabled(False)
        self.progress.setValue(summary.step)
        self.ready_label.setText(self.controller.finished_text(summary))
        self._refresh_ready()

    def _on_controller_failed(self, reason: str) -> None:
        self.stop_button.setEnabled(False)
        self.ready_label.setText(f"Cannot train: {reason}")
        self._refresh_ready(keep_text=True)

    def _append_log(self, line: str) -> None:
        self.log.appendPlainText(line)

    def _on_start_from_changed(self, *_) -> None:
        self.controller.set_start_from(self.fields["start_from"].currentData())
        self._refresh_ready()

    def _on_plan_setting_changed(self, *_) -> None:
        self.plan_label.setText(self.controller.plan_text(self.read_settings()))
        self._on_length_setting_changed()

    def _on_length_setting_changed(self, *_) -> None:
        self.duration_label.setText(self.controller.duration_text(self.read_settings()))

    def _on_controller_runsChanged(self) -> None:
        self._refresh_ready(keep_text=True)
        self._on_length_setting_changed()  # a run just measured its speed

    def _refresh_ready(self, *_, keep_text: bool = False) -> None:
        ready = self.controller.readiness()
        self.train_button.setEnabled(not ready.reason)
        self.train_button.setToolTip(ready.tooltip)
        self.train_button.setText(ready.button_text)
        self.estimate_label.setText(ready.estimate)
        if not keep_text and not self.controller.running:
            self.ready_label.setText(ready.text)

    # ------------------------------------------------------------------ history
    def _refresh_runs(self) -> None:
        rows = self.controller.run_rows()
        self.runs_table.setRowCount(len(rows))
        for row, run in enumerate(rows):
            for col, value in enumerate(run.cells):
                item = QTableWidgetItem(value)
                item.setData(Qt.ItemDataRole.UserRole, run.run_id)
                if col == 1 and run.error:
                    item.setToolTip(run.error)
                self.runs_table.setItem(row, col, item)
        self._on_runs_selectionChanged()

    def selected_run_ids(self) -> list[int]:
        rows = sorted({i.row() for i in self.runs_table.selectedItems()})
        return [self.runs_table.item(r, 0).data(Qt.ItemDataRole.UserRole) for r in rows]

    def _on_runs_selectionChanged(self, *_) -> None:
        ids = self.selected_run_ids()
        actions = self.controller.run_actions(ids)
        self.resume_button.setEnabled(actions.resume)
        self.use_button.setEnabled(actions.use)
        self.export_button.setEnabled(actions.export)
        shown = self.controller.history_series(ids, self.overlay_box.isChecked())
        if shown:
            self.plots.clear()
            for key, series in shown:
                self.plots.set_series(key, series)

    def _on_resume_clicked(self) -> None:
        ids = self.selected_run_ids()
        if len(ids) == 1:
            self.controller.resume(ids[0])

    def _on_use_clicked(self) -> None:
        ids = self.selected_run_ids()
        if len(ids) == 1 and (ref := self.controller.use_checkpoint(ids[0])):
            self._append_log(f"Active model is now {ref}; labeling samples from it (on-policy pairs).")

    def _on_export_clicked(self) -> ExportDialog | None:
        ids = self.selected_run_ids()
        export = self.controller.export_controller(ids[0]) if len(ids) == 1 else None
        if export is None:
            return None
        dialog = ExportDialog(export, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog

    def _on_export_png_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export plots", "training-plots.png", "PNG (*.png)")
        if path:
            self.plots.export_png(path)

    def _on_export_csv_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export curves", "training-metrics.csv", "CSV (*.csv)")
        if path:
            self.plots.export_csv(path)
