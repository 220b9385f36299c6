//! Building plugins written in Python, JavaScript and C into components.
//! Shared by `camp-artifacts`' build script (the example plugins) and the
//! `camp-plugin build` command (an author's project), so both use the same
//! tools, flags and error messages. A missing tool is an error naming the
//! command that installs it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the contract, the SDKs and the tools are.
pub struct Toolchain {
    /// A folder holding `camp-extension.wit`.
    pub wit: PathBuf,
    /// The folder holding `camp_plugin.py`.
    pub sdk_python: PathBuf,
    /// `camp-plugin.js`.
    pub sdk_js: PathBuf,
    /// The folder holding `camp_plugin.h` and `camp_plugin.c`.
    pub sdk_c: PathBuf,
    /// The `componentize-js` executable (from `node_modules/.bin`).
    pub componentize_js: PathBuf,
    /// The command that installs `componentize_js`.
    pub js_install: &'static str,
    /// The command that installs componentize-py.
    pub python_install: &'static str,
}

/// The Debian packages of the C toolchain.
pub const C_INSTALL: &str = "apt-get install clang lld wasi-libc libclang-rt-dev-wasm32";

/// Runs `cmd`; an error carries its output (and `hint` if it cannot start).
fn run(cmd: &mut Command, what: &str, hint: &str) -> Result<(), String> {
    let output = cmd.output().map_err(|e| {
        format!(
            "{what}: cannot run {:?}: {e}; install it with `{hint}`",
            cmd.get_program()
        )
    })?;
    if !output.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

/// An error naming the install command when `program --version` does not
/// run.
fn require(program: &Path, install: &str) -> Result<(), String> {
    let ok = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} was not found; install it with `{install}`",
            program.display()
        ))
    }
}

/// Builds the Python guest in `dir` (its module `app`, with a class
/// `WitWorld`) into `wasm` with componentize-py (`COMPONENTIZE_PY`
/// overrides the program).
pub fn build_python(tc: &Toolchain, dir: &Path, wasm: &Path, work: &Path) -> Result<(), String> {
    let tool = PathBuf::from(
        std::env::var_os("COMPONENTIZE_PY").unwrap_or_else(|| "componentize-py".into()),
    );
    require(&tool, tc.python_install)?;
    fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
    if let Some(parent) = wasm.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let mut cmd = Command::new(&tool);
    cmd.arg("-d")
        .arg(&tc.wit)
        .args(["-w", "plugin", "componentize", "app", "-p"])
        .arg(dir);
    if tc.sdk_python != dir {
        cmd.arg("-p").arg(&tc.sdk_python);
    }
    cmd.arg("-o")
        .arg(wasm)
        // No __pycache__ in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(work);
    run(&mut cmd, "componentize-py", tc.python_install)
}

/// Builds the JavaScript guest `dir/index.js` into `wasm` with
/// componentize-js. The sources and the SDK are staged side by side in
/// `work` (the guest imports `./camp-plugin.js`).
pub fn build_js(tc: &Toolchain, dir: &Path, wasm: &Path, work: &Path) -> Result<(), String> {
    if !tc.componentize_js.exists() {
        return Err(format!(
            "componentize-js was not found at {}; install it with `{}`",
            tc.componentize_js.display(),
            tc.js_install
        ));
    }
    require(Path::new("node"), "apt-get install nodejs (Node 20)")?;
    let io = |e: std::io::Error| format!("staging the JavaScript sources: {e}");
    let _ = fs::remove_dir_all(work);
    fs::create_dir_all(work).map_err(io)?;
    for entry in fs::read_dir(dir).map_err(io)?.flatten() {
        if entry.path().extension().is_some_and(|e| e == "js") {
            fs::copy(entry.path(), work.join(entry.file_name())).map_err(io)?;
        }
    }
    fs::copy(&tc.sdk_js, work.join("camp-plugin.js")).map_err(io)?;
    if let Some(parent) = wasm.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    run(
        Command::new(&tc.componentize_js)
            .arg(work.join("index.js"))
            .arg("--wit")
            .arg(&tc.wit)
            .args(["--world-name", "plugin"])
            // Without these the component imports wasi:http, which the
            // host does not offer.
            .args(["--disable", "http", "fetch-event"])
            .arg("-o")
            .arg(wasm)
            .current_dir(work),
        "componentize-js",
        tc.js_install,
    )
}

