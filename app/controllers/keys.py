"""The keys of the labeling pages, each once: key -> action -> the words that explain it.

The shortcuts, the buttons' labels and the help lines are all made from these bindings, so a
key changed here changes everywhere it shows. Keys are QKeySequence's portable text
("Left", "Ctrl+Z"); no Qt is needed to read them. The Label page has two maps (a digit is a
verdict in pairwise mode and a place in ranking mode); the Compare page votes with the
pairwise verdicts and moves on with `NEXT_ROUND`.
"""

from __future__ import annotations

from dataclasses import dataclass

SHOWN = {"Left": "←", "Right": "→"}  # how a key is written in a label or help line
PAGE_KEYS = ("Backspace", "Enter")  # a focused text field wants these too: the page reads them
# as key presses after the field (not as shortcuts, which would take them from the field)


@dataclass(frozen=True)
class KeyBinding:
    """One action and the keys that do it; `keys[0]` is the key a button shows."""

    action: str  # what the controller does: a verdict ("left", ...) or a named action
    keys: tuple[str, ...]  # QKeySequence text
    label: str  # the button's words, without the key
    help: str  # the words after the key in a help line
    index: int | None = None  # the answer a "place" action places (0-based, shown order)

    @property
    def key(self) -> str:
        """The key as a label shows it."""
        return SHOWN.get(self.keys[0], self.keys[0])

    def button_text(self) -> str:
        """The button's text: its words and key; an arrow key also as an arrow on its side."""
        text = f"{self.label}  [{self.key}]"
        if "Left" in self.keys:
            text = f"← {text}"
        if "Right" in self.keys:
            text = f"{text} →"
        return text

    def help_text(self) -> str:
        """'1 / ← left': every key of the action, then its words."""
        return f"{' / '.join(SHOWN.get(k, k) for k in self.keys)} {self.help}"


LEFT = KeyBinding("left", ("1", "Left"), "Left is better", "left")
RIGHT = KeyBinding("right", ("2", "Right"), "Right is better", "right")
TIE = KeyBinding("tie", ("3",), "Tie", "tie")
BOTH_BAD = KeyBinding("both_bad", ("4",), "Both bad", "both bad")
SKIP = KeyBinding("skip", ("S",), "Skip", "skip")
VERDICT_KEYS = (LEFT, TIE, BOTH_BAD, RIGHT, SKIP)  # in the order of the buttons

REGENERATE = KeyBinding("regenerate", ("R",), "Regenerate both", "regenerate")
REGENERATE_ALL = KeyBinding("regenerate", ("R",), "Regenerate all", "regenerate")
WRITE_BETTER = KeyBinding("write_better", ("E",), "Write a better answer", "write a better answer")
UNDO = KeyBinding("undo", ("Ctrl+Z",), "Undo last", "undo")

MAX_PLACES = 6  # the most answers a ranking shows: above 6 they no longer fit on a screen to read
PLACES = tuple(KeyBinding("place", (str(i + 1),), f"Answer {i + 1} takes the next place", "", index=i)
               for i in range(MAX_PLACES))
TIE_NEXT = KeyBinding("tie_next", ("=",), "Tie with previous", "ties")
UNPLACE = KeyBinding("unplace", ("Backspace",), "Take back", "takes back the last place")
SAVE_RANKING = KeyBinding("save_ranking", ("Enter",), "Save ranking", "saves")

PAIRWISE = VERDICT_KEYS + (REGENERATE, WRITE_BETTER, UNDO)
RANKING = PLACES + (TIE_NEXT, UNPLACE, SAVE_RANKING, SKIP, REGENERATE_ALL, WRITE_BETTER, UNDO)
NEXT_ROUND = KeyBinding("next", ("N",), "Next prompt", "next prompt")
COMPARE = VERDICT_KEYS + (NEXT_ROUND,)


def binding_for(key: str, bindings: tuple[KeyBinding, ...]) -> KeyBinding | None:
    """The binding of `key` among `bindings` (None: the key does nothing there)."""
    return next((b for b in bindings if key in b.keys), None)


def verdict_help() -> str:
    """The pairwise help line: 'Which answer is better? 1 / ← left, 2 / → right, ...'."""
    order = (LEFT, RIGHT, TIE, BOTH_BAD, SKIP)
    return f"Which answer is better? {', '.join(b.help_text() for b in order)}."


def ranking_hint(n: int) -> str:
    """The ranking help line once `n` answers are complete."""
    return (f"Rank the {n} answers: the number of the best first. {TIE_NEXT.help_text()}, "
            f"{SAVE_RANKING.help_text()}.")


def ranking_help() -> str:
    """How ranking works, under the answers."""
    return (f"Rank: press the number of the best answer, then the next best, and so on. "
            f"{TIE_NEXT.key} before a number ties it with the previous one. {UNPLACE.key} {UNPLACE.help}. "
            f"{SAVE_RANKING.key} {SAVE_RANKING.help} (answers not placed tie for last); placing the last "
            f"answer saves too. Or drag the answers in the row above into order, then press {SAVE_RANKING.key}. "
            f"A ranking of 4 gives up to 6 training pairs.")


def all_keys(*maps: tuple[KeyBinding, ...]) -> list[str]:
    """Every key of the maps, once, in order (a page makes one shortcut per key)."""
    return list(dict.fromkeys(k for bindings in maps for b in bindings for k in b.keys))
