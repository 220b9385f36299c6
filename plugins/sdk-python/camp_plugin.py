"""camp_plugin: write camp-server plugins in Python (componentize-py).

Subclass `Plugin`, set `NAME` and `HOOKS`, write only the hooks you
declared; every other export has a pass-through default. The app module
(`app.py`) must expose the class as `WitWorld`:

    from camp_plugin import Plugin, hook_set, replace_utf8, PASS

    class WitWorld(Plugin):
        NAME = "shout"
        HOOKS = hook_set("on-receive-utf8")

        def on_receive_utf8(self, session, text):
            return replace_utf8(text.upper())

Never `print`: the host captures stdout/stderr as log lines, bounded per
call and cut when too long, and an interpreted guest pays for it on every
call. Use `log`, `debug`, `info`, `warn` or `error` (they go to the
server's log tagged with the plugin's name), and `log_enabled(level)` to
skip formatting lines the server would drop.
"""

from wit_world import WitWorld as _World
from wit_world.imports import host
from wit_world.imports.types import (
    Action_Drop,
    Action_Pass,
    Action_Replace,
    HookSet,
    Level,
    Payload_Binary,
    Payload_Error,
    Payload_Utf8,
)
from componentize_py_types import Err

__all__ = [
    "Plugin",
    "HookSet",
    "Level",
    "PASS",
    "DROP",
    "replace_utf8",
    "replace_binary",
    "replace_error",
    "hook_set",
    "refuse",
    "log",
    "log_enabled",
    "trace",
    "debug",
    "info",
    "warn",
    "error",
    "monotonic_ms",
    "now_ms",
]

#: Let the message go on unchanged.
PASS = Action_Pass()
#: Stop the message: later plugins and the receiver never see it.
DROP = Action_Drop()


def replace_utf8(text: str):
    """Let a UTF-8 message go on as `text`."""
    return Action_Replace(Payload_Utf8(text))


def replace_binary(data: bytes):
    """Let a binary message go on as `data`."""
    return Action_Replace(Payload_Binary(bytes(data)))


def replace_error(text: str):
    """Let an error message go on as `text`."""
    return Action_Replace(Payload_Error(text))


_HOOKS = {
    "before-send-utf8": HookSet.BEFORE_SEND_UTF8,
    "before-send-binary": HookSet.BEFORE_SEND_BINARY,
    "before-send-error": HookSet.BEFORE_SEND_ERROR,
    "on-receive-utf8": HookSet.ON_RECEIVE_UTF8,
    "on-receive-binary": HookSet.ON_RECEIVE_BINARY,
    "on-receive-error": HookSet.ON_RECEIVE_ERROR,
    "session-opened": HookSet.SESSION_OPENED,
    "session-closed": HookSet.SESSION_CLOSED,
}


def hook_set(*names: str) -> HookSet:
    """The hook set of the given WIT names, e.g. `hook_set("on-receive-utf8")`
    (underscores work too)."""
    flags = HookSet(0)
    for name in names:
        key = name.replace("_", "-")
        if key not in _HOOKS:
            raise ValueError(f"unknown hook {name!r}; known: {', '.join(_HOOKS)}")
        flags |= _HOOKS[key]
    return flags


def refuse(message: str):
    """Refuses the load from `on_register` (the previous version keeps
    running): `raise refuse("bad config")`."""
    return Err(message)


def log(level: Level, message: str) -> None:
    """A line in the server's log, tagged with the plugin's name."""
    host.log(level, message)


def log_enabled(level: Level) -> bool:
    """Whether a line at `level` would reach the server's log (its filter
    lets plugin lines of that level through): check it before formatting
    a line, e.g. `if log_enabled(Level.DEBUG): debug(f"...")`. The answer
    does not change while the camp-server process runs."""
    return host.log_enabled(level)


def trace(message: str) -> None:
    host.log(Level.TRACE, message)


def debug(message: str) -> None:
    host.log(Level.DEBUG, message)


def info(message: str) -> None:
    host.log(Level.INFO, message)


def warn(message: str) -> None:
    host.log(Level.WARN, message)


def error(message: str) -> None:
    host.log(Level.ERROR, message)


monotonic_ms = host.monotonic_ms
now_ms = host.now_ms


class Plugin(_World):
    """A plugin with a default for every export: set `NAME` and `HOOKS`,
    override the hooks you declared (and `on_register` for configuration).
    An exception in a hook traps the instance (the host applies the
    plugin's failure policy), so let only real failures escape."""

    #: Shown in the admin view (the plugin's identity is its file name).
    NAME = "python-plugin"
    #: The hooks the host calls (see `hook_set`).
    HOOKS = HookSet(0)

    def name(self) -> str:
        return self.NAME

    def hooks(self) -> HookSet:
        return self.HOOKS

    def on_register(self, config: str) -> None:
        pass

    def on_unregister(self) -> None:
        pass

    def session_opened(self, session) -> None:
        pass

    def session_closed(self, session) -> None:
        pass

    def before_send_utf8(self, session, text: str):
        return PASS

    def before_send_binary(self, session, data: bytes):
        return PASS

    def before_send_error(self, session, text: str):
        return PASS

    def on_receive_utf8(self, session, text: str):
        return PASS

    def on_receive_binary(self, session, data: bytes):
        return PASS

    def on_receive_error(self, session, text: str):
        return PASS
