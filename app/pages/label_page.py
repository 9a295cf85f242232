"""Label page: a prompt and two answers side by side (verdicts by key or click), or k
answers in a grid to rank by key (ranking mode, switched in the side panel).

A view: it shows what its `LabelController` emits and forwards keys, clicks and settings to
it. Keys, button labels and help lines come from `controllers.keys`."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QDialog,
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

from app.controllers import keys
from app.controllers.keys import KeyBinding
from app.controllers.label_controller import DEFAULT_K, K_RANGE, LabelController, LabelProgress, ShownAnswer, ShownPair
from app.controllers.label_ranking import RankingState
from app.plumbing.context import AppContext
from app.widgets.rank_order import RankOrderList
from app.pages.write_better_dialog import WriteBetterDialog
from app.widgets.response_pane import ResponsePane
from dpo_engine.pairs import MAX_FIELD_CHARS

PLAIN_TEXT_NOTICE = ("This model has no chat template (a base model): it continues your prompt as plain text, "
                     "and it is trained the same way.")

VERDICT_BUTTONS = [  # (objectName, binding)
    ("verdictLeft", keys.LEFT),
    ("verdictTie", keys.TIE),
    ("verdictBothBad", keys.BOTH_BAD),
    ("verdictRight", keys.RIGHT),
    ("verdictSkip", keys.SKIP),
]
MODE_ITEMS = [("pairwise", "Pairwise (2)"), ("ranking", "Ranking (k)")]
QT_PAGE_KEYS = {Qt.Key.Key_Backspace: "Backspace", Qt.Key.Key_Return: "Enter", Qt.Key.Key_Enter: "Enter"}


class LabelPage(QWidget):
    def __init__(self, ctx: AppContext, controller: LabelController, parent=None):
        super().__init__(parent)
        self.setObjectName("page_label")
        self.ctx = ctx
        self.controller = controller
        self._shown: ShownPair | None = None  # the pair on screen, as last shown
        self._build()
        self._connect()

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
        for name, binding in VERDICT_BUTTONS:
            self.buttons[binding.action] = self._button(name, binding)
            row.addWidget(self.buttons[binding.action])
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
        self.regen_button = self._button("regenerateButton", keys.REGENERATE)
        self.edit_button = self._button("writeBetterButton", keys.WRITE_BETTER)
        self.undo_button = self._button("undoButton", keys.UNDO)
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
        self.rank_panes = [ResponsePane(f"rankPane{i + 1}", _answer_title(i)) for i in range(K_RANGE[1])]
        self.place_buttons = []
        for i, binding in enumerate(keys.PLACES[:K_RANGE[1]]):
            b = self._button(f"placeAnswer{i + 1}", binding)
            b.setText(binding.key)  # a row of numbers; the words are in the tooltip
            b.setAccessibleName(f"Place answer {i + 1} next")
            b.setToolTip(binding.button_text())
            self.place_buttons.append(b)
        self.tie_button = self._button("tieWithPrevious", keys.TIE_NEXT)
        self.tie_button.setCheckable(True)
        self.unplace_button = self._button("unplaceButton", keys.UNPLACE)
        self.save_ranking_button = self._button("saveRankingButton", keys.SAVE_RANKING)
        self.rank_skip_button = self._button("rankSkipButton", keys.SKIP)
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
        self.rank_order.setToolTip("Drag an answer left or right to change its place (best on the left); "
                                   f"{keys.SAVE_RANKING.help_text()}. Ties are set with the {keys.TIE_NEXT.key} key.")
        self.rank_help = QLabel(keys.ranking_help())
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

    def _button(self, name: str, binding: KeyBinding | None = None, text: str = "") -> QPushButton:
        """A button that does `binding`'s action, labelled with its key (or a plain `text`)."""
        b = QPushButton(binding.button_text() if binding is not None else text)
        b.setObjectName(name)
        b.setAccessibleName(binding.label if binding is not None else text)
        b.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keys go to the page shortcuts, not a focused button
        if binding is not None:
            b.clicked.connect(lambda _=False: self.controller.act(binding))
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
        for key in keys.all_keys(keys.PAIRWISE, keys.RANKING):
            if key not in keys.PAGE_KEYS:  # those come through keyPressEvent
                QShortcut(QKeySequence(key), self, lambda k=key: c.press(k), context=here)
        self.rank_order.orderDragged.connect(c.ranking.set_order)
        self.mode_box.currentIndexChanged.connect(self._on_mode_changed)
        self.k_box.valueChanged.connect(self._on_mode_changed)
        c.ranking.changed.connect(self._on_ranking_changed)
        c.modeChanged.connect(self._on_controller_modeChanged)
        self.prompt_input.returnPressed.connect(self._on_prompt_input_returnPressed)
        self.train_button.clicked.connect(lambda: self.ctx.navigateRequested.emit("Train"))
        for w in (self.max_tokens, self.temperature, self.top_p):
            w.valueChanged.connect(self._on_settings_changed)
        self.second_model.currentTextChanged.connect(self._on_settings_changed)
        c.pairShown.connect(self._on_controller_pairShown)
        c.textUpdated.connect(self._on_controller_textUpdated)
        c.pairReady.connect(self._on_controller_pairShown)  # the same pair, every answer complete
        c.progressChanged.connect(self._on_controller_progressChanged)
        c.writeBetterAsked.connect(self._on_controller_writeBetterAsked)
        c.message.connect(self.notice.setText)
        self.ctx.modelStateChanged.connect(self._on_ctx_modelStateChanged)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.controller.resume()  # the first time: start sampling
        self.setFocus()

    def hideEvent(self, event) -> None:
        super().hideEvent(event)
        if not event.spontaneous():  # another page was chosen (not the window minimized): the
            self.controller.pause()  # worker serves that page until this one shows again

    def keyPressEvent(self, event) -> None:
        # Backspace and Enter reach the page only when no text field wants them (the prompt
        # line edit keeps its own editing and Enter), so they are keys, not shortcuts.
        key = QT_PAGE_KEYS.get(event.key())
        if key is None or not self.controller.press(key):
            super().keyPressEvent(event)

    # ------------------------------------------------------------------ slots
    def _on_ctx_modelStateChanged(self, state: str, _detail: str) -> None:
        if state == "ready" and self.ctx.plain_text:
            self.notice.setText(PLAIN_TEXT_NOTICE)

    def _on_mode_changed(self, *_) -> None:
        self.controller.set_mode(self.mode_box.currentData(), self.k_box.value())
        self.setFocus()

    def _on_controller_modeChanged(self, mode: str, k: int) -> None:
        self.mode_stack.setCurrentIndex(0 if mode == "pairwise" else 1)
        self._show_k(k)
        self.regen_button.setText((keys.REGENERATE if mode == "pairwise" else keys.REGENERATE_ALL).button_text())
        self.second_model.setEnabled(mode == "pairwise")

    def _show_k(self, k: int) -> None:
        cols = 2 if k <= 4 else 3  # 2x2 for four answers, 2x3 for five or six: each stays wide enough to read
        for i, pane in enumerate(self.rank_panes):
            self.rank_grid.removeWidget(pane)
            self.rank_grid.addWidget(pane, i // cols, i % cols)
        for i, (pane, button) in enumerate(zip(self.rank_panes, self.place_buttons)):
            pane.setVisible(i < k)
            button.setVisible(i < k)

    def _panes_for(self, shown: ShownPair) -> list[ResponsePane]:
        return self.rank_panes[:len(shown.answers)] if shown.ranking else [self.left, self.right]

    def _on_ranking_changed(self, state: RankingState) -> None:
        self.rank_order.show_order(list(state.order), list(state.ties), state.n)
        for i, pane in enumerate(self.rank_panes):
            place = state.place_of(i)
            pane.title.setText(_answer_title(i) + (
                "" if place is None else f"  — place {place[0] + 1}{' (tie)' if place[1] else ''}"))
            pane.set_highlight(place is not None)
        self.tie_button.setChecked(state.tie_next)
        summary = state.summary()
        self.ranking_label.setText(f"Your ranking: {summary}" if summary else "")

    def _on_settings_changed(self, *_):
        self.controller.set_generation(self.max_tokens.value(), self.temperature.value(), self.top_p.value(),
                                       self.second_model.currentText())

    def _on_prompt_input_returnPressed(self) -> None:
        self.controller.add_typed_prompt(self.prompt_input.text())
        self.prompt_input.clear()
        self.setFocus()

    def _on_controller_pairShown(self, shown: ShownPair) -> None:
        self._shown = shown
        if self.prompt_view.toPlainText() != shown.prompt:
            self.prompt_view.setPlainText(shown.prompt)
        for answer, pane in zip(shown.answers, self._panes_for(shown)):
            _show_answer(pane, answer)
        self._set_judging_enabled(shown.ready)
        self.notice.setText(shown.notice)

    def _on_controller_textUpdated(self, answer: ShownAnswer) -> None:
        if self._shown is not None and answer.side < len(self._shown.answers):
            _show_answer(self._panes_for(self._shown)[answer.side], answer)

    def _on_controller_progressChanged(self, p: LabelProgress) -> None:
        self.progress_label.setText(
            f"This session: {p.session} verdicts\nIn the project: {p.total} verdicts\n"
            f"Usable training pairs: {p.usable}\nPace: {p.per_minute:.1f} per minute"
        )
        self.hint.setText(p.estimate)
        self.train_button.setEnabled(p.usable > 0)

    def _set_judging_enabled(self, on: bool) -> None:
        for verdict, b in self.buttons.items():
            b.setEnabled(on or verdict == "skip")
        for b in self.place_buttons + [self.tie_button, self.unplace_button, self.save_ranking_button, self.rank_order]:
            b.setEnabled(on)
        self.edit_button.setEnabled(on)

    def _on_controller_writeBetterAsked(self, shown: ShownPair) -> None:
        dialog = WriteBetterDialog(shown, self)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self.controller.write_better(dialog.text(), dialog.worse_side())


def _answer_title(index: int) -> str:
    return f"Answer {index + 1}  [{keys.PLACES[index].key}]"


def _show_answer(pane: ResponsePane, answer: ShownAnswer) -> None:
    pane.set_text(answer.text, answer.tokens, streaming=answer.writing, cut_off=answer.cut_off)
