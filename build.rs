//! Builds the guest plugins (WebAssembly components) that the server ships
//! as examples and that the tests load, the way wasmtime's `test-programs`
//! crate does: a child `cargo build --target wasm32-wasip2` per guest
//! workspace, into its own target directory so it never waits on the lock
//! that the outer build holds.
//!
//! Outputs:
//! - `<target>/plugins/{logger,filter,rpc}.wasm` (+ their example `.toml`),
//!   the folder the README's run command uses;
//! - compile-time env constants for the tests: `CAMP_PLUGIN_LOGGER`,
//!   `CAMP_PLUGIN_FILTER`, `CAMP_PLUGIN_RPC`, `CAMP_GUEST_PROBE`,
//!   `CAMP_GUEST_WRONG_EXPORTS`, `CAMP_GUEST_PASSTHROUGH` (absolute `.wasm`
//!   paths) and
//!   `CAMP_PLUGINS_DIR`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest target triple.
const TARGET: &str = "wasm32-wasip2";

/// Example plugins: (crate, env constant).
const PLUGINS: [(&str, &str); 3] = [
    ("logger", "CAMP_PLUGIN_LOGGER"),
    ("filter", "CAMP_PLUGIN_FILTER"),
    ("rpc", "CAMP_PLUGIN_RPC"),
];

/// Test guests: (crate, env constant).
const GUESTS: [(&str, &str); 3] = [
    ("probe", "CAMP_GUEST_PROBE"),
    ("wrong-exports", "CAMP_GUEST_WRONG_EXPORTS"),
    ("passthrough", "CAMP_GUEST_PASSTHROUGH"),
];

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

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    for dir in ["wit", "plugins", "tests/guests"] {
        println!("cargo:rerun-if-changed={dir}");
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR = <target>/<profile>/build/<pkg>-<hash>/out
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .expect("OUT_DIR is <target>/<profile>/build/<pkg>/out")
        .to_path_buf();
    let guest_target = target_dir.join("guests");

    check_wasm_target();

    build_workspace(&manifest_dir.join("plugins"), &guest_target);
    build_workspace(&manifest_dir.join("tests/guests"), &guest_target);

    let artifacts = guest_target.join(TARGET).join("release");
    let plugins_dir = target_dir.join("plugins");
    fs::create_dir_all(&plugins_dir).expect("create <target>/plugins");
    for (name, constant) in PLUGINS {
        let built = artifact(&artifacts, name);
        let dest = plugins_dir.join(format!("{name}.wasm"));
        copy_if_changed(&built, &dest);
        let example_config = manifest_dir
            .join("plugins")
            .join(name)
            .join(format!("{name}.toml"));
        if example_config.exists() {
            copy_if_changed(&example_config, &plugins_dir.join(format!("{name}.toml")));
        }
        println!("cargo:rustc-env={constant}={}", built.display());
    }
    for (name, constant) in GUESTS {
        println!(
            "cargo:rustc-env={constant}={}",
            artifact(&artifacts, name).display()
        );
    }
    println!("cargo:rustc-env=CAMP_PLUGINS_DIR={}", plugins_dir.display());
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

/// Copies `from` to `to` through a hidden temporary file and a rename, only
/// when the content differs, so a server watching `to`'s folder sees one
/// atomic change (or none).
fn copy_if_changed(from: &Path, to: &Path) {
    let data = fs::read(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    if fs::read(to).is_ok_and(|old| old == data) {
        return;
    }
    let file_name = to.file_name().expect("file name").to_string_lossy();
    let tmp = to.with_file_name(format!(".{file_name}.tmp"));
    fs::write(&tmp, &data).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, to).unwrap_or_else(|e| panic!("rename to {}: {e}", to.display()));
}
