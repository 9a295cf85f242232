"""Label page: a prompt and two answers side by side (verdicts by key or click), or k
answers in a grid to rank by key (ranking mode, switched in the side panel)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.plumbing.context import AppContext
from app.controllers.label_controller import DEFAULT_K, K_RANGE, LabelController, PendingPair
from app.controllers import pace
from app.widgets.rank_order import RankOrderList
from app.widgets.response_pane import ResponsePane
from dpo_engine.generate import GenerationSettings
from dpo_engine.ranking import rank_levels
from dpo_engine.pairs import MAX_FIELD_CHARS

PLAIN_TEXT_NOTICE = ("This model has no chat template (a base model): it continues your prompt as plain text, "
                     "and it is trained the same way.")

BUTTONS = [  # (objectName, label, verdict, keys); digits are routed by mode in _on_key_digit
    ("verdictLeft", "← Left is better  [1]", "left", ("Left",)),
    ("verdictTie", "Tie  [3]", "tie", ()),
    ("verdictBothBad", "Both bad  [4]", "both_bad", ()),
    ("verdictRight", "Right is better  [2] →", "right", ("Right",)),
    ("verdictSkip", "Skip  [S]", "skip", ("S",)),
]
PAIR_DIGITS = {1: "left", 2: "right", 3: "tie", 4: "both_bad"}
MODE_ITEMS = [("pairwise", "Pairwise (2)"), ("ranking", "Ranking (k)")]
RANK_HELP = ("Rank: press the number of the best answer, then the next best, and so on. "
             "= before a number ties it with the previous one. Backspace takes back the last place. "
             "Enter saves (answers not placed tie for last); placing the last answer saves too. "
             "Or drag the answers in the row above into order, then press Enter. "
             "A ranking of 4 gives up to 6 training pairs.")


class LabelPage(QWidget):
    def __init__(self, ctx: AppContext, parent=None):
        super().__init__(parent)
        self.setObjectName("page_label")
        self.ctx = ctx
        self.controller = LabelController(ctx, pace_memory=pace.memory_file())  # the pace of earlier sessions
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
        self.prompt_input.setMaxLength(MAX_FIELD_CHARS)  # Qt cuts at 32,767 by default, silently
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
        pairwise = QWidget()
        pw = QVBoxLayout(pairwise)
        pw.setContentsMargins(0, 0, 0, 0)
        pw.addWidget(panes, 1)
        pw.addLayout(row)
        self.mode_stack = QStackedWidget()
        self.mode_stack.setObjectName("labelModeStack")
        self.mode_stack.addWidget(pairwise)
        self.mode_stack.addWidget(self._ranking_view())

        tools = QHBoxLayout()
        self.regen_button = self._button("regenerateButton", "Regenerate  [R]")
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
        main.addWidget(self.mode_stack, 1)
        main.addLayout(tools)
        main.addWidget(self.notice)
        outer = QHBoxLayout(self)
        outer.addLayout(main, 1)
        outer.addWidget(self._side_panel())

    def _ranking_view(self) -> QWidget:
        """Up to K_RANGE[1] panes in a grid (only k shown), place buttons, and the key help."""
        view = QWidget()
        self.rank_grid = grid = QGridLayout()
        self.rank_panes = [ResponsePane(f"rankPane{i + 1}", f"Answer {i + 1}  [{i + 1}]") for i in range(K_RANGE[1])]
        self.place_buttons = [self._button(f"placeAnswer{i + 1}", f"{i + 1}") for i in range(K_RANGE[1])]
        for i, b in enumerate(self.place_buttons):
            b.setAccessibleName(f"Place answer {i + 1} next")
            b.setToolTip(f"Answer {i + 1} takes the next place  [{i + 1}]")
        self.tie_button = self._button("tieWithPrevious", "Tie with previous  [=]")
        self.tie_button.setCheckable(True)
        self.unplace_button = self._button("unplaceButton", "Take back  [Backspace]")
        self.save_ranking_button = self._button("saveRankingButton", "Save ranking  [Enter]")
        self.rank_skip_button = self._button("rankSkipButton", "Skip  [S]")
        row = QHBoxLayout()
        row.addWidget(QLabel("Next place:"))
        for b in self.place_buttons:
            row.addWidget(b)
        for b in (self.tie_button, self.unplace_button, self.save_ranking_button, self.rank_skip_button):
            row.addWidget(b)
        row.addStretch(1)
        self.ranking_label = QLabel()
        self.ranking_label.setObjectName("rankingLabel")
        self.ranking_label.setTextFormat(Qt.TextFormat.PlainText)
        self.rank_order = RankOrderList("rankOrder")
        self.rank_help = QLabel(RANK_HELP)
        self.rank_help.setObjectName("rankHelp")
        self.rank_help.setWordWrap(True)
        layout = QVBoxLayout(view)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(grid, 1)
        layout.addLayout(row)
        order_row = QHBoxLayout()
        order_row.addWidget(QLabel("Order (drag):"))
        order_row.addWidget(self.rank_order, 1)
        layout.addLayout(order_row)
        layout.addWidget(self.ranking_label)
        layout.addWidget(self.rank_help)
        self._show_k(DEFAULT_K)
        return view

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
                                     "give another model to compare one answer of each (pairwise mode).")
        self.mode_box = QComboBox(objectName="labelMode")
        for mode, text in MODE_ITEMS:
            self.mode_box.addItem(text, mode)
        self.mode_box.setToolTip("Ranking k answers gives up to k(k-1)/2 training pairs per prompt.")
        self.k_box = QSpinBox(objectName="rankK", minimum=K_RANGE[0], maximum=K_RANGE[1], value=DEFAULT_K)
        self.k_box.setToolTip("How many answers to rank per prompt (ranking mode).")
        for w, name in ((self.max_tokens, "Max new tokens"), (self.temperature, "Temperature"),
                        (self.top_p, "Top-p"), (self.second_model, "Second model"),
                        (self.mode_box, "Labeling mode"), (self.k_box, "Answers to rank")):
            w.setAccessibleName(name)
        gen = QGroupBox("Generation")
        form = QFormLayout(gen)
        form.addRow("Mode", self.mode_box)
        form.addRow("Answers to rank", self.k_box)
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
        here = Qt.ShortcutContext.WidgetWithChildrenShortcut
        for _name, _label, verdict, keys in BUTTONS:
            self.buttons[verdict].clicked.connect(lambda _=False, v=verdict: c.judge(v))
            for key in keys:
                QShortcut(QKeySequence(key), self, lambda v=verdict: c.judge(v), context=here)
        for digit in range(1, K_RANGE[1] + 1):
            QShortcut(QKeySequence(str(digit)), self, lambda d=digit: self._on_key_digit(d), context=here)
        for key, slot in (("R", c.regenerate), ("E", self._on_edit_clicked), ("Ctrl+Z", c.undo),
                          ("=", self._on_tie_key)):
            QShortcut(QKeySequence(key), self, slot, context=here)
        for i, b in enumerate(self.place_buttons):
            b.clicked.connect(lambda _=False, i=i: c.place(i))
        self.tie_button.clicked.connect(lambda _=False: c.toggle_tie())
        self.unplace_button.clicked.connect(c.unplace)
        self.save_ranking_button.clicked.connect(c.save_ranking)
        self.rank_skip_button.clicked.connect(lambda: c.judge("skip"))
        self.rank_order.orderDragged.connect(c.set_order)
        self.mode_box.currentIndexChanged.connect(self._on_mode_changed)
        self.k_box.valueChanged.connect(self._on_mode_changed)
        c.rankingChanged.connect(self._on_controller_rankingChanged)
        c.modeChanged.connect(self._on_controller_modeChanged)
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
        self.ctx.modelStateChanged.connect(self._on_ctx_modelStateChanged)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._started:  # sample only once the page is first seen
            self._started = True
            self.controller.start()
        elif self.controller.paused:
            self.controller.resume()
        self.setFocus()

    def hideEvent(self, event) -> None:
        super().hideEvent(event)
        if not event.spontaneous():  # another page was chosen (not the window minimized): the
            self.controller.pause()  # worker serves that page until this one shows again

    # ------------------------------------------------------------------ keys
    def _on_ctx_modelStateChanged(self, state: str, _detail: str) -> None:
        if state == "ready" and self.ctx.plain_text:
            self.notice.setText(PLAIN_TEXT_NOTICE)

    def _on_key_digit(self, digit: int) -> None:
        """A number key: a verdict in pairwise mode, the next place in ranking mode."""
        if self.controller.mode == "ranking":
            self.controller.place(digit - 1)
        elif digit in PAIR_DIGITS:
            self.controller.judge(PAIR_DIGITS[digit])

    def _on_tie_key(self) -> None:
        if self.controller.mode == "ranking":
            self.controller.toggle_tie()

    def keyPressEvent(self, event) -> None:
        # Backspace and Enter reach the page only when no text field wants them (the prompt
        # line edit keeps its own editing and Enter), so they are keys, not shortcuts.
        if self.controller.mode == "ranking" and event.key() == Qt.Key.Key_Backspace:
            self.controller.unplace()
        elif self.controller.mode == "ranking" and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.controller.save_ranking()
        else:
            super().keyPressEvent(event)

    # ------------------------------------------------------------------ slots
    def _on_mode_changed(self, *_) -> None:
        self.controller.set_mode(self.mode_box.currentData(), self.k_box.value())
        self.setFocus()

    def _on_controller_modeChanged(self, mode: str, k: int) -> None:
        self.mode_stack.setCurrentIndex(0 if mode == "pairwise" else 1)
        self._show_k(k)
        self.regen_button.setText("Regenerate all  [R]" if mode == "ranking" else "Regenerate both  [R]")
        self.second_model.setEnabled(mode == "pairwise")

    def _show_k(self, k: int) -> None:
        cols = 2 if k <= 4 else 3  # 2x2 for four answers, 2x3 for five or six: each stays wide enough to read
        for i, pane in enumerate(self.rank_panes):
            self.rank_grid.removeWidget(pane)
            self.rank_grid.addWidget(pane, i // cols, i % cols)
        for i, (pane, button) in enumerate(zip(self.rank_panes, self.place_buttons)):
            pane.setVisible(i < k)
            button.setVisible(i < k)

    def _panes_for(self, pair: PendingPair) -> list[ResponsePane]:
        return self.rank_panes[:pair.n] if pair.ranking else [self.left, self.right]

    def _on_controller_rankingChanged(self, order: list, ties: list) -> None:
        pair = self.controller.current
        self.rank_order.show_order(order, ties, pair.n if pair is not None and pair.ranking else 0)
        places = dict(zip(order, rank_levels(ties))) if order else {}
        for i, pane in enumerate(self.rank_panes):
            place = places.get(i)
            shared = place is not None and list(places.values()).count(place) > 1
            pane.title.setText(f"Answer {i + 1}  [{i + 1}]" + (
                "" if place is None else f"  — place {place + 1}{' (tie)' if shared else ''}"))
            pane.set_highlight(place is not None)
        self.tie_button.setChecked(self.controller.tie_next)
        if order:
            text = ""
            for i, (index, tied) in enumerate(zip(order, ties)):
                text += ("" if i == 0 else (" = " if tied else " > ")) + str(index + 1)
            if self.controller.tie_next:
                text += " = …"
            self.ranking_label.setText(f"Your ranking: {text}")
        else:
            self.ranking_label.setText("")

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
        for side, pane in enumerate(self._panes_for(pair)):
            pane.set_text(pair.texts[side], pair.tokens[side], streaming=not pair.done,
                          cut_off=pair.done and not pair.ended[side])
        self._set_judging_enabled(pair.done)
        what = f"all {pair.n} answers" if pair.ranking else "both answers"
        self.notice.setText("" if pair.done else f"Writing {what}…")

    def _on_controller_textUpdated(self, side: int, text: str, tokens: int) -> None:
        pair = self.controller.current
        if pair is None or side >= pair.n:
            return
        self._panes_for(pair)[side].set_text(text, tokens, streaming=not pair.done,
                                             cut_off=pair.done and not pair.ended[side])

    def _on_controller_pairReady(self) -> None:
        self._set_judging_enabled(True)
        pair = self.controller.current
        if pair is not None and pair.ranking:
            self.notice.setText(f"Rank the {pair.n} answers: the number of the best first. = ties, Enter saves.")
        else:
            self.notice.setText("Which answer is better? 1 / ← left, 2 / → right, 3 tie, 4 both bad, S skip.")

    def _on_controller_progressChanged(self, p: dict) -> None:
        self.progress_label.setText(
            f"This session: {p['session']} verdicts\nIn the project: {p['total']} verdicts\n"
            f"Usable training pairs: {p['usable']}\nPace: {p['per_minute']:.1f} per minute"
        )
        self.hint.setText(p["estimate"])
        self.train_button.setEnabled(p["usable"] > 0)

    def _set_judging_enabled(self, on: bool) -> None:
        for verdict, b in self.buttons.items():
            b.setEnabled(on or verdict == "skip")
        for b in self.place_buttons + [self.tie_button, self.unplace_button, self.save_ranking_button, self.rank_order]:
            b.setEnabled(on)
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
        names = [f"Answer {i + 1}" for i in range(pair.n)] if pair.ranking else ["Left answer", "Right answer"]
        self.start_from = QComboBox(objectName="startFrom")
        self.start_from.addItems(names + ["Empty"])
        self.start_from.setAccessibleName("Start from")
        self.worse = QComboBox(objectName="worseSide")
        self.worse.addItems(names)
        self.worse.setAccessibleName("Worse answer")
        self.editor = QPlainTextEdit(objectName="betterText")
        self.editor.setAccessibleName("Your answer")
        self.editor.setPlainText(pair.texts[0])
        self.start_from.currentIndexChanged.connect(
            lambda i: self.editor.setPlainText(pair.texts[i] if i < pair.n else ""))
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
