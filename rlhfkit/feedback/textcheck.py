"""The app's policy for untrusted text (model output, prompts, annotator notes).

Policy (documented in docs/feedback-app.md):

- **NUL bytes and invalid UTF-8 are rejected** wherever text enters (import rows, form
  fields): no database or downstream tokenizer should ever see them.
- **Bidi controls and zero-width characters are kept verbatim and flagged.** They are part
  of what the model actually wrote, and the exported preference must be about that exact
  text, so the store never rewrites it. The import reports how many rows carry them, and
  the page shows each one as a visible marker (``⟦U+202E⟧``) instead of letting it reorder
  or hide text ("Trojan Source"). Other C0/C1 control characters are shown the same way.
- Display is always escaped text: :func:`reveal_invisible` escapes first and only then
  inserts its own fixed markup, so nothing from the input can become HTML.
"""

from __future__ import annotations

import unicodedata

from markupsafe import Markup, escape

# Explicit bidi embedding/override/isolate controls and marks (Unicode TR9), which can
# reorder how text is displayed without changing what it is.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
# Characters that occupy no width and can hide content or split words invisibly.
ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u180e")
_ALLOWED_CONTROLS = frozenset("\t\n\r")


class TextError(ValueError):
    """A piece of text that may not be stored; the message is one clause, without a full stop."""


def decode_utf8(raw: bytes) -> str:
    """Decode strictly; the error names the byte offset of the first invalid sequence."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TextError(f"is not valid UTF-8 (bad byte at offset {err.start})") from None


def check_text(text: str, *, max_chars: int | None = None, allow_empty: bool = False) -> str:
    """Return `text` unchanged if it may be stored, else raise TextError.

    Rejects NUL, lone surrogates (text that cannot be encoded as UTF-8), empty or
    whitespace-only text (unless `allow_empty`) and text longer than `max_chars`.
    """
    if "\x00" in text:
        raise TextError(f"contains a NUL character (at index {text.index(chr(0))})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise TextError(f"contains a lone surrogate (at index {err.start}), so it is not valid UTF-8") from None
    if not allow_empty and not text.strip():
        raise TextError("is empty")
    if max_chars is not None and len(text) > max_chars:
        raise TextError(f"is {len(text)} characters long, more than the limit of {max_chars}")
    return text


def is_invisible(char: str) -> bool:
    """Characters shown as markers: bidi controls, zero-width, and control chars except tab/newline."""
    if char in BIDI_CONTROLS or char in ZERO_WIDTH:
        return True
    return unicodedata.category(char) == "Cc" and char not in _ALLOWED_CONTROLS


def invisible_characters(text: str) -> list[str]:
    """The distinct invisible characters in `text`, as `U+XXXX` codes, in first-seen order."""
    seen: dict[str, None] = {}
    for char in text:
        if is_invisible(char):
            seen.setdefault(f"U+{ord(char):04X}", None)
    return list(seen)


def reveal_invisible(text: str) -> Markup:
    """Escape `text` for HTML and replace each invisible character by a visible marker.

    Escaping happens per character before any markup is added, so the only tags in the
    result are the fixed `<span class="invisible">` markers.
    """
    if not any(is_invisible(char) for char in text):
        return escape(text)
    parts: list[str] = []
    for char in text:
        if is_invisible(char):
            parts.append(f'<span class="invisible" title="invisible character">⟦U+{ord(char):04X}⟧</span>')
        else:
            parts.append(str(escape(char)))
    return Markup("".join(parts))
