"""Ollama's Modelfile parser, ported line by line from ollama/ollama parser/parser.go (ParseFile,
parseRuneForState, unquote) so tests read a Modelfile back as `ollama create` does, not as the
writer in dpo_engine/export/ollama.py assumes. Go's strconv.IsPrint is taken as str.isprintable
(the same for the text tests write) and strings.TrimSpace as str.strip.
"""

from __future__ import annotations

NIL, NAME, VALUE, PARAMETER, MESSAGE, COMMENT = range(6)
COMMANDS = {"from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter",
            "message", "requires"}


class ModelfileError(ValueError):
    pass


def _is_space(r: str) -> bool:
    return r in " \t"


def _is_newline(r: str) -> bool:
    return r in "\r\n"


def _rune_for_state(r: str, state: int) -> tuple[int, str]:
    """parseRuneForState: (next state, the rune to keep; "" for none)."""
    if state == NIL:
        if r == "#":
            return COMMENT, ""
        if _is_space(r) or _is_newline(r):
            return NIL, ""
        return NAME, r
    if state == NAME:
        if r.isascii() and r.isalpha():
            return NAME, r
        if _is_space(r):
            return VALUE, ""
        raise ModelfileError("invalid command")
    if state == VALUE:
        return (NIL, r) if _is_newline(r) or _is_space(r) else (VALUE, r)
    if state in (PARAMETER, MESSAGE):
        if r.isascii() and (r.isalnum() or (r == "_" and state == PARAMETER)):
            return state, r
        if _is_space(r):
            return VALUE, ""
        raise ModelfileError("unexpected EOF")
    return (NIL, "") if _is_newline(r) else (COMMENT, "")  # COMMENT


def _unquote(s: str) -> str | None:
    if s[:3] == '"""':
        return s[3:-3] if len(s) >= 6 and s[-3:] == '"""' else None
    if s[:1] == '"':
        return s[1:-1] if len(s) >= 2 and s[-1] == '"' else None
    return s


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """[(command name as Ollama names it: "model" for FROM, "stop" for PARAMETER stop, ...), value]."""
    commands: list[tuple[str, str]] = []
    name, state, buf, role = "", NIL, "", ""
    for r in text:
        nxt, r = _rune_for_state(r, state)
        if nxt != state:
            if state == NAME:
                word = buf.lower()
                if word not in COMMANDS:
                    raise ModelfileError(f"invalid command {buf!r}")
                if word == "parameter":
                    nxt = PARAMETER
                else:
                    name = "model" if word == "from" else word
                    nxt = MESSAGE if word == "message" else nxt
            elif state == PARAMETER:
                name = buf
            elif state == MESSAGE:
                if buf not in ("system", "user", "assistant"):
                    raise ModelfileError("invalid message role")
                role = buf
            elif state == VALUE:
                value = _unquote(buf.strip())
                if value is None or _is_space(r):
                    buf += r
                    continue
                if role:
                    value, role = f"{role}: {value}", ""
                commands.append((name, value))
            buf, state = "", nxt
        if r and r.isprintable():
            buf += r
    if state == VALUE:
        value = _unquote(buf.strip())
        if value is None:
            raise ModelfileError("unexpected EOF")
        commands.append((name, f"{role}: {value}" if role else value))
    elif state not in (NIL, COMMENT):
        raise ModelfileError("unexpected EOF")
    if not any(n == "model" for n, _ in commands):
        raise ModelfileError("no FROM line")
    return commands
