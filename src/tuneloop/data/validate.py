"""Validation rules with stable ids: every rejected row names one of these, its file, line, field and a message.

    check_chat([{"role": "user", "content": "hi"}])
    # raises Rejection("last_not_assistant", "messages[0].role", "the last message must be the assistant's ...")

The chat checks are OpenAI's published fine-tuning data checks (dict record, non-empty `messages`, each message
has `role` and `content`, no keys outside role/content/name/function_call/weight, known roles, non-empty string
content unless a function call, at least one assistant message) plus role order, last turn is the assistant,
empty or whitespace-only content and invalid UTF-8. `RULES` is the reference table (README, report, tests).
"""

from __future__ import annotations

import functools

# rule id -> what it means; ids are a public contract (rejected.jsonl, manifest, --strict messages)
RULES = {
    # reading
    "invalid_json": "the line is not valid JSON",
    "invalid_utf8": "bytes or text that are not valid UTF-8",
    "not_an_object": "the record is not a JSON object / mapping",
    "row_too_large": "the raw row is larger than data.max_row_bytes",
    "csv_column_count": "a CSV/TSV row has a different number of columns than the header",
    # format
    "missing_field": "a field the format needs is absent (see data.columns to map names)",
    "wrong_type": "a field has the wrong type (e.g. a string where a list of messages is expected)",
    "unknown_label": "the label is not in data.labels",
    "invalid_number": "a numeric column (confidence) does not hold a number",
    "preference_identical": "chosen and rejected answers are the same text",
    # OpenAI chat checks
    "messages_missing": "`messages` is absent or an empty list",
    "message_not_object": "a message is not an object",
    "message_missing_key": "a message lacks `role` or `content`",
    "message_unrecognized_key": "a message has a key outside role/content/name/function_call/weight",
    "invalid_role": "a role outside system/user/assistant/function",
    "content_not_string": "content is not a string (and the message is not a function call)",
    "no_assistant_message": "no assistant message to learn from",
    "invalid_weight": "a message weight other than 0 or 1",
    # our checks
    "empty_content": "content is empty or whitespace-only (before or after cleaning)",
    "role_order": "system not first, or user/assistant turns do not alternate",
    "last_not_assistant": "the last message is not the assistant's answer (needed for SFT)",
}
# Dropped (not errors): the row was valid but is not used. "quality:<rule>" names a quality filter.
DROP_REASONS = {
    "duplicate": "exact duplicate (normalized text) of an earlier row",
    "near_duplicate": "near-duplicate (MinHash Jaccard >= data.near_dup_threshold) of an earlier row",
    "contamination": "near-duplicate of a validation/test row, removed from the training side",
    "too_long": "more tokens than data.max_tokens after the chat template",
    "low_confidence": "confidence column below data.min_confidence",
    "quality:min_chars": "fewer characters than data.min_chars",
    "quality:max_chars": "more characters than data.max_chars",
    "quality:alpha_ratio": "share of letters below data.min_alpha_ratio",
    "quality:repeated_lines": "share of repeated lines above data.max_repeated_lines",
    "unused_by_split_sizes": "left over after taking the requested split sizes",
}
WARNINGS = {"no_system_message": "no system message", "no_user_message": "no user message"}

ALLOWED_KEYS = {"role", "content", "name", "function_call", "weight"}
ROLES = {"system", "user", "assistant", "function"}


class Rejection(Exception):
    """A row breaks a rule; carries the rule id, the field path and a one-line message."""

    def __init__(self, rule: str, fld: str, message: str):
        assert rule in RULES, rule
        super().__init__(message)
        self.rule, self.field, self.message = rule, fld, message


