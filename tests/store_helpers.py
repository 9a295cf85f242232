"""Shared fixtures and sample data for the store, formats, CLI and Data page tests."""

from __future__ import annotations

import pytest

from dpo_engine.pairs import PreferencePair
from dpo_engine.store.project import open_project


@pytest.fixture
def fresh_db():
    """An empty in-memory project (fast; no file, no lock)."""
    project = open_project(":memory:")
    yield project
    project.close()


@pytest.fixture
def project_file(tmp_path):
    """Path of a project file that does not exist yet."""
    return tmp_path / "project.dpo.sqlite"


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
