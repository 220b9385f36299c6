// camp-plugin.js: write camp-server plugins in JavaScript (componentize-js).
//
// `definePlugin` fills in a pass-through default for every export the
// `plugin` world asks for, so a plugin is only what it does:
//
//   import { definePlugin, hookSet, replaceUtf8 } from "./camp-plugin.js";
//   export const { name, hooks, onRegister, onUnregister, sessionOpened,
//     sessionClosed, beforeSendUtf8, beforeSendBinary, beforeSendError,
//     onReceiveUtf8, onReceiveBinary, onReceiveError } = definePlugin({
//     name: "shout",
//     hooks: hookSet("on-receive-utf8"),
//     onReceiveUtf8: (session, text) => replaceUtf8(text.toUpperCase()),
//   });
//
// Build with componentize-js and `--disable http fetch-event` (otherwise
// the component imports wasi:http, which camp-server refuses).
//
// Never console.log: the host captures stdout/stderr as log lines, bounded
// per call, and an interpreted guest pays for it on every call. Use
// log/debug/info/warn/error below (the server's log, tagged with the
// plugin's name), and logEnabled(level) to skip building lines the server
// would drop.
import { log as hostLog, logEnabled as hostLogEnabled, monotonicMs, nowMs } from "camp:extension/host@0.2.1";

export { monotonicMs, nowMs };

/** Let the message go on unchanged. */
export const PASS = Object.freeze({ tag: "pass" });
/** Stop the message: later plugins and the receiver never see it. */
export const DROP = Object.freeze({ tag: "drop" });

/** Let a UTF-8 message go on as `text`. */
export const replaceUtf8 = (text) => ({ tag: "replace", val: { tag: "utf8", val: text } });
/** Let a binary message go on as `data` (a Uint8Array). */
export const replaceBinary = (data) => ({ tag: "replace", val: { tag: "binary", val: data } });
/** Let an error message go on as `text`. */
export const replaceError = (text) => ({ tag: "replace", val: { tag: "error", val: text } });

const HOOKS = {
  "before-send-utf8": "beforeSendUtf8",
  "before-send-binary": "beforeSendBinary",
  "before-send-error": "beforeSendError",
  "on-receive-utf8": "onReceiveUtf8",
  "on-receive-binary": "onReceiveBinary",
  "on-receive-error": "onReceiveError",
  "session-opened": "sessionOpened",
  "session-closed": "sessionClosed",
};

/** The hook set of the given WIT names, e.g. hookSet("on-receive-utf8"). */
export function hookSet(...names) {
  const flags = {};
  for (const name of names) {
    const key = HOOKS[name] ?? (Object.values(HOOKS).includes(name) ? name : undefined);
    if (!key) throw new Error(`unknown hook ${name}; known: ${Object.keys(HOOKS).join(", ")}`);
    flags[key] = true;
  }
  return flags;
}

/** A line in the server's log at `level` ("trace" … "error"). */
export const log = (level, message) => hostLog(level, String(message));
export const trace = (m) => log("trace", m);
export const debug = (m) => log("debug", m);
export const info = (m) => log("info", m);
export const warn = (m) => log("warn", m);
export const error = (m) => log("error", m);
/**
 * Whether a line at `level` ("trace" … "error") would reach the server's
 * log (its filter lets plugin lines of that level through): check it
 * before building a line, e.g. `if (logEnabled("debug")) debug(`…`)`.
 * The answer does not change while the camp-server process runs.
 */
export const logEnabled = (level) => hostLogEnabled(level);

/**
 * The twelve exports of the plugin world from `plugin`: `name` (a string),
 * `hooks` (see hookSet), and any of `onRegister(config)` (throw a string to
 * refuse the load), `onUnregister()`, `sessionOpened(session)`,
 * `sessionClosed(session)` and the six hooks `(session, payload) => action`.
 */
export function definePlugin(plugin) {
  const pass = () => PASS;
  const nothing = () => {};
  return {
    name: () => plugin.name ?? "js-plugin",
    hooks: () => plugin.hooks ?? {},
    onRegister: (config) => {
      if (plugin.onRegister) plugin.onRegister(config);
    },
    onUnregister: plugin.onUnregister ?? nothing,
    sessionOpened: plugin.sessionOpened ?? nothing,
    sessionClosed: plugin.sessionClosed ?? nothing,
    beforeSendUtf8: plugin.beforeSendUtf8 ?? pass,
    beforeSendBinary: plugin.beforeSendBinary ?? pass,
    beforeSendError: plugin.beforeSendError ?? pass,
    onReceiveUtf8: plugin.onReceiveUtf8 ?? pass,
    onReceiveBinary: plugin.onReceiveBinary ?? pass,
    onReceiveError: plugin.onReceiveError ?? pass,
  };
}
