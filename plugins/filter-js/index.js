// filter, in JavaScript: drops or rewrites messages by rules from its
// configuration, like the Rust `filter` plugin (same configuration, same
// behaviour), and counts the messages it dropped per session in the session
// store (`filter.dropped`). Regular expressions are JavaScript's dialect.
import { DROP, PASS, debug, definePlugin, hookSet, logEnabled, replaceUtf8 } from "./camp-plugin.js";

let rules = null;

function compile(pattern, flags) {
  try {
    return new RegExp(pattern, flags);
  } catch (e) {
    throw `invalid pattern ${JSON.stringify(pattern)}: ${e.message}`;
  }
}

function parse(config) {
  const data = config.trim() ? JSON.parse(config) : {};
  for (const key of Object.keys(data)) {
    if (!["blocked", "patterns", "max_size", "redact"].includes(key)) {
      throw `invalid filter config: unknown field \`${key}\``;
    }
  }
  return {
    blocked: (data.blocked ?? []).map((w) => w.toLowerCase()),
    patterns: (data.patterns ?? []).map((p) => compile(p, "u")),
    maxSize: data.max_size ?? null,
    redact: (data.redact ?? []).map((r) => {
      for (const key of Object.keys(r)) {
        if (key !== "pattern" && key !== "replacement") {
          throw `invalid filter config: unknown field \`${key}\``;
        }
      }
      return [compile(r.pattern, "gu"), r.replacement ?? "[redacted]"];
    }),
  };
}

const utf8Length = (text) => new TextEncoder().encode(text).length;

function dropped(session, why) {
  const count = Number(session.get("filter.dropped") ?? "0") + 1;
  session.set("filter.dropped", String(count));
  // Formatted only if the server writes debug lines.
  if (logEnabled("debug")) debug(`dropped a message of session ${session.id()}: ${why}`);
  return DROP;
}

function text(session, text) {
  if (rules === null) return PASS;
  if (rules.maxSize !== null && utf8Length(text) > rules.maxSize) return dropped(session, "too large");
  const lower = text.toLowerCase();
  if (rules.blocked.some((w) => lower.includes(w))) return dropped(session, "blocked word");
  if (rules.patterns.some((p) => p.test(text))) return dropped(session, "blocked pattern");
  let out = text;
  for (const [pattern, replacement] of rules.redact) out = out.replace(pattern, replacement);
  return out === text ? PASS : replaceUtf8(out);
}

function binary(session, data) {
  if (rules !== null && rules.maxSize !== null && data.length > rules.maxSize) {
    return dropped(session, "too large");
  }
  return PASS;
}

export const {
  name,
  hooks,
  onRegister,
  onUnregister,
  sessionOpened,
  sessionClosed,
  beforeSendUtf8,
  beforeSendBinary,
  beforeSendError,
  onReceiveUtf8,
  onReceiveBinary,
  onReceiveError,
} = definePlugin({
  name: "filter",
  hooks: hookSet("before-send-utf8", "before-send-binary", "on-receive-utf8", "on-receive-binary"),
  onRegister(config) {
    try {
      rules = parse(config);
    } catch (e) {
      throw typeof e === "string" ? e : `invalid filter config: ${e.message ?? e}`;
    }
  },
  beforeSendUtf8: text,
  onReceiveUtf8: text,
  beforeSendBinary: binary,
  onReceiveBinary: binary,
});
