//! `camp-plugin`: the plugin author's command.
//!
//! - `new --lang rust|python|js|c NAME [--dir PARENT]`: a working project
//!   (SDK, WIT, an example hook, `NAME.toml`, a `NAME.test` script);
//! - `build [DIR]`: builds the project in DIR into `DIR/NAME.wasm` with the
//!   language's toolchain (the same code and flags as the example plugins);
//! - `check FILE [--config NAME.toml]`: the trial the server runs before a
//!   version goes live (compile, link against the real host, `on-register`
//!   with the configuration, one call of each declared hook on a synthetic
//!   session);
//! - `test FILE [SCRIPT] [--config NAME.toml]`: scripted messages and the
//!   verdicts and replies they must produce, against in-memory sessions (no
//!   server).
//!
//! Exit status: 0 success; 1 the build, check or a test failed; 2 usage.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use camp_server::extension::wasm::{HostOptions, PluginConfig, PluginHost, WasmPlugin};
use camp_server::extension::{Extension, Hook, Message, Verdict};
use camp_server::session::{Outbox, Outgoing, Session};
use clap::{Parser, Subcommand, ValueEnum};

#[path = "../../../artifacts/guest_build.rs"]
#[allow(dead_code)]
mod guest_build;

mod templates;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "camp-plugin",
    version,
    about = "Create, build, check and test camp-server plugins",
    after_help = "Exit status: 0 ok, 1 build/check/test failed, 2 usage."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// A plugin language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Lang {
    /// Rust, with the camp-plugin crate.
    Rust,
    /// Python, with componentize-py.
    Python,
    /// JavaScript, with componentize-js.
    Js,
    /// C, with clang and wasi-libc.
    C,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a working plugin project NAME (in --dir, default here).
    New {
        /// The language.
        #[arg(long)]
        lang: Lang,
        /// The plugin's name: the folder, NAME.wasm, NAME.toml.
        name: String,
        /// Where to create the project folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The Rust SDK (plugins/sdk of camp-server) for a Rust project's
        /// path dependency.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build the project in DIR into DIR/NAME.wasm.
    Build {
        /// The project folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run the host's trial on a component: compile, link, on-register,
    /// one call of each declared hook on a synthetic session.
    Check {
        /// The component (.wasm).
        file: PathBuf,
        /// The plugin's settings (default: NAME.toml beside FILE, if any).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a test script against a component, on in-memory sessions.
    Test {
        /// The component (.wasm).
        file: PathBuf,
        /// The script (default: NAME.test beside FILE).
        script: Option<PathBuf>,
        /// The plugin's settings (default: NAME.toml beside FILE, if any).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::New {
            lang,
            name,
            dir,
            sdk,
        } => new(lang, &name, &dir, sdk),
        Cmd::Build { dir } => build(&dir).map(|wasm| println!("built {}", wasm.display())),
        Cmd::Check { file, config } => check(&file, config.as_deref()).map(drop),
        Cmd::Test {
            file,
            script,
            config,
        } => test(&file, script.as_deref(), config.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("camp-plugin: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A valid plugin name: it becomes a file name and a crate name.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// `new`: writes the project.
fn new(lang: Lang, name: &str, parent: &Path, sdk: Option<PathBuf>) -> Result<(), String> {
    if !valid_name(name) {
        return Err(format!(
            "{name:?} is not a plugin name: lower-case letters, digits, - and _, starting with a letter"
        ));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(format!("{} already exists", dir.display()));
    }
    let sdk = sdk.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/sdk"));
    if lang == Lang::Rust && !sdk.join("Cargo.toml").exists() {
        return Err(format!(
            "the Rust SDK is not at {}: pass --sdk with the path of camp-server's plugins/sdk \
             (or edit the generated Cargo.toml to a git dependency)",
            sdk.display()
        ));
    }
    let sdk = sdk.canonicalize().unwrap_or(sdk);
    let files = templates::files(lang, name, &sdk);
    for (path, contents) in &files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap())
            .and_then(|()| std::fs::write(&path, contents))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!(
        "created {} ({:?}); next: camp-plugin build {0}, then camp-plugin check {0}/{name}.wasm \
         and camp-plugin test {0}/{name}.wasm",
        dir.display(),
        lang
    );
    Ok(())
}

/// The language of the project in `dir`.
fn detect(dir: &Path) -> Result<Lang, String> {
    let has = |f: &str| dir.join(f).exists();
    if has("Cargo.toml") {
        Ok(Lang::Rust)
    } else if has("app.py") {
        Ok(Lang::Python)
    } else if has("index.js") {
        Ok(Lang::Js)
    } else if std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "c"))
    {
        Ok(Lang::C)
    } else {
        Err(format!(
            "{}: no Cargo.toml, app.py, index.js or *.c: not a plugin project",
            dir.display()
        ))
    }
}

/// `build`: the project's component, `DIR/NAME.wasm` (NAME: the folder).
fn build(dir: &Path) -> Result<PathBuf, String> {
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or("the project folder has no name")?;
    let wasm = dir.join(format!("{name}.wasm"));
    let work = dir.join("target").join("camp-plugin");
    let tc = guest_build::Toolchain {
        wit: dir.join("wit"),
        sdk_python: dir.clone(),
        sdk_js: dir.join("camp-plugin.js"),
        sdk_c: dir.clone(),
        componentize_js: std::env::var_os("CAMP_COMPONENTIZE_JS")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("node_modules/.bin/componentize-js")),
        js_install: "npm install (in the project folder)",
        python_install: "pip install componentize-py==0.25.1",
    };
    match detect(&dir)? {
        Lang::Rust => build_rust(&dir, &name, &wasm)?,
        Lang::Python => guest_build::build_python(&tc, &dir, &wasm, &work)?,
        Lang::Js => {
            if !tc.componentize_js.exists() && dir.join("package.json").exists() {
                eprintln!("camp-plugin: installing the pinned componentize-js (npm install)");
                let status = Command::new("npm")
                    .args(["install", "--no-audit", "--no-fund"])
                    .current_dir(&dir)
                    .status()
                    .map_err(|e| format!("npm: {e} (install Node 20 and npm)"))?;
                if !status.success() {
                    return Err(format!("npm install failed ({status})"));
                }
            }
            guest_build::build_js(&tc, &dir, &wasm, &work)?
        }
        Lang::C => guest_build::build_c(&tc, &dir, &wasm, &work)?,
    }
    Ok(wasm)
}

/// Builds a Rust plugin crate for wasm32-wasip2 and copies its component.
fn build_rust(dir: &Path, name: &str, wasm: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = dir.join("target");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", "wasm32-wasip2"])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .current_dir(dir);
    // Settings of an outer cargo (when run from a build or a test) are not
    // this project's.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" || key.starts_with("RUSTC_") {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.env_remove("RUSTFLAGS");
    let status = cmd.status().map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build failed ({status}); is the target installed? `rustup target add wasm32-wasip2`"
        ));
    }
    let built = target
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::copy(&built, wasm)
        .map(drop)
        .map_err(|e| format!("{}: {e}", built.display()))
}

