//! `camp-artifacts [DIR]`: installs the example plugins (logger, filter,
//! rpc: `.wasm` and example `.toml`) into DIR (default `target/plugins`),
//! the folder the README's run command gives `camp-server --plugins`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/plugins"));
    match camp_artifacts::install_examples(&dir) {
        Ok(()) => {
            let names: Vec<&str> = camp_artifacts::EXAMPLES.iter().map(|e| e.0).collect();
            println!("example plugins {} in {}", names.join(", "), dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "camp-artifacts: cannot install the example plugins into {}: {e}",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}
