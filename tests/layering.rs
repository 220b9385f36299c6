//! The crate's modules depend on each other one way, as the README's tour
//! tells it: protocol ← metrics ← session ← extension ← client ← server ←
//! admin, with `transport`, `tls` and `memory` as leaves (they use only
//! `protocol`, or nothing).
//! A `use crate::…` (or any `crate::…` path in code) pointing the other way
//! fails this test, naming the file and the line.

use std::path::{Path, PathBuf};

/// Each layer and the modules it may use.
const LAYERS: &[(&str, &[&str])] = &[
    ("protocol", &[]),
    ("metrics", &["protocol"]),
    ("transport", &["protocol"]),
    ("tls", &[]),
    ("memory", &[]),
    ("session", &["protocol", "metrics", "memory"]),
    ("extension", &["protocol", "metrics", "session", "memory"]),
    (
        "client",
        &[
            "protocol",
            "metrics",
            "session",
            "extension",
            "transport",
            "tls",
        ],
    ),
    (
        "server",
        &[
            "protocol",
            "metrics",
            "session",
            "extension",
            "client",
            "transport",
            "tls",
        ],
    ),
    (
        "admin",
        &[
            "protocol",
            "metrics",
            "session",
            "extension",
            "client",
            "server",
            "transport",
            "tls",
        ],
    ),
];

/// The `.rs` files of module `name` (a file or a folder under `src/`).
fn files(src: &Path, name: &str) -> Vec<PathBuf> {
    let file = src.join(format!("{name}.rs"));
    if file.exists() {
        return vec![file];
    }
    let mut out = Vec::new();
    let mut dirs = vec![src.join(name)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn modules_depend_on_each_other_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (layer, allowed) in LAYERS {
        let paths = files(&src, layer);
        assert!(!paths.is_empty(), "no source for module {layer}");
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for (at, _) in code.match_indices("crate::") {
                    let used: String = code[at + "crate::".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if used != *layer && !allowed.contains(&used.as_str()) {
                        wrong.push(format!(
                            "{}:{}: {layer} uses {used}: {}",
                            path.display(),
                            n + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