/// Runs a future on a small runtime.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

/// `check`: loads `file` the way the server does (the trial included).
fn check(file: &Path, config: Option<&Path>) -> Result<std::sync::Arc<WasmPlugin>, String> {
    // CAMP_PLUGIN_CACHE: a folder for compiled artifacts, so a second
    // check or test of the same bytes skips compiling (big guests).
    let host = PluginHost::new(HostOptions {
        cache_dir: std::env::var_os("CAMP_PLUGIN_CACHE").map(PathBuf::from),
        ..HostOptions::default()
    })
    .map_err(|e| e.to_string())?;
    let name = camp_server::extension::wasm::plugin_name(file);
    let config_file = config
        .map(Path::to_path_buf)
        .unwrap_or_else(|| file.with_extension("toml"));
    let config = PluginConfig::load(&config_file, host.defaults()).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let (plugin, timings) = host
        .load(&name, &bytes, config)
        .map_err(|e| format!("check failed: {e}"))?;
    let hooks: Vec<&str> = plugin.hooks().iter().map(Hook::name).collect();
    let meta = plugin.meta();
    println!(
        "ok: {name} ({:?}), {} KiB, hooks [{}]{}{}; compiled in {:.0} ms, instantiated, \
         registered and trial-called in {:.0} ms",
        meta.guest_name,
        bytes.len() / 1024,
        hooks.join(", "),
        if meta.session_opened {
            ", session-opened"
        } else {
            ""
        },
        if meta.session_closed {
            ", session-closed"
        } else {
            ""
        },
        timings.compile.as_secs_f64() * 1e3,
        timings.instantiate.as_secs_f64() * 1e3,
    );
    Ok(plugin)
}

