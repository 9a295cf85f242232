"""Compare page: the model before and after training answer the same prompt side by side;
the person votes blind, sees which was which, and watches the win rate. A view:
`app.controllers.compare_controller.CompareController` holds the rounds, the votes and what
may be shown; this page lays out widgets, shows what it hands over and forwards input."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
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

from app.controllers.compare_controller import CompareController, CompareRound
from app.controllers.rounds import VoteStats
from app.pages.export_dialog import ExportDialog
from app.controllers import keys
from app.pages.model_choice import choose_model
from app.plumbing.context import AppContext
from app.widgets.response_pane import ResponsePane
from dpo_engine.heldout import HeldoutSummary
from dpo_engine.pairs import MAX_FIELD_CHARS

VOTE_BUTTONS = [  # (objectName, binding): the Label page's verdict keys (`keys`), in the buttons' order
    ("compareLeft", keys.LEFT),
    ("compareTie", keys.TIE),
    ("compareBothBad", keys.BOTH_BAD),
    ("compareRight", keys.RIGHT),
    ("compareSkip", keys.SKIP),
]
SOURCE_CHOICES = [("Held-out prompts", "heldout"), ("Starter prompts", "starter"), ("Only prompts I type", "typed")]


def _plain_label(name: str, accessible: str = "") -> QLabel:
    label = QLabel()
    label.setObjectName(name)
    label.setTextFormat(Qt.TextFormat.PlainText)  # model names and texts are untrusted
    label.setWordWrap(True)
    if accessible:
        label.setAccessibleName(accessible)
    return label


def _as_percent(x: float) -> str:
    return f"{100 * x:.0f}%"


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


class ComparePage(QWidget):
    def __init__(self, ctx: AppContext, controller: CompareController, parent=None):
        super().__init__(parent)
        self.setObjectName("page_compare")
        self.ctx = ctx
        self.controller = controller
        self._build()
        self._connect()
        self._on_controller_modelsChanged()
        self._on_controller_statsChanged(self.controller.stats())
        self._started = False

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.before_model = self._model_combo("beforeModel", "Before model")
        self.after_model = self._model_combo("afterModel", "After model")
        self.browse_button = QPushButton("Choose…", objectName="browseAfterModel")
        self.browse_button.setAccessibleName("Choose the after model")
        self.blind_box = QCheckBox("Blind", objectName="blindMode", checked=True)
        self.blind_box.setAccessibleName("Blind mode")
        self.blind_box.setToolTip("Hide which model wrote which answer until you vote.")
        self.source = QComboBox(objectName="promptSource")
        self.source.setAccessibleName("Prompts")
        for text, key in SOURCE_CHOICES:
            self.source.addItem(text, key)
        top = QHBoxLayout()
        for label, w in (("Before", self.before_model), ("After", self.after_model)):
            top.addWidget(QLabel(label))
            top.addWidget(w, 1)
        top.addWidget(self.browse_button)
        self.export_button = QPushButton("Export this model…", objectName="exportAfterModel")
        self.export_button.setAccessibleName("Export the after model")
        top.addWidget(self.export_button)
        top.addWidget(self.blind_box)
        top.addWidget(self.source)

        self.prompt_view = QPlainTextEdit(objectName="comparePromptView", readOnly=True)
        self.prompt_view.setAccessibleName("Prompt")
        self.prompt_view.setMaximumHeight(64)
        self.prompt_input = QLineEdit(objectName="comparePromptInput")
        self.prompt_input.setMaxLength(MAX_FIELD_CHARS)  # Qt cuts at 32,767 by default, silently
        self.prompt_input.setAccessibleName("Type a prompt")
        self.prompt_input.setPlaceholderText("Type a prompt and press Enter to compare both models on it")
        self.panes = (ResponsePane("compareLeftPane", "Left answer"), ResponsePane("compareRightPane", "Right answer"))
        self.rewards = (_plain_label("compareLeftReward"), _plain_label("compareRightReward"))
        split = QSplitter(Qt.Orientation.Horizontal)
        for pane, reward in zip(self.panes, self.rewards):
            pane.title.setTextFormat(Qt.TextFormat.PlainText)
            pane.layout().addWidget(reward)
            split.addWidget(pane)

        self.buttons: dict[str, QPushButton] = {}
        row = QHBoxLayout()
        for name, binding in VOTE_BUTTONS:
            self.buttons[binding.action] = self._button(name, binding.button_text())
            self.buttons[binding.action].setAccessibleName(binding.label)
            row.addWidget(self.buttons[binding.action])
        self.next_button = self._button("compareNext", keys.NEXT_ROUND.button_text())
        row.addWidget(self.next_button)
        self.notice = _plain_label("compareNotice", "Notice")

        main = QVBoxLayout()
        main.addLayout(top)
        main.addWidget(QLabel("Prompt"))
        main.addWidget(self.prompt_view)
        main.addWidget(self.prompt_input)
        main.addWidget(split, 1)
        main.addLayout(row)
        main.addWidget(self.notice)
        outer = QHBoxLayout(self)
        outer.addLayout(main, 1)
        outer.addWidget(self._side_panel())

    def _model_combo(self, name: str, accessible: str) -> QComboBox:
        combo = QComboBox(objectName=name, editable=True)
        combo.setAccessibleName(accessible)
        combo.lineEdit().setObjectName(f"{name}Edit")
        combo.lineEdit().setAccessibleName(f"{accessible} reference")
        combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        combo.setMinimumContentsLength(16)
        return combo

    def _button(self, name: str, label: str) -> QPushButton:
        b = QPushButton(label, objectName=name)
        b.setAccessibleName(label.split("  [")[0].strip("← →"))
        b.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keys go to the page shortcuts, not a focused button
        return b

    def _side_panel(self) -> QWidget:
        win = QGroupBox("Win rate (blind votes)")
        wl = QVBoxLayout(win)
        self.winrate_label = _plain_label("winRate", "Win rate")
        self.winrate_label.setStyleSheet("font-size: 15pt; font-weight: bold;")
        self.votes_label = _plain_label("voteCounts", "Vote counts")
        self.length_label = _plain_label("lengthSummary", "Mean answer length")
        for w in (self.winrate_label, self.votes_label, self.length_label):
            wl.addWidget(w)

        held = QGroupBox("Held-out pairs")
        hl = QVBoxLayout(held)
        self.heldout_button = QPushButton("Score held-out pairs", objectName="heldoutButton")
        self.heldout_button.setAccessibleName("Score held-out pairs under both models")
        self.heldout_label = _plain_label("heldoutSummary", "Held-out summary")
        self.heldout_label.setText("Preference accuracy and reward margin of both models on the pairs "
                                   "held out from training.")
        hl.addWidget(self.heldout_button)
        hl.addWidget(self.heldout_label)

        s = self.controller.settings
        gen = QGroupBox("Generation (same for both)")
        form = QFormLayout(gen)
        self.max_tokens = QSpinBox(objectName="compareMaxTokens", minimum=8, maximum=2048, value=s.max_new_tokens)
        self.max_tokens.setAccessibleName("Max new tokens")
        self.temperature = QDoubleSpinBox(objectName="compareTemperature", minimum=0.0, maximum=2.0,
                                          singleStep=0.1, value=s.temperature)
        self.temperature.setAccessibleName("Temperature")
        form.addRow("Max new tokens", self.max_tokens)
        form.addRow("Temperature", self.temperature)

        side = QWidget()
        side.setFixedWidth(300)
        sl = QVBoxLayout(side)
        for group in (win, held, gen):
            sl.addWidget(group)
        sl.addStretch(1)
        return side

    # ------------------------------------------------------------------ wiring
    def _connect(self) -> None:
        c = self.controller
        for _name, binding in VOTE_BUTTONS:
            self.buttons[binding.action].clicked.connect(lambda _=False, v=binding.action: c.vote(v))
        for binding in keys.COMPARE:
            act = c.next_round if binding is keys.NEXT_ROUND else (lambda v=binding.action: c.vote(v))
            for key in binding.keys:
                QShortcut(QKeySequence(key), self, act, context=Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.next_button.clicked.connect(c.next_round)
        self.before_model.activated.connect(self._on_models_edited)
        self.after_model.activated.connect(self._on_models_edited)
        self.before_model.lineEdit().editingFinished.connect(self._on_models_edited)
        self.after_model.lineEdit().editingFinished.connect(self._on_models_edited)
        self.browse_button.clicked.connect(self._on_browse_clicked)
        self.export_button.clicked.connect(self._on_export_clicked)
        self.blind_box.toggled.connect(self._on_blind_toggled)
        self.source.currentIndexChanged.connect(lambda i: c.set_source(self.source.itemData(i)))
        self.prompt_input.returnPressed.connect(self._on_prompt_input_returnPressed)
        self.heldout_button.clicked.connect(self._on_heldout_clicked)
        for w in (self.max_tokens, self.temperature):
            w.valueChanged.connect(self._on_settings_changed)
        c.modelsChanged.connect(self._on_controller_modelsChanged)
        c.roundShown.connect(self._on_controller_roundShown)
        c.textUpdated.connect(self._on_controller_textUpdated)
        c.roundReady.connect(self._on_controller_roundReady)
        c.scoresReady.connect(self._show_names_and_rewards)
        c.revealed.connect(self._on_controller_revealed)
        c.statsChanged.connect(self._on_controller_statsChanged)
        c.heldoutProgress.connect(lambda done, total: self.heldout_label.setText(f"Scoring… {done}/{total} pairs"))
        c.heldoutReady.connect(self._on_controller_heldoutReady)
        c.message.connect(self.notice.setText)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.controller.refresh_models()  # a run may have finished since the page was last seen
        if not self._started or self.controller.current is None:
            self._started = True  # generate only once the page is first seen
            self.controller.start()
        self.setFocus()

    # ------------------------------------------------------------------ slots
    def _on_models_edited(self, *_) -> None:
        self.controller.set_models(self.before_model.currentText(), self.after_model.currentText())
        self.setFocus()

    def _on_browse_clicked(self) -> None:
        choice = choose_model(self, self.ctx, "Choose the 'after' model", self.controller.after_ref)
        if choice is not None:
            self.after_model.setEditText(choice.path)
            self._on_models_edited()

    def _on_export_clicked(self) -> ExportDialog | None:
        export = self.controller.export_controller()
        if export is None:
            self.notice.setText("Choose the 'after' model first: it is the one exported.")
            return None
        dialog = ExportDialog(export, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog

    def _on_blind_toggled(self, on: bool) -> None:
        self.controller.set_blind(on)
        self._show_names_and_rewards()

    def _on_settings_changed(self, *_) -> None:
        self.controller.set_generation(self.max_tokens.value(), self.temperature.value())

    def _on_prompt_input_returnPressed(self) -> None:
        self.controller.add_typed_prompt(self.prompt_input.text())
        self.prompt_input.clear()
        self.setFocus()

    def _on_heldout_clicked(self) -> None:
        if self.controller.compute_heldout():
            self.heldout_label.setText("Scoring the held-out pairs under both models…")

    def _on_controller_modelsChanged(self) -> None:
        c = self.controller
        options = c.model_options()
        for combo, items, current in ((self.before_model, options.before, options.before_ref),
                                      (self.after_model, options.after, options.after_ref)):
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(list(items))
            combo.setEditText(current)
            combo.blockSignals(False)
        if c.no_model_reason():
            self.notice.setText(c.no_model_reason())
            self.after_model.lineEdit().setPlaceholderText("No checkpoint yet: type or choose a model folder")

    def _on_controller_roundShown(self, rnd: CompareRound) -> None:
        self.prompt_view.setPlainText(rnd.prompt_text)
        for side, pane in enumerate(self.panes):
            pane.set_text(rnd.texts[side], rnd.tokens[side], streaming=not rnd.finished[side],
                          cut_off=rnd.finished[side] and not rnd.ended[side])
        self._set_voting_enabled(rnd.done)
        self._show_names_and_rewards()
        self.notice.setText("" if rnd.done else "Both models are writing, with the same seed and settings…")

    def _on_controller_textUpdated(self, side: int, text: str, tokens: int) -> None:
        rnd = self.controller.current
        done = bool(rnd and rnd.finished[side])
        self.panes[side].set_text(text, tokens, streaming=not done, cut_off=done and not rnd.ended[side])

    def _on_controller_roundReady(self) -> None:
        self._set_voting_enabled(True)
        self.notice.setText(keys.verdict_help())

    def _on_controller_revealed(self) -> None:
        self._set_voting_enabled(False, skip=False)  # voted: only Next moves on
        self._show_names_and_rewards()
        if self.controller.current is not None:
            self.notice.setText(self.controller.preference_text())

    def _show_names_and_rewards(self) -> None:
        views = self.controller.side_views()
        for view, pane, reward in zip(views or (), self.panes, self.rewards):
            pane.title.setText(view.title)
            reward.setText(view.reward)

    def _set_voting_enabled(self, on: bool, skip: bool = True) -> None:
        for verdict, b in self.buttons.items():
            b.setEnabled(on or (skip and verdict == "skip"))

    def _on_controller_statsChanged(self, s: VoteStats) -> None:
        if s.rate is None:
            self.winrate_label.setText("No blind votes yet")
        else:
            self.winrate_label.setText(f"After wins {_as_percent(s.rate)}\n"
                                       f"95% CI {_as_percent(s.low)} – {_as_percent(s.high)}")
        votes = f"{_n(s.votes, 'blind vote')}: {s.wins} after, {s.losses} before, {_n(s.ties, 'tie')}"
        votes += " (a tie counts half)" if s.ties else ""
        if s.unblinded:
            votes += f"\n{_n(s.unblinded, 'unblinded vote')} stored, not counted"
        self.votes_label.setText(votes)
        if s.rounds:
            before, after = s.before_tokens, s.after_tokens
            drift = f" ({100 * (after - before) / before:+.0f}%)" if before else ""
            self.length_label.setText(f"Mean answer length over {_n(s.rounds, 'prompt')}: before {before:.0f} → "
                                      f"after {after:.0f} tokens{drift}")
        else:
            self.length_label.setText("Mean answer length: no answers yet")

    def _on_controller_heldoutReady(self, h: HeldoutSummary) -> None:
        skipped = f", {h.skipped} skipped" if h.skipped else ""
        note = self.controller.heldout_note  # why not fp32, in words; "" when fp32
        self.heldout_label.setText(
            f"{h.pairs} held-out pairs{skipped}, β {h.beta:g}\n"
            f"Prefers the chosen answer: before {_as_percent(h.base_accuracy)} → "
            f"after {_as_percent(h.trained_accuracy)}\n"
            f"Reward accuracy (after): {_as_percent(h.reward_accuracy)}\n"
            f"Mean reward margin: before 0 (by definition) → after {h.reward_margin:+.3f}\n"
            f"Mean log-prob margin: before {h.base_logp_margin:+.2f} → after {h.trained_logp_margin:+.2f}\n"
            f"Scored in {h.precision}" + (f"\n{note}" if note else ""))
        self.heldout_label.setToolTip(
            "'Prefers the chosen answer': the model gives the chosen answer a higher log-probability than the "
            "rejected one. Reward accuracy: the after model moved towards the chosen answer relative to the "
            "before model (r_chosen > r_rejected). The base's implicit rewards are 0 by definition.\n"
            f"Precision: {self.controller.scoring_reason()}")
