"""Sample data for the store, formats, CLI, Data page and reliability tests (their `fresh_db`
and `project_file` fixtures are in conftest.py)."""

from __future__ import annotations

from dpo_engine.pairs import PreferencePair


def sample_pairs() -> list[PreferencePair]:
    """Plain, conversational, multi-turn and non-ASCII pairs."""
    return [
        PreferencePair("What is 2+2?", "4", "5"),
        PreferencePair((("user", "Name a colour."),), "Blue.", "Seven."),
        PreferencePair((("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Capital of France?")),
                       "Paris.", "Lyon, I think."),
        PreferencePair((("user", "Übersetze: cat"),), "Katze 🐈", "Hund"),
        PreferencePair("Line\nbreaks, \"quotes\", commas", "a,b\n\"c\"", "plain"),
    ]


def label(project, prompt, left, right, verdict, **kw) -> int:
    """Store a prompt, two answers and a verdict the way the Label page does."""
    pid = project.add_prompt(prompt, "test")
    a = project.add_response(pid, left, "tiny", {"temperature": 0.8})
    b = project.add_response(pid, right, "tiny", {"temperature": 0.8})
    return project.record_comparison(pid, a, b, verdict, **kw)
