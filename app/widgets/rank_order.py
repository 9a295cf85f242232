from PySide6.QtCore import QAbstractItemModel, QTimer, Qt, Signal
from PySide6.QtWidgets import QAbstractItemView, QListView, QListWidget, QListWidgetItem


class RankOrderList(QListWidget):
    """The ranking as a row of answer numbers, best on the left, to reorder by dragging.

    Shows the places given so far (by key or click), then the answers not placed yet. A drag
    emits `orderDragged(order)`: the whole row as the new ranking, answer indices best first.
    Item texts are plain text (QListWidget does not render HTML).
    """

    orderDragged = Signal(list)

    def __init__(self, name: str, parent=None):
        super().__init__(parent)
        self.setObjectName(name)
        self.setAccessibleName("Ranking order: drag answers to reorder, best on the left")
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(False)
        self.setDragDropMode(QAbstractItemView.DragDropMode.InternalMove)
        self.setDefaultDropAction(Qt.DropAction.MoveAction)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keys stay with the page's shortcuts
        self.setSpacing(3)
        self.setStyleSheet("QListWidget::item { border: 1px solid palette(mid); border-radius: 3px; padding: 1px 6px; }")
        self.setFixedHeight(self.fontMetrics().height() + 22)
        self._filling = False
        model: QAbstractItemModel = self.model()
        # a move may arrive as rowsMoved or as insert + remove: read the row once it has settled
        for signal in (model.rowsMoved, model.rowsInserted, model.rowsRemoved):
            signal.connect(self._on_model_changed)
        self._settle = QTimer(self, singleShot=True, interval=0)
        self._settle.timeout.connect(self._emit_order)

    def show_order(self, order: list[int], ties: list[bool], n: int) -> None:
        """Placed answers in their order (a tie joined by '='), then the unplaced ones."""
        self._filling = True
        self.clear()
        rest = [i for i in range(n) if i not in order]
        for pos, index in enumerate(list(order) + rest):
            placed = pos < len(order)
            tied = placed and pos > 0 and ties[pos]
            item = QListWidgetItem(f"{'= ' if tied else ''}Answer {index + 1}" + ("" if placed else " (not placed)"))
            item.setData(Qt.ItemDataRole.UserRole, index)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsDragEnabled)
            if not placed:
                item.setForeground(self.palette().placeholderText())
            self.addItem(item)
        self._filling = False

    def current_order(self) -> list[int]:
        return [self.item(r).data(Qt.ItemDataRole.UserRole) for r in range(self.count())]

    def _on_model_changed(self, *_) -> None:
        if not self._filling:
            self._settle.start()

    def _emit_order(self) -> None:
        order = self.current_order()
        if len(set(order)) == len(order) and None not in order:
            self.orderDragged.emit(order)
