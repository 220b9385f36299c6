//! The files of a new plugin project, per language. Every template does
//! the same thing, so the same `NAME.test` script checks it: "ping" is
//! answered "pong" in place, a message starting with "drop" is dropped,
//! "hello" gets a reply on the session, anything else passes; each
//! message is counted in the session store under `NAME.seen` (NAME: the plugin).

use std::path::{Path, PathBuf};

use super::Lang;

/// The plugin contract, vendored into each project.
const WIT: &str = include_str!("../../../plugins/sdk/wit/camp-extension.wit");
/// The Python SDK.
const SDK_PYTHON: &str = include_str!("../../../plugins/sdk-python/camp_plugin.py");
/// The JavaScript SDK.
const SDK_JS: &str = include_str!("../../../plugins/sdk-js/camp-plugin.js");
/// The C SDK.
const SDK_C_H: &str = include_str!("../../../plugins/sdk-c/camp_plugin.h");
const SDK_C_C: &str = include_str!("../../../plugins/sdk-c/camp_plugin.c");

/// The test script, the same for every language.
const TEST: &str = "\
# camp-plugin test {{name}}.wasm: one check per line.
#   HOOK PAYLOAD => pass | drop | fail | replace PAYLOAD
#     (HOOK: receive-utf8, receive-binary, receive-error, send-utf8,
#      send-binary, send-error; binary payloads in hex)
#   reply TEXT | no-reply     the next message the plugin sent the session
#   store KEY VALUE | store KEY -    the session store holds (or lacks) KEY
#   set KEY VALUE             write the store before the next call
#   session ID                switch to (or create) in-memory session ID
receive-utf8 ping => replace pong
receive-utf8 drop this one => drop
receive-utf8 hello => pass
reply hi from {{name}}
no-reply
receive-utf8 anything else => pass
store {{name}}.seen 4
session 2
store {{name}}.seen -
receive-utf8 ping => replace pong
store {{name}}.seen 1
";

/// The settings file.
const TOML: &str = "\
# Settings of the {{name}} plugin (beside {{name}}.wasm in the server's plugin
# folder). `config` is handed to on-register (a table arrives as JSON).
order = 50
failure_policy = \"fail-open\"
deadline_ms = DEADLINE
MEMORY

[config]
greeting = \"hi\"
";

/// `.gitignore` of a project.
const GITIGNORE: &str = "/target\n*.wasm\nnode_modules/\n__pycache__/\n";

const RUST_CARGO: &str = r#"[package]
name = "{{name}}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
# The SDK: a path to camp-server's plugins/sdk, or a git dependency on the
# camp-server repository (cargo finds the crate by its name).
camp-plugin = { path = "{{sdk}}" }

# Small, fast components.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"

# A project of its own, even inside another workspace.
[workspace]
"#;

const RUST_LIB: &str = r#"//! The {{name}} plugin.

use camp_plugin::{Action, HookSet, Payload, Plugin, Session};

struct Main;

impl Plugin for Main {
    fn name() -> String {
        "{{name}}".into()
    }

    fn hooks() -> HookSet {
        HookSet::ON_RECEIVE_UTF8
    }

    fn on_receive_utf8(session: &Session, text: String) -> Action {
        let seen = session
            .get("{{name}}.seen")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        session.set("{{name}}.seen", &(seen + 1).to_string());
        if text == "ping" {
            Action::Replace(Payload::Utf8("pong".into()))
        } else if text.starts_with("drop") {
            Action::Drop
        } else {
            if text == "hello" {
                session.send_utf8("hi from {{name}}");
            }
            Action::Pass
        }
    }
}

camp_plugin::plugin!(Main);
"#;

const PYTHON_APP: &str = r#""""The {{name}} plugin."""

from camp_plugin import DROP, PASS, Plugin, hook_set, replace_utf8


class WitWorld(Plugin):
    NAME = "{{name}}"
    HOOKS = hook_set("on-receive-utf8")

    def on_receive_utf8(self, session, text):
        seen = int(session.get("{{name}}.seen") or "0")
        session.set("{{name}}.seen", str(seen + 1))
        if text == "ping":
            return replace_utf8("pong")
        if text.startswith("drop"):
            return DROP
        if text == "hello":
            session.send_utf8("hi from {{name}}")
        return PASS
"#;

const JS_INDEX: &str = r#"// The {{name}} plugin.
import { DROP, PASS, definePlugin, hookSet, replaceUtf8 } from "./camp-plugin.js";

