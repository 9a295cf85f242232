from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget


class PlaceholderPage(QWidget):
    """Stands in for a page that a later change fills."""

    def __init__(self, title: str, text: str, parent=None):
        super().__init__(parent)
        self.setObjectName(f"page_{title.lower()}")
        label = QLabel(f"<h2>{title}</h2><p>{text}</p>")  # our own fixed text, not model output
        label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(label)
