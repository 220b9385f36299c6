//! Builds every guest crate of the two guest workspaces (`plugins/`, the
//! examples, and `tests/guests/`, the test guests) with a child
//! `cargo build --release --target wasm32-wasip2` into this build's
//! `OUT_DIR` (its own target directory: the child never waits on the lock
//! the outer build holds), and writes `OUT_DIR/artifacts.rs`:
//!
//! - one `pub const NAME: &str` per guest: the absolute path of its
//!   `.wasm` (crate `wrong-exports` → `WRONG_EXPORTS`), and for an example
//!   plugin with a `NAME.toml` beside its crate, `NAME_TOML`;
//! - `EXAMPLES`: the example plugins' names;
//! - `foreach_guest!(mac)`: calls `mac!(name)` for every guest, so the
//!   test suite can require a test named after each guest.
//!
//! Hand-written component text files (`tests/guests/*.wat`) are guests too:
//! wasmtime compiles the text directly, so they are listed, not built.
//!
//! Guests in other languages are folders of `plugins/` without a
//! `Cargo.toml` (`sdk-*` folders are the SDKs, not guests):
//!
//! - `app.py`: Python, built with `componentize-py` (PyPI, pinned in
//!   `artifacts/requirements.txt`), with `plugins/sdk-python` on the path;
//! - `index.js`: JavaScript, built with `componentize-js` (npm, pinned in
//!   `artifacts/package.json`, installed by `npm ci --prefix artifacts`),
//!   with `plugins/sdk-js/camp-plugin.js` copied beside it;
//! - `*.c`: C, compiled by `clang --target=wasm32-wasi` against wasi-libc
//!   with `plugins/sdk-c` and bindings generated here by the `wit-bindgen-c`
//!   library, then made a component by the `wit-component` library with the
//!   WASI preview1 reactor adapter (crate
//!   `wasi-preview1-component-adapter-provider`).
//!
//! A missing toolchain fails the build with the command that installs it.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "guest_build.rs"]
mod guest_build;

/// The guest target triple.
const TARGET: &str = "wasm32-wasip2";

/// Environment variables of the outer build that must not leak into the
/// child build (they describe the host build, not the guest one).
const SCRUB: [&str; 10] = [
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
    "CARGO_PRIMARY_PACKAGE",
];

/// One guest: its crate (or file) name and where its component is.
struct Guest {
    name: String,
    wasm: PathBuf,
    toml: Option<PathBuf>,
    example: bool,
}

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("the repository").to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    for dir in ["wit", "plugins", "tests/guests"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    check_wasm_target();

    let guest_target = out_dir.join("guests");
    let built = guest_target.join(TARGET).join("release");
    let mut guests = Vec::new();
    for (workspace, example) in [("plugins", true), ("tests/guests", false)] {
        let workspace = root.join(workspace);
        build_workspace(&workspace, &guest_target);
        for member in components(&workspace) {
            let toml = workspace.join(&member).join(format!("{member}.toml"));
            guests.push(Guest {
                wasm: artifact(&built, &member),
                toml: (example && toml.exists()).then_some(toml),
                name: member,
                example,
            });
        }
    }
    for entry in fs::read_dir(root.join("tests/guests")).expect("tests/guests") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "wat") {
            let name = path
                .file_stem()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            guests.push(Guest {
                name,
                wasm: path,
                toml: None,
                example: false,
            });
        }
    }
    check_vendored_wit(&root);
    let toolchain = guest_build::Toolchain {
        wit: root.join("plugins/sdk/wit"),
        sdk_python: root.join("plugins/sdk-python"),
        sdk_js: root.join("plugins/sdk-js/camp-plugin.js"),
        sdk_c: root.join("plugins/sdk-c"),
        componentize_js: manifest_dir.join("node_modules/.bin/componentize-js"),
        js_install: "npm ci --prefix artifacts",
        python_install: "pip install -r artifacts/requirements.txt",
    };
    for (name, lang, dir) in foreign_guests(&root.join("plugins")) {
        let work = out_dir.join("foreign").join(&name);
        let wasm = out_dir.join("foreign").join(format!("{name}.wasm"));
        let built = match lang {
            Lang::Python => guest_build::build_python(&toolchain, &dir, &wasm, &work),
            Lang::Js => guest_build::build_js(&toolchain, &dir, &wasm, &work),
            Lang::C => guest_build::build_c(&toolchain, &dir, &wasm, &work),
        };
        if let Err(e) = built {
            panic!("building the {name} plugin: {e}");
        }
        guests.push(Guest {
            name,
            wasm,
            toml: None,
            example: false,
        });
    }
    guests.sort_by(|a, b| a.name.cmp(&b.name));

    let mut code = String::new();
    for guest in &guests {
        let constant = guest.name.replace('-', "_").to_uppercase();
        let kind = if guest.example {
            "example plugin"
        } else {
            "test guest"
        };
        writeln!(code, "/// The {kind} `{}`.", guest.name).unwrap();
        writeln!(
            code,
            "pub const {constant}: &str = {:?};",
            guest.wasm.display().to_string()
        )
        .unwrap();
        if let Some(toml) = &guest.toml {
            writeln!(code, "/// The example configuration of `{}`.", guest.name).unwrap();
            writeln!(
                code,
                "pub const {constant}_TOML: &str = {:?};",
                toml.display().to_string()
            )
            .unwrap();
        }
    }
    let examples: Vec<String> = guests
        .iter()
        .filter(|g| g.example)
        .map(|g| {
            format!(
                "({:?}, {}, {})",
                g.name,
                g.name.replace('-', "_").to_uppercase(),
                match &g.toml {
                    Some(_) => format!("Some({}_TOML)", g.name.replace('-', "_").to_uppercase()),
                    None => "None".into(),
                }
            )
        })
        .collect();
    writeln!(
        code,
        "/// The example plugins: name, `.wasm`, example `.toml`.\n\
         pub const EXAMPLES: &[(&str, &str, Option<&str>)] = &[{}];",
        examples.join(", ")
    )
    .unwrap();
    let calls: String = guests
        .iter()
        .map(|g| format!("$mac!({});", g.name.replace('-', "_")))
        .collect();
    writeln!(
        code,
        "/// Calls `$mac!(name)` for every guest (examples and test guests).\n\
         #[macro_export]\n\
         macro_rules! foreach_guest {{ ($mac:ident) => {{ {calls} }}; }}"
    )
    .unwrap();
    fs::write(out_dir.join("artifacts.rs"), code).expect("write artifacts.rs");
}

