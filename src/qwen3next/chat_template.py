"""Chat templates: rendering a conversation to the text the model reads, as transformers does.

Qwen3 ships its ChatML template as Jinja in ``tokenizer_config.json``; :func:`render_chat_template`
renders it in a sandbox set up like ``transformers``' ``apply_chat_template(tokenize=False)``. Chapter 02.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any


@functools.lru_cache(maxsize=16)
def _compile_template(template: str):
    """Compile a chat template in a sandbox set up like transformers' (trim/lstrip blocks, loop controls,
    a tojson that does not escape HTML, raise_exception, strftime_now)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


# transformers passes a message's reasoning under all three names; templates read reasoning_content
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


def render_chat_template(
    template: str,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = False,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    **kwargs: Any,
) -> str:
    """Render ``messages`` (a list of ``{"role": ..., "content": ...}`` dicts) with a Jinja chat template.

    Like transformers: keys whose value is None are dropped from each message, and a reasoning text given
    as ``thinking`` or ``reasoning`` is also offered as ``reasoning_content``.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages must be a non-empty list of dicts, got {messages!r}")
    chat = []
    for m in messages:
        if not isinstance(m, dict):
            raise TypeError(f"each message must be a dict with 'role' and 'content', got {type(m).__name__}")
        m = {k: v for k, v in m.items() if v is not None}
        reasoning = next((m[k] for k in _REASONING_KEYS if m.get(k) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        chat.append(m)
    if tools is not None and not all(isinstance(t, dict) for t in tools):
        raise TypeError("tools must be JSON-schema dicts")
    return _compile_template(template).render(
        messages=chat, tools=tools, documents=documents, add_generation_prompt=add_generation_prompt, **kwargs
    )