def valid_utf8(text: str) -> bool:
    """False for strings holding lone surrogates (JSON "\\ud800" escapes, undecodable CSV bytes)."""
    if text.isascii():  # O(1) on CPython's compact ASCII strings; encoding would copy the text
        return True
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_message(i: int, m) -> None:
    # the field path f"messages[{i}]" is only built for an error (~0.3 us per message otherwise)
    if not isinstance(m, dict):
        raise Rejection("message_not_object", f"messages[{i}]",
                        f"message {i} is a {type(m).__name__}, not an object")
    if "role" not in m or ("content" not in m and "function_call" not in m):
        missing = "role" if "role" not in m else "content"
        raise Rejection("message_missing_key", f"messages[{i}]", f"message {i} has no '{missing}'")
    if not m.keys() <= ALLOWED_KEYS:
        extra = sorted(set(m) - ALLOWED_KEYS)
        raise Rejection("message_unrecognized_key", f"messages[{i}].{extra[0]}", f"message {i} has unrecognized "
                        f"key '{extra[0]}' (allowed: {', '.join(sorted(ALLOWED_KEYS))})")
    role = m["role"]
    if not isinstance(role, str) or role not in ROLES:  # (a list or dict role is unhashable: no set lookup)
        raise Rejection("invalid_role", f"messages[{i}].role", f"message {i} has role {role!r} "
                        "(use system, user, assistant or function)")
    content = m.get("content")
    if content is None and "function_call" in m:
        return
    if not isinstance(content, str):
        raise Rejection("content_not_string", f"messages[{i}].content",
                        f"message {i} content is a {type(content).__name__}, not a string")
    if not valid_utf8(content):
        raise Rejection("invalid_utf8", f"messages[{i}].content", f"message {i} content holds invalid UTF-8")
    if not content or content.isspace():  # (strip() would copy the text)
        raise Rejection("empty_content", f"messages[{i}].content", f"message {i} content is empty or whitespace")
    if "weight" in m and m["weight"] not in (0, 1):
        raise Rejection("invalid_weight", f"messages[{i}].weight",
                        f"message {i} weight {m['weight']!r} must be 0 or 1")


def check_chat(messages, require_last_assistant: bool = True) -> list:
    """Run all chat checks on a `messages` value; returns warning ids. Raises Rejection on the first error."""
    if not isinstance(messages, list) or not messages:
        raise Rejection("messages_missing", "messages", "'messages' must be a non-empty list of messages")
    for i, m in enumerate(messages):
        check_message(i, m)
    problem, warnings = role_verdict(tuple([m["role"] for m in messages]), require_last_assistant)
    if problem:
        raise Rejection(*problem)
    return list(warnings)


@functools.lru_cache(maxsize=1024)  # a file has a few role sequences (user/assistant, system/user/assistant...)
def role_verdict(roles: tuple, require_last_assistant: bool) -> tuple:
    """(None or the Rejection's arguments, warning ids) for a sequence of valid roles."""
    try:
        if "assistant" not in roles:
            raise Rejection("no_assistant_message", "messages", "no assistant message to learn from")
        check_role_order(roles)
        if require_last_assistant and roles[-1] != "assistant":
            raise Rejection("last_not_assistant", f"messages[{len(roles) - 1}].role",
                            f"the last message is '{roles[-1]}'; SFT needs the assistant's answer last")
    except Rejection as r:
        return (r.rule, r.field, r.message), ()
    return None, tuple(w for w, role in (("no_system_message", "system"), ("no_user_message", "user"))
                       if role not in roles)


def check_role_order(roles: list) -> None:
    """System only at the start; after it, user and assistant alternate (function results follow the
    assistant's function call and are answered by the assistant)."""
    prev = None
    for i, role in enumerate(roles):
        if role == "system":
            if i != 0:
                raise Rejection("role_order", f"messages[{i}].role", f"system message at position {i}; "
                                "only the first message may be a system message")
        elif role in ("user", "assistant") and role == prev:
            raise Rejection("role_order", f"messages[{i}].role", f"two '{role}' messages in a row at {i - 1}-{i}; "
                            "merge them or insert the other side's turn")
        prev = role