export const {
  name, hooks, onRegister, onUnregister, sessionOpened, sessionClosed,
  beforeSendUtf8, beforeSendBinary, beforeSendError,
  onReceiveUtf8, onReceiveBinary, onReceiveError,
} = definePlugin({
  name: "{{name}}",
  hooks: hookSet("on-receive-utf8"),
  onReceiveUtf8(session, text) {
    const seen = Number(session.get("{{name}}.seen") ?? "0");
    session.set("{{name}}.seen", String(seen + 1));
    if (text === "ping") return replaceUtf8("pong");
    if (text.startsWith("drop")) return DROP;
    if (text === "hello") session.sendUtf8("hi from {{name}}");
    return PASS;
  },
});
"#;

const JS_PACKAGE: &str = r#"{
  "name": "{{name}}",
  "private": true,
  "type": "module",
  "devDependencies": {
    "@bytecodealliance/componentize-js": "0.23.0",
    "@bytecodealliance/preview2-shim": "0.25.0"
  }
}
"#;

const C_MAIN: &str = r#"/* The {{name}} plugin. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "camp_plugin.h"

static camp_action on_receive_utf8(camp_session s, camp_str text) {
    char *old = camp_session_get(s, "{{name}}.seen");
    char seen[24];
    snprintf(seen, sizeof seen, "%lld", (old ? atoll(old) : 0) + 1);
    free(old);
    camp_session_set(s, "{{name}}.seen", seen);
    if (text.len == 4 && memcmp(text.ptr, "ping", 4) == 0) return camp_replace_utf8("pong", 4);
    if (text.len >= 4 && memcmp(text.ptr, "drop", 4) == 0) return camp_drop();
    if (text.len == 5 && memcmp(text.ptr, "hello", 5) == 0) {
        const char *hi = "hi from {{name}}";
        camp_send_utf8(s, hi, strlen(hi));
    }
    return camp_pass();
}

CAMP_PLUGIN(.name = "{{name}}", .hooks = CAMP_HOOK_ON_RECEIVE_UTF8,
            .on_receive_utf8 = on_receive_utf8);
"#;

/// The project files (relative paths) of a new `lang` plugin `name`.
pub fn files(lang: Lang, name: &str, sdk: &Path) -> Vec<(PathBuf, String)> {
    let fill = |t: &str| t.replace("{{name}}", name);
    // Interpreted guests start slower per call: a wider budget.
    let deadline = match lang {
        Lang::Rust | Lang::C => "50",
        Lang::Python | Lang::Js => "200",
    };
    // A JavaScript heap grows to ~96 MiB before its first full collection
    // and then stays there; the 64 MiB default would stop it first (the
    // measurement is in docs/WRITE-A-PLUGIN.md).
    let memory = match lang {
        Lang::Js => {
            "# The JavaScript engine's heap grows to ~96 MiB before it first\n\
             # collects (docs/WRITE-A-PLUGIN.md): room above that.\n\
             memory_limit_bytes = 134217728\n"
        }
        Lang::Rust | Lang::C | Lang::Python => "",
    };
    let mut files = vec![
        (format!("{name}.test"), fill(TEST)),
        (
            format!("{name}.toml"),
            fill(TOML)
                .replace("DEADLINE", deadline)
                .replace("MEMORY\n", memory),
        ),
        (".gitignore".into(), GITIGNORE.into()),
    ];
    let wit = ("wit/camp-extension.wit".to_string(), WIT.to_string());
    match lang {
        Lang::Rust => {
            files.push((
                "Cargo.toml".into(),
                fill(RUST_CARGO).replace("{{sdk}}", &sdk.display().to_string()),
            ));
            files.push(("src/lib.rs".into(), fill(RUST_LIB)));
        }
        Lang::Python => {
            files.push(wit);
            files.push(("app.py".into(), fill(PYTHON_APP)));
            files.push(("camp_plugin.py".into(), SDK_PYTHON.into()));
        }
        Lang::Js => {
            files.push(wit);
            files.push(("index.js".into(), fill(JS_INDEX)));
            files.push(("camp-plugin.js".into(), SDK_JS.into()));
            files.push(("package.json".into(), fill(JS_PACKAGE)));
        }
        Lang::C => {
            files.push(wit);
            files.push((format!("{name}.c"), fill(C_MAIN)));
            files.push(("camp_plugin.h".into(), SDK_C_H.into()));
            files.push(("camp_plugin.c".into(), SDK_C_C.into()));
        }
    }
    files
        .into_iter()
        .map(|(p, c)| (PathBuf::from(p), c))
        .collect()
}
