//! Paths of camp-server's guest components, built by this crate's build
//! script for `wasm32-wasip2`: the example plugins of `plugins/` and the
//! test guests of `tests/guests/`. A dev-dependency of the server only.
//!
//! ```ignore
//! let bytes = std::fs::read(camp_artifacts::PROBE)?;
//! ```

use std::io;
use std::path::Path;

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

/// Copies the example plugins (`NAME.wasm` and their `NAME.toml`) into
/// `dir`, creating it. Each file is written to a hidden temporary name and
/// renamed, and only when its content changed, so a server watching `dir`
/// sees one atomic change per file, or none.
pub fn install_examples(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, wasm, toml) in EXAMPLES {
        copy_if_changed(Path::new(wasm), &dir.join(format!("{name}.wasm")))?;
        if let Some(toml) = toml {
            copy_if_changed(Path::new(toml), &dir.join(format!("{name}.toml")))?;
        }
    }
    Ok(())
}

/// Copies `from` to `to` through a hidden temporary file and a rename,
/// only when the content differs.
fn copy_if_changed(from: &Path, to: &Path) -> io::Result<()> {
    let data = std::fs::read(from)?;
    if std::fs::read(to).is_ok_and(|old| old == data) {
        return Ok(());
    }
    let file_name = to.file_name().expect("a file name").to_string_lossy();
    let tmp = to.with_file_name(format!(".{file_name}.tmp"));
    std::fs::write(&tmp, &data)?;
    std::fs::rename(&tmp, to)
}
