"""A dialog that shows an import or export report as plain text (file content is
untrusted: never rendered as HTML)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QPlainTextEdit, QVBoxLayout


class ReportDialog(QDialog):
    def __init__(self, title: str, headline: str, text: str, parent=None):
        super().__init__(parent)
        self.setObjectName("reportDialog")
        self.setWindowTitle(title)
        self.resize(760, 420)
        self.headline = QLabel(headline)
        self.headline.setObjectName("reportHeadline")
        self.headline.setTextFormat(Qt.TextFormat.PlainText)
        self.headline.setWordWrap(True)
        self.body = QPlainTextEdit(text)
        self.body.setObjectName("reportText")
        self.body.setAccessibleName("Report")
        self.body.setReadOnly(True)
        self.body.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.body.setFont(QFont("monospace"))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.setObjectName("reportButtons")
        buttons.button(QDialogButtonBox.StandardButton.Close).setObjectName("reportClose")
        buttons.button(QDialogButtonBox.StandardButton.Close).setAccessibleName("Close report")
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.headline)
        layout.addWidget(self.body, 1)
        layout.addWidget(buttons)
