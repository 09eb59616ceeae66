"""Unicode normalisation before tokenization: NFC, exactly as the reference's tables apply it.

The Qwen3 ``tokenizer.json`` normalises every text to NFC (canonical composition) before splitting it, so
``"e\u0301"`` and ``"\u00e9"`` encode alike. Chapter 02.
"""

from __future__ import annotations

import unicodedata

# U+11938 (DIVES AKURU VOWEL SIGN O) is canonically U+11935 U+11930, but the reference's Unicode tables
# have no such decomposition, so its NFC leaves the pair apart. We do the same by normalising the text on
# both sides of every U+11930 separately (U+11930 is a starter, so nothing else changes).
_NFC_KEEP_APART = "\U00011930"


def nfc(text: str) -> str:
    """NFC normalisation exactly as the reference applies it (see ``_NFC_KEEP_APART``)."""
    if _NFC_KEEP_APART not in text:
        return unicodedata.normalize("NFC", text)
    return _NFC_KEEP_APART.join(unicodedata.normalize("NFC", part) for part in text.split(_NFC_KEEP_APART))