/// The members of a guest workspace that build a component (`cdylib`).
fn components(workspace: &Path) -> Vec<String> {
    let text = fs::read_to_string(workspace.join("Cargo.toml")).expect("workspace Cargo.toml");
    let manifest: toml::Table = text.parse().expect("valid workspace Cargo.toml");
    let members = manifest["workspace"]["members"]
        .as_array()
        .expect("workspace.members");
    members
        .iter()
        .map(|m| m.as_str().expect("a member path").to_string())
        .filter(|member| {
            let text = fs::read_to_string(workspace.join(member).join("Cargo.toml"))
                .expect("member Cargo.toml");
            let manifest: toml::Table = text.parse().expect("valid member Cargo.toml");
            manifest
                .get("lib")
                .and_then(|lib| lib.get("crate-type"))
                .and_then(|t| t.as_array())
                .is_some_and(|types| types.iter().any(|t| t.as_str() == Some("cdylib")))
        })
        .collect()
}

/// The `.wasm` a guest crate builds to (cargo turns `-` into `_`).
fn artifact(dir: &Path, crate_name: &str) -> PathBuf {
    let path = dir.join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(
        path.exists(),
        "guest build did not produce {}",
        path.display()
    );
    path
}

/// Fails with a clear message when the guest target's standard library is
/// not installed.
fn check_wasm_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .expect("run rustc --print target-libdir");
    let libdir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let installed = output.status.success()
        && fs::read_dir(&libdir)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("libstd"))
            })
            .unwrap_or(false);
    if !installed {
        panic!(
            "the {TARGET} target is not installed for this toolchain; the plugins \
             cannot be built. Install it with `rustup target add {TARGET}` \
             (rust-toolchain.toml lists it, so a rustup-managed toolchain adds it \
             automatically)."
        );
    }
}

/// Runs `cargo build --release --target wasm32-wasip2` in a guest workspace.
fn build_workspace(workspace: &Path, target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg(TARGET)
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace);
    for var in SCRUB {
        cmd.env_remove(var);
    }
    // Settings for the outer profile (e.g. CARGO_PROFILE_DEV_*) and target
    // must not change the guests' release build either.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PROFILE_") || key.starts_with("CARGO_TARGET_") {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("failed to run cargo for {}: {e}", workspace.display()));
    if !status.success() {
        panic!(
            "building the guest workspace {} failed ({status})",
            workspace.display()
        );
    }
}

/// A language other than Rust that a guest folder is written in.
#[derive(Clone, Copy)]
enum Lang {
    /// `app.py`.
    Python,
    /// `index.js`.
    Js,
    /// `*.c`.
    C,
}

/// The folders of `plugins` that hold a Python, JavaScript or C guest.
fn foreign_guests(plugins: &Path) -> Vec<(String, Lang, PathBuf)> {
    let mut found = Vec::new();
    for entry in fs::read_dir(plugins).expect("plugins/") {
        let dir = entry.expect("a directory entry").path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if !dir.is_dir() || name.starts_with("sdk") || dir.join("Cargo.toml").exists() {
            continue;
        }
        let has_c = fs::read_dir(&dir)
            .expect("a guest folder")
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "c"));
        let lang = if dir.join("app.py").exists() {
            Lang::Python
        } else if dir.join("index.js").exists() {
            Lang::Js
        } else if has_c {
            Lang::C
        } else {
            continue;
        };
        found.push((name, lang, dir));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// The Rust SDK carries its own copy of the WIT (so it builds outside this
/// repository); it must be the contract's current text.
fn check_vendored_wit(root: &Path) {
    let wit = fs::read(root.join("wit/camp-extension.wit")).expect("wit/camp-extension.wit");
    let vendored = root.join("plugins/sdk/wit/camp-extension.wit");
    if fs::read(&vendored).ok().as_deref() != Some(&wit[..]) {
        panic!(
            "{} differs from wit/camp-extension.wit: copy it \
             (`cp wit/camp-extension.wit plugins/sdk/wit/`)",
            vendored.display()
        );
    }
}