/// Generates the C bindings of the plugin world into `dir`.
fn c_bindings(tc: &Toolchain, dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve
        .push_file(tc.wit.join("camp-extension.wit"))
        .map_err(|e| format!("parsing the WIT: {e:#}"))?;
    let world = resolve
        .select_world(&[package], Some("plugin"))
        .map_err(|e| format!("the plugin world: {e:#}"))?;
    let opts = wit_bindgen_c::Opts {
        // The C SDK relies on this: every borrowed session handle is
        // dropped when an export returns ("borrow handles still remain"
        // traps otherwise).
        autodrop_borrows: wit_bindgen_c::Enabled::Yes,
        ..Default::default()
    };
    let mut files = wit_bindgen_core::Files::default();
    opts.build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| format!("wit-bindgen-c: {e:#}"))?;
    for (name, contents) in files.iter() {
        fs::write(dir.join(name), contents).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// Builds the C guest in `dir` (its `*.c` files) into `wasm`: bindings
/// generated by the wit-bindgen-c library, clang to a wasm32-wasi reactor
/// module against wasi-libc (`WASI_SYSROOT`, default `/usr` as Debian
/// installs it; `CAMP_CLANG` overrides the compiler), then a component by
/// the wit-component library with the WASI preview1 reactor adapter.
pub fn build_c(tc: &Toolchain, dir: &Path, wasm: &Path, work: &Path) -> Result<(), String> {
    let clang = PathBuf::from(std::env::var_os("CAMP_CLANG").unwrap_or_else(|| "clang".into()));
    require(&clang, C_INSTALL)?;
    let sysroot = std::env::var_os("WASI_SYSROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr"));
    if !sysroot.join("include/wasm32-wasi/stdlib.h").exists()
        && !sysroot.join("include/stdlib.h").exists()
    {
        return Err(format!(
            "wasi-libc was not found under {} (set WASI_SYSROOT to a wasi-sdk sysroot, \
             or install it with `{C_INSTALL}`)",
            sysroot.display()
        ));
    }
    let bindings = work.join("bindings");
    c_bindings(tc, &bindings)?;
    let core = work.join("core.wasm");
    let mut sources: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "c")
                && p.file_name().is_some_and(|n| n != "camp_plugin.c")
        })
        .collect();
    sources.sort();
    let mut cmd = Command::new(&clang);
    cmd.arg("--target=wasm32-wasi")
        .arg(format!("--sysroot={}", sysroot.display()))
        .args(["-mexec-model=reactor", "-Os", "-Wall", "-Werror"])
        .args(["-Wno-unused-parameter", "-Wno-unused-function"])
        .arg("-I")
        .arg(&bindings)
        .arg("-I")
        .arg(&tc.sdk_c)
        .arg("-Wl,--strip-debug")
        .arg("-o")
        .arg(&core)
        .args(&sources)
        .arg(tc.sdk_c.join("camp_plugin.c"))
        .arg(bindings.join("plugin.c"))
        .arg(bindings.join("plugin_component_type.o"));
    run(&mut cmd, "clang", C_INSTALL)?;
    let module = fs::read(&core).map_err(|e| format!("{}: {e}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .and_then(|e| {
            e.adapter(
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|e| e.encode())
        .map_err(|e| format!("making a component of {}: {e:#}", core.display()))?;
    if let Some(parent) = wasm.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    fs::write(wasm, component).map_err(|e| format!("{}: {e}", wasm.display()))
}
