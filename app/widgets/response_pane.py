from PySide6.QtWidgets import QLabel, QPlainTextEdit, QVBoxLayout, QWidget


class ResponsePane(QWidget):
    """One model answer: a title, the text (plain text only: model output is untrusted and
    never rendered as HTML), and its length."""

    def __init__(self, name: str, title: str, parent=None):
        super().__init__(parent)
        self.setObjectName(name)
        self.title = QLabel(title)
        self.title.setObjectName(f"{name}Title")
        self.title.setStyleSheet("font-weight: bold;")
        self.text = QPlainTextEdit()
        self.text.setObjectName(f"{name}Text")
        self.text.setAccessibleName(f"{title} text")
        self.text.setReadOnly(True)
        self.length = QLabel()
        self.length.setObjectName(f"{name}Length")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.text, 1)
        layout.addWidget(self.length)

    def set_text(self, text: str, tokens: int, streaming: bool = False, cut_off: bool = False) -> None:
        """Show an answer; `cut_off`: the model was stopped at the token cap, not ended by itself."""
        if self.text.toPlainText() != text:
            bar = self.text.verticalScrollBar()
            at_end = bar.value() >= bar.maximum() - 4
            self.text.setPlainText(text)
            if streaming and at_end:
                bar.setValue(bar.maximum())
        words = len(text.split())
        state = " · writing…" if streaming else (" · cut off at the limit" if cut_off else "")
        self.length.setText(f"{tokens} tokens · {words} words{state}")

    def set_highlight(self, on: bool) -> None:
        self.text.setStyleSheet("QPlainTextEdit { border: 2px solid #2e7d32; }" if on else "")
