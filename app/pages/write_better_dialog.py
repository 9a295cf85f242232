"""The Label page's editor for the person's own answer."""

from __future__ import annotations

from PySide6.QtWidgets import QComboBox, QDialog, QDialogButtonBox, QFormLayout, QPlainTextEdit, QVBoxLayout

from app.controllers.label_controller import ShownPair


class WriteBetterDialog(QDialog):
    """Rewrite an answer or write the ideal one; it is stored as chosen against the worse sample."""

    def __init__(self, shown: ShownPair, parent=None):
        super().__init__(parent)
        self.setObjectName("writeBetterDialog")
        self.setWindowTitle("Write a better answer")
        texts = [a.text for a in shown.answers]
        names = [f"Answer {i + 1}" for i in range(len(texts))] if shown.ranking else ["Left answer", "Right answer"]
        self.start_from = QComboBox(objectName="startFrom")
        self.start_from.addItems(names + ["Empty"])
        self.start_from.setAccessibleName("Start from")
        self.worse = QComboBox(objectName="worseSide")
        self.worse.addItems(names)
        self.worse.setAccessibleName("Worse answer")
        self.editor = QPlainTextEdit(objectName="betterText")
        self.editor.setAccessibleName("Your answer")
        self.editor.setPlainText(texts[0])
        self.start_from.currentIndexChanged.connect(
            lambda i: self.editor.setPlainText(texts[i] if i < len(texts) else ""))
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
