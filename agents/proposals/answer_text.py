"""Finding the JSON object in whatever text a model returns.

Models wrap their answer: in a reasoning block (``<think> ... </think>``), in prose and code fences,
twice, with a trailing comma or single quotes, or cut off by the token cap. :func:`find_answer_object`
sets reasoning blocks aside, takes the first JSON object that has the required fields, accepts common
syntax slips through ``json_repair`` (a lenient JSON parser) and reports each such step in
``FoundObject.notes`` — reasoning, several objects, lenient parsing, a field given twice, a cut-off
answer — so nothing is resolved silently. It never raises: whatever the input's size or nesting, the
outcome is an object or the reason there is none.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import json_repair

MAX_NESTING = 64  # deeper objects are refused unparsed (a command nests 5 levels at most)
MAX_OBJECTS = 16  # objects read from one answer; the rest is ignored (and noted)
MAX_LENIENT_CHARS = 256 * 1024  # longer objects must be strict JSON (the lenient parser is pure Python)
MAX_NOTE_CHARS = 1000

# Reasoning blocks of reasoning models (DeepSeek-R1, Qwen3, ...); a closing tag alone means the
# opening tag was part of the prompt template.
_REASONING_TAG = re.compile(r"<(/?)(?:think|thinking|reasoning|thought)\s*>", re.IGNORECASE)
# Inside an object: a double-quoted string (possibly unterminated), a bracket, or a single quote.
_OBJECT_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[{}\[\]\']', re.DOTALL)
_SINGLE_QUOTED = re.compile(r"'[^'\\]*(?:\\.[^'\\]*)*'?", re.DOTALL)
_KEY_COLON = re.compile(r"\s*:")


@dataclass
class FoundObject:
    """What :func:`find_answer_object` found: ``value`` is the chosen object (it may still lack
    required fields: the caller checks them) or None with ``error`` saying why; ``notes`` says how it
    was found whenever that was not a plain single JSON object."""

    value: dict[str, Any] | None
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Span:
    start: int
    end: int | None  # None: the text ends inside the object
    depth: int  # deepest nesting of braces and brackets
    duplicates: list[str]
    cut: str | None = None  # for an unclosed object: where the text ends
    cut_is_safe: bool = False  # the text ends inside a string value or after a complete member


def _clip(text: str) -> str:
    return text if len(text) <= MAX_NOTE_CHARS else text[: MAX_NOTE_CHARS - 1] + "…"


def split_reasoning(text: str) -> tuple[str, list[str]]:
    """``text`` without its reasoning blocks, and the blocks' contents in order. A block never
    closed (the answer was cut off while reasoning) runs to the end of the text. Linear in ``len(text)``."""
    outside: list[str] = []
    blocks: list[str] = []
    depth, pos, block_start = 0, 0, 0
    for tag in _REASONING_TAG.finditer(text):
        closing = tag.group(1) == "/"
        if not closing:
            if depth == 0:
                outside.append(text[pos : tag.start()])
                block_start = tag.end()
            depth += 1
        elif depth > 0:
            depth -= 1
            if depth == 0:
                blocks.append(text[block_start : tag.start()].strip())
                pos = tag.end()
        else:  # a closing tag alone: what came before it was reasoning
            blocks.append(("".join(outside) + text[pos : tag.start()]).strip())
            outside, pos = [], tag.end()
    if depth > 0:
        blocks.append(text[block_start:].strip())
    else:
        outside.append(text[pos:])
    return "".join(outside), [b for b in blocks if b]


def _previous_char(text: str, index: int) -> str:
    index -= 1
    while index >= 0 and text[index].isspace():
        index -= 1
    return text[index] if index >= 0 else ""


def _scan_object(text: str, start: int) -> _Span:
    """Where the object opening at ``text[start] == "{"`` ends, how deep it nests, which keys it
    repeats, and — if the text ends inside it — where."""
    # One entry per open container: [keys seen (None for an array), path, last key seen].
    containers: list[list] = [[set(), "", ""]]
    depth = max_depth = 1
    duplicates: list[str] = []
    pos = start + 1
    value_string_end = -1  # where the last complete string value at depth 1 ended
    while True:
        token = _OBJECT_TOKEN.search(text, pos)
        if token is None:  # the text ends inside the object
            top_key = containers[0][2]
            after_member = text.rstrip().endswith(",") or (value_string_end == pos and not text[pos:].strip())
            where = f"after the field {top_key!r}" if top_key else "before its first field"
            return _Span(start, None, max_depth, duplicates, f"the text ends {where}", depth == 1 and after_member)
        char, pos = token.group()[0], token.end()
        if char in "\"'":
            if char == "'":
                if _previous_char(text, token.start()) not in ("{", "[", ",", ":"):
                    continue  # an apostrophe in an unquoted word, not a string
                token = _SINGLE_QUOTED.match(text, token.start())
                pos = token.end()
            string = token.group()
            is_value = _previous_char(text, token.start()) == ":"
            if len(string) < 2 or string[-1] != char:  # never closed: the text ends inside this string
                key = containers[-1][2] if depth <= MAX_NESTING else ""
                where = f"inside the value of {key!r}" if is_value else "inside a string"
                return _Span(start, None, max_depth, duplicates, f"the text ends {where}", depth == 1 and is_value)
            if depth > MAX_NESTING:
                continue
            container = containers[-1]
            if container[0] is not None and _KEY_COLON.match(text, pos):
                key = string[1:-1]
                if key in container[0]:
                    duplicates.append(container[1] + key)
                container[0].add(key)
                container[2] = key
            elif depth == 1 and is_value:
                value_string_end = pos
        elif char in "{[":
            depth += 1
            max_depth = max(max_depth, depth)
            if depth <= MAX_NESTING:
                parent = containers[-1]
                path = f"{parent[1]}{parent[2]}." if parent[0] is not None else f"{parent[1][:-1]}[]."
                containers.append([set() if char == "{" else None, path, ""])
        else:  # a closing bracket
            if depth <= MAX_NESTING:
                containers.pop()
            depth -= 1
            if depth == 0:
                return _Span(start, pos, max_depth, duplicates)


def _object_spans(text: str) -> Iterator[_Span]:
    pos = 0
    while (start := text.find("{", pos)) != -1:
        span = _scan_object(text, start)
        yield span
        if span.end is None:
            return
        pos = span.end


def _parse(source: str) -> tuple[Any, list[str] | None, str | None]:
    """(value, lenient-parsing log or None when strict JSON, error)."""
    try:
        return json.loads(source, strict=False), None, None  # strict=False: raw newlines inside strings
    except (ValueError, RecursionError) as exc:
        strict_error = str(exc)
    if len(source) > MAX_LENIENT_CHARS:
        return None, None, f"not valid JSON ({strict_error}) and too long ({len(source)} characters) to repair"
    try:
        value, log = json_repair.loads(source, logging=True, skip_json_loads=True)
    except (ValueError, RecursionError) as exc:
        return None, None, f"not valid JSON ({strict_error}); lenient parsing failed: {exc}"
    steps = list(dict.fromkeys(entry.get("text", "") for entry in log if isinstance(entry, dict)))
    return value, [f"not strict JSON: {strict_error}", *steps[:5]], None


def find_answer_object(text: str, required: tuple[str, ...]) -> FoundObject:
    """The JSON object in a model's answer ``text``: the first that has every ``required`` field,
    else the one with the most of them. Never raises."""
    notes: dict[str, Any] = {}
    outside, blocks = split_reasoning(text)
    if blocks:
        notes["reasoning"] = _clip(" | ".join(blocks))
    found: list[tuple[dict[str, Any], _Span, list[str] | None]] = []
    errors: list[str] = []
    for index, span in enumerate(_object_spans(outside)):
        if index == MAX_OBJECTS:
            notes["objects_ignored"] = f"only the first {MAX_OBJECTS} JSON objects were read"
            break
        where = f"the object at character {span.start}"
        if span.depth > MAX_NESTING:
            errors.append(f"{where} nests deeper than {MAX_NESTING} levels")
            continue
        if span.end is None and not span.cut_is_safe:
            errors.append(f"{where} is cut off: {span.cut}")
            continue
        value, lenient, error = _parse(outside[span.start : span.end])
        if error is not None:
            errors.append(f"{where} is {error}")
        elif isinstance(value, dict):
            found.append((value, span, lenient))
        else:
            errors.append(f"{where} parsed as {type(value).__name__}, not an object")
    if not found:
        reason = "; ".join(errors) or "answer contains no JSON object"
        if blocks and not errors:
            reason += " outside its reasoning block"
        return FoundObject(None, f"answer is not valid JSON: {reason}"[:2000], notes)

    def score(item) -> int:
        return sum(name in item[0] for name in required)

    value, span, lenient = max(found, key=score)  # max keeps the first among equals
    if len(found) > 1:
        commands = [v for v, *_ in found if all(name in v for name in required)]
        differ = sorted({k for v in commands for k in {*v, *value} if v.get(k) != value.get(k)})
        chosen = "the first of those is used" if commands else "the one with the most of them is used"
        notes["objects"] = f"{len(found)} JSON objects, {len(commands)} with all of {list(required)}; {chosen}" + (
            f"; the others differ in {differ[:10]}" if differ else ""
        )
    if lenient is not None:
        notes["lenient_json"] = [_clip(step) for step in lenient]
    if span.duplicates:
        notes["ambiguous"] = [
            f"field {name!r} is given more than once; the last value is used" for name in span.duplicates[:10]
        ]
    if span.end is None:
        notes["cut_off"] = f"{span.cut}; the complete fields are used"
    return FoundObject(value, None, notes)
