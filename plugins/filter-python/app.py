"""filter, in Python: drops or rewrites messages by rules from its
configuration, like the Rust `filter` plugin (same configuration, same
behaviour), and counts the messages it dropped per session in the session
store (`filter.dropped`). Regular expressions are Python's `re` dialect."""

import json
import re

from camp_plugin import DROP, PASS, Level, Plugin, debug, hook_set, log_enabled, refuse, replace_utf8

KNOWN = {"blocked", "patterns", "max_size", "redact"}


class Rules:
    def __init__(self, config: str):
        data = json.loads(config) if config.strip() else {}
        if not isinstance(data, dict):
            raise ValueError("expected a table")
        unknown = set(data) - KNOWN
        if unknown:
            raise ValueError(f"unknown field `{sorted(unknown)[0]}`")
        self.blocked = [w.lower() for w in data.get("blocked", [])]
        self.patterns = [compile_(p) for p in data.get("patterns", [])]
        self.max_size = data.get("max_size")
        self.redact = []
        for rule in data.get("redact", []):
            unknown = set(rule) - {"pattern", "replacement"}
            if unknown:
                raise ValueError(f"unknown field `{sorted(unknown)[0]}`")
            replacement = rule.get("replacement", "[redacted]")
            # Rust's `$1` group references, in Python's syntax.
            replacement = re.sub(r"\$(\d+)", r"\\\1", replacement.replace("\\", "\\\\"))
            self.redact.append((compile_(rule["pattern"]), replacement))


def compile_(pattern: str):
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"invalid pattern {pattern!r}: {e}")


def dropped(session, why: str):
    count = int(session.get("filter.dropped") or "0") + 1
    session.set("filter.dropped", str(count))
    # Formatted only if the server writes debug lines.
    if log_enabled(Level.DEBUG):
        debug(f"dropped a message of session {session.id()}: {why}")
    return DROP


class WitWorld(Plugin):
    NAME = "filter"
    HOOKS = hook_set(
        "before-send-utf8", "before-send-binary", "on-receive-utf8", "on-receive-binary"
    )
    rules = None

    def on_register(self, config: str) -> None:
        try:
            WitWorld.rules = Rules(config)
        except (ValueError, KeyError, TypeError) as e:
            raise refuse(f"invalid filter config: {e}")

    def _text(self, session, text: str):
        rules = self.rules
        if rules is None:
            return PASS
        if rules.max_size is not None and len(text.encode()) > rules.max_size:
            return dropped(session, "too large")
        lower = text.lower()
        if any(w in lower for w in rules.blocked):
            return dropped(session, "blocked word")
        if any(p.search(text) for p in rules.patterns):
            return dropped(session, "blocked pattern")
        out = text
        for pattern, replacement in rules.redact:
            out = pattern.sub(replacement, out)
        return PASS if out == text else replace_utf8(out)

    def _binary(self, session, data: bytes):
        rules = self.rules
        if rules is not None and rules.max_size is not None and len(data) > rules.max_size:
            return dropped(session, "too large")
        return PASS

    before_send_utf8 = _text
    on_receive_utf8 = _text
    before_send_binary = _binary
    on_receive_binary = _binary
