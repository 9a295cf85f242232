"""Label page: a prompt, two answers side by side, verdicts by key or click."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.context import AppContext
from app.label_controller import LabelController, PendingPair
from app.widgets.response_pane import ResponsePane
from dpo_engine.generate import GenerationSettings

BUTTONS = [  # (objectName, label, verdict, keys)
    ("verdictLeft", "← Left is better  [1]", "left", ("1", "Left")),
    ("verdictTie", "Tie  [3]", "tie", ("3",)),
    ("verdictBothBad", "Both bad  [4]", "both_bad", ("4",)),
    ("verdictRight", "Right is better  [2] →", "right", ("2", "Right")),
    ("verdictSkip", "Skip  [S]", "skip", ("S",)),
]


class LabelPage(QWidget):
    def __init__(self, ctx: AppContext, parent=None):
        super().__init__(parent)
        self.setObjectName("page_label")
        self.ctx = ctx
        self.controller = LabelController(ctx)
        self._build()
        self._connect()
        self._started = False

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.prompt_view = QPlainTextEdit()
        self.prompt_view.setObjectName("promptView")
        self.prompt_view.setAccessibleName("Prompt")
        self.prompt_view.setReadOnly(True)
        self.prompt_view.setMaximumHeight(90)
        self.prompt_input = QLineEdit()
        self.prompt_input.setObjectName("promptInput")
        self.prompt_input.setAccessibleName("Type a prompt")
        self.prompt_input.setPlaceholderText("Type your own prompt and press Enter (optional)")
        self.left = ResponsePane("leftPane", "Left answer")
        self.right = ResponsePane("rightPane", "Right answer")
        panes = QSplitter(Qt.Orientation.Horizontal)
        panes.addWidget(self.left)
        panes.addWidget(self.right)

        self.buttons: dict[str, QPushButton] = {}
        row = QHBoxLayout()
        for name, label, verdict, _keys in BUTTONS:
            self.buttons[verdict] = self._button(name, label)
            row.addWidget(self.buttons[verdict])
        tools = QHBoxLayout()
        self.regen_button = self._button("regenerateButton", "Regenerate both  [R]")
        self.edit_button = self._button("writeBetterButton", "Write a better answer  [E]")
        self.undo_button = self._button("undoButton", "Undo last  [Ctrl+Z]")
        for b in (self.regen_button, self.edit_button, self.undo_button):
            tools.addWidget(b)
        tools.addStretch(1)
        self.notice = QLabel()
        self.notice.setObjectName("labelNotice")
        self.notice.setTextFormat(Qt.TextFormat.PlainText)
        self.notice.setWordWrap(True)

        main = QVBoxLayout()
        main.addWidget(QLabel("Prompt"))
        main.addWidget(self.prompt_view)
        main.addWidget(self.prompt_input)
        main.addWidget(panes, 1)
        main.addLayout(row)
        main.addLayout(tools)
        main.addWidget(self.notice)
        outer = QHBoxLayout(self)
        outer.addLayout(main, 1)
        outer.addWidget(self._side_panel())

    def _button(self, name: str, label: str) -> QPushButton:
        b = QPushButton(label)
        b.setObjectName(name)
        b.setAccessibleName(label.split("  [")[0].strip("← →"))
        b.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keys go to the page shortcuts, not a focused button
        return b

    def _side_panel(self) -> QWidget:
        s = self.controller.settings
        self.max_tokens = QSpinBox(objectName="maxNewTokens", minimum=8, maximum=2048, value=s.max_new_tokens)
        self.temperature = QDoubleSpinBox(objectName="temperature", minimum=0.0, maximum=2.0,
                                          singleStep=0.1, value=s.temperature)
        self.top_p = QDoubleSpinBox(objectName="topP", minimum=0.05, maximum=1.0, singleStep=0.05, value=s.top_p)
        self.second_model = QComboBox(objectName="secondModel", editable=True)
        self.second_model.addItem("")
        self.second_model.lineEdit().setObjectName("secondModelEdit")
        self.second_model.lineEdit().setAccessibleName("Second model reference")
        self.second_model.setToolTip("Leave empty to sample both answers from the active model; "
                                     "give another model to compare one answer of each.")
        for w, name in ((self.max_tokens, "Max new tokens"), (self.temperature, "Temperature"),
                        (self.top_p, "Top-p"), (self.second_model, "Second model")):
            w.setAccessibleName(name)
        gen = QGroupBox("Generation")
        form = QFormLayout(gen)
        form.addRow("Max new tokens", self.max_tokens)
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("Second model", self.second_model)

        prog = QGroupBox("Progress")
        pl = QVBoxLayout(prog)
        self.progress_label = QLabel()
        self.progress_label.setObjectName("progressLabel")
        self.hint = QLabel()
        self.hint.setObjectName("trainHint")
        self.hint.setWordWrap(True)
        self.train_button = QPushButton("Go to Train →")
        self.train_button.setObjectName("goTrainButton")
        self.train_button.setAccessibleName("Go to the Train page")
        pl.addWidget(self.progress_label)
        pl.addWidget(self.hint)
        pl.addWidget(self.train_button)
        side = QWidget()
        side.setFixedWidth(260)
        sl = QVBoxLayout(side)
        sl.addWidget(gen)
        sl.addWidget(prog)
        sl.addStretch(1)
        return side

    # ------------------------------------------------------------------ wiring
    def _connect(self) -> None:
        c = self.controller
        for _name, _label, verdict, keys in BUTTONS:
            self.buttons[verdict].clicked.connect(lambda _=False, v=verdict: c.judge(v))
            for key in keys:
                QShortcut(QKeySequence(key), self, lambda v=verdict: c.judge(v),
                          context=Qt.ShortcutContext.WidgetWithChildrenShortcut)
        for key, slot in (("R", c.regenerate), ("E", self._on_edit_clicked), ("Ctrl+Z", c.undo)):
            QShortcut(QKeySequence(key), self, slot, context=Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.regen_button.clicked.connect(c.regenerate)
        self.edit_button.clicked.connect(self._on_edit_clicked)
        self.undo_button.clicked.connect(c.undo)
        self.prompt_input.returnPressed.connect(self._on_prompt_input_returnPressed)
        self.train_button.clicked.connect(lambda: self.ctx.navigateRequested.emit("Train"))
        for w in (self.max_tokens, self.temperature, self.top_p):
            w.valueChanged.connect(self._on_settings_changed)
        self.second_model.currentTextChanged.connect(self._on_settings_changed)
        c.pairShown.connect(self._on_controller_pairShown)
        c.textUpdated.connect(self._on_controller_textUpdated)
        c.pairReady.connect(self._on_controller_pairReady)
        c.progressChanged.connect(self._on_controller_progressChanged)
        c.message.connect(self.notice.setText)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._started:  # sample only once the page is first seen
            self._started = True
            self.controller.start()
        self.setFocus()

    # ------------------------------------------------------------------ slots
    def _on_settings_changed(self, *_):
        self.controller.settings = GenerationSettings(self.max_tokens.value(), self.temperature.value(),
                                                      self.top_p.value())
        self.controller.second_model = self.second_model.currentText().strip() or None

    def _on_prompt_input_returnPressed(self) -> None:
        self.controller.add_typed_prompt(self.prompt_input.text())
        self.prompt_input.clear()
        self.setFocus()

    def _on_controller_pairShown(self, pair: PendingPair) -> None:
        self.prompt_view.setPlainText(pair.prompt_text)
        for side, pane in enumerate((self.left, self.right)):
            pane.set_text(pair.texts[side], pair.tokens[side], streaming=not pair.done)
        self._set_judging_enabled(pair.done)
        self.notice.setText("" if pair.done else "Writing both answers…")

    def _on_controller_textUpdated(self, side: int, text: str, tokens: int) -> None:
        pair = self.controller.current
        (self.left, self.right)[side].set_text(text, tokens, streaming=not (pair and pair.done))

    def _on_controller_pairReady(self) -> None:
        self._set_judging_enabled(True)
        self.notice.setText("Which answer is better? 1 / ← left, 2 / → right, 3 tie, 4 both bad, S skip.")

    def _on_controller_progressChanged(self, p: dict) -> None:
        self.progress_label.setText(
            f"This session: {p['session']} verdicts\nIn the project: {p['total']} verdicts\n"
            f"Usable training pairs: {p['usable']}\nPace: {p['per_minute']:.1f} per minute"
        )
        if p["enough"]:
            self.hint.setText(f"You have {p['usable']} usable pairs: enough to train. More still helps.")
        else:
            self.hint.setText(f"{p['needed'] - p['usable']} more usable pairs before training is likely "
                              "to change the model visibly.")
        self.train_button.setEnabled(p["usable"] > 0)

    def _set_judging_enabled(self, on: bool) -> None:
        for verdict, b in self.buttons.items():
            b.setEnabled(on or verdict == "skip")
        self.edit_button.setEnabled(on)

    def _on_edit_clicked(self) -> None:
        pair = self.controller.current
        if pair is None or not pair.done:
            return
        dialog = WriteBetterDialog(pair, self)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self.controller.write_better(dialog.text(), dialog.worse_side())


class WriteBetterDialog(QDialog):
    """Rewrite an answer or write the ideal one; it is stored as chosen against the worse sample."""

    def __init__(self, pair: PendingPair, parent=None):
        super().__init__(parent)
        self.setObjectName("writeBetterDialog")
        self.setWindowTitle("Write a better answer")
        self.pair = pair
        self.start_from = QComboBox(objectName="startFrom")
        self.start_from.addItems(["Left answer", "Right answer", "Empty"])
        self.start_from.setAccessibleName("Start from")
        self.worse = QComboBox(objectName="worseSide")
        self.worse.addItems(["Left answer", "Right answer"])
        self.worse.setAccessibleName("Worse answer")
        self.editor = QPlainTextEdit(objectName="betterText")
        self.editor.setAccessibleName("Your answer")
        self.editor.setPlainText(pair.texts[0])
        self.start_from.currentIndexChanged.connect(
            lambda i: self.editor.setPlainText(pair.texts[i] if i < 2 else ""))
        form = QFormLayout()
        form.addRow("Start from", self.start_from)
        form.addRow("It beats", self.worse)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.setObjectName("writeBetterButtons")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.editor, 1)
        layout.addWidget(buttons)
        self.resize(640, 420)

    def text(self) -> str:
        return self.editor.toPlainText()

    def worse_side(self) -> int:
        return self.worse.currentIndex()