/// One script line's expectation for a hook call.
#[derive(Debug, PartialEq)]
enum Expect {
    /// Passed unchanged.
    Pass,
    /// Dropped.
    Drop,
    /// Passed as this message.
    Replace(Message),
    /// The call failed (trap, time budget, limit).
    Fail,
    /// Any other verdict (never expected by a script).
    Other(String),
}

/// The hook a script word names.
fn hook_of(word: &str) -> Option<Hook> {
    Some(match word {
        "receive-utf8" => Hook::OnReceiveUtf8,
        "receive-binary" => Hook::OnReceiveBinary,
        "receive-error" => Hook::OnReceiveError,
        "send-utf8" => Hook::BeforeSendUtf8,
        "send-binary" => Hook::BeforeSendBinary,
        "send-error" => Hook::BeforeSendError,
        _ => return None,
    })
}

/// A payload of `hook`'s kind from script text (hex for binary).
fn payload(hook: Hook, text: &str) -> Result<Message, String> {
    Ok(match hook {
        Hook::OnReceiveUtf8 | Hook::BeforeSendUtf8 => Message::Utf8(text.into()),
        Hook::OnReceiveError | Hook::BeforeSendError => Message::Error(text.into()),
        Hook::OnReceiveBinary | Hook::BeforeSendBinary => {
            let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            if !digits.len().is_multiple_of(2) {
                return Err(format!("{text:?}: binary payloads are hex digits"));
            }
            let bytes = (0..digits.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&digits[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| format!("{text:?}: binary payloads are hex digits"))?;
            Message::Binary(bytes.into())
        }
    })
}

/// The sessions of a test run, by id.
struct Sessions(Vec<(u64, Session, Outbox)>);

impl Sessions {
    /// Session `id`, created on first use.
    fn get(&mut self, id: u64) -> &mut (u64, Session, Outbox) {
        if let Some(i) = self.0.iter().position(|s| s.0 == id) {
            return &mut self.0[i];
        }
        let (session, outbox) = Session::detached(id);
        self.0.push((id, session, outbox));
        self.0.last_mut().unwrap()
    }
}

/// The next message the plugin sent to a session, if any.
fn next_reply(outbox: &mut Outbox) -> Option<String> {
    loop {
        return match outbox.try_recv()? {
            Outgoing::Message(Message::Utf8(t)) => Some(t),
            Outgoing::Message(Message::Error(t)) => Some(format!("error:{t}")),
            Outgoing::Message(Message::Binary(b)) => Some(format!(
                "binary:{}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            )),
            Outgoing::Close { reason, .. } => Some(format!("close:{reason}")),
            Outgoing::Ping => continue,
        };
    }
}

/// `test`: runs the script; prints one line per check and a summary.
fn test(file: &Path, script: Option<&Path>, config: Option<&Path>) -> Result<(), String> {
    let script_file = script
        .map(Path::to_path_buf)
        .unwrap_or_else(|| file.with_extension("test"));
    let text = std::fs::read_to_string(&script_file)
        .map_err(|e| format!("{}: {e}", script_file.display()))?;
    let plugin = check(file, config)?;
    let (passed, failed) = run_script(&*plugin, &text, &script_file)?;
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        Err(format!("{failed} of {} checks failed", passed + failed))
    } else {
        Ok(())
    }
}

/// Runs a script: `session ID`, `set KEY VALUE`, `store KEY VALUE|-`,
/// `reply TEXT`, `no-reply`, and `HOOK PAYLOAD => pass|drop|fail|replace
/// PAYLOAD` where HOOK is receive-utf8, receive-binary, receive-error,
/// send-utf8, send-binary or send-error (binary payloads in hex). Returns
/// (passed, failed).
fn run_script(plugin: &dyn Extension, text: &str, file: &Path) -> Result<(u64, u64), String> {
    let mut sessions = Sessions(Vec::new());
    let mut current = 1u64;
    let (mut passed, mut failed) = (0u64, 0u64);
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{}:{}", file.display(), n + 1);
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let outcome: Result<(), String> = match word {
            "session" => {
                current = rest
                    .trim()
                    .parse()
                    .map_err(|_| format!("{at}: session takes a number"))?;
                continue;
            }
            "set" => {
                let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                sessions.get(current).1.set(k, v);
                continue;
            }
            "store" => {
                let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                let got = sessions.get(current).1.get(k);
                let want = (v != "-").then(|| v.to_string());
                if got == want {
                    Ok(())
                } else {
                    Err(format!("store {k}: expected {want:?}, got {got:?}"))
                }
            }
            "reply" => match next_reply(&mut sessions.get(current).2) {
                Some(got) if got == rest => Ok(()),
                got => Err(format!("expected the reply {rest:?}, got {got:?}")),
            },
            "no-reply" => match next_reply(&mut sessions.get(current).2) {
                None => Ok(()),
                Some(got) => Err(format!("expected no reply, got {got:?}")),
            },
            hook_word => {
                let hook = hook_of(hook_word)
                    .ok_or_else(|| format!("{at}: unknown command {hook_word:?}"))?;
                let (input, expected) = rest
                    .rsplit_once("=>")
                    .ok_or_else(|| format!("{at}: expected `{hook_word} PAYLOAD => VERDICT`"))?;
                let input = payload(hook, input.trim())?;
                let expected = expected.trim();
                let expect = match expected.split_once(' ').unwrap_or((expected, "")) {
                    ("pass", "") => Expect::Pass,
                    ("drop", "") => Expect::Drop,
                    ("fail", "") => Expect::Fail,
                    ("replace", with) => Expect::Replace(payload(hook, with)?),
                    _ => {
                        return Err(format!(
                            "{at}: a verdict is pass, drop, fail or replace PAYLOAD"
                        ));
                    }
                };
                let session = sessions.get(current).1.clone();
                let mut message = input.clone();
                // Like the pipeline: an undeclared hook is never called.
                let got = if !plugin.hooks().contains(hook) {
                    // Said, so that a script of passes is not mistaken for
                    // a tested plugin (a plugin may declare its hooks from
                    // `log-enabled`, which is false here: no log is written).
                    eprintln!(
                        "  ({at}: the plugin does not declare {hook_word}: not called, counted as pass)"
                    );
                    Expect::Pass
                } else {
                    match block_on(plugin.call(hook, &session, &mut message)) {
                        Ok(Verdict::Drop) => Expect::Drop,
                        Ok(Verdict::Pass) if message == input => Expect::Pass,
                        Ok(Verdict::Pass) => Expect::Replace(message),
                        // A verdict a WebAssembly plugin cannot give (kept
                        // for verdicts the Extension trait may gain).
                        #[allow(unreachable_patterns)]
                        Ok(v) => Expect::Other(format!("{v:?}")),
                        Err(e) => {
                            eprintln!("  ({at}: the call failed: {e})");
                            Expect::Fail
                        }
                    }
                };
                if got == expect {
                    Ok(())
                } else {
                    Err(format!("expected {expect:?}, got {got:?}"))
                }
            }
        };
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("ok   {at}  {line}");
            }
            Err(why) => {
                failed += 1;
                println!("FAIL {at}  {line}\n     {why}");
            }
        }
    }
    Ok((passed, failed))
}
