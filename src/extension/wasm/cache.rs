//! Compiled-artifact cache keyed by content hash.
//!
//! Compiling a component with Cranelift takes tens of milliseconds to
//! seconds; loading a precompiled one is a memory map. The cache keeps the
//! compiled [`Component`]s of recently loaded contents in memory (a reload
//! of unchanged bytes, e.g. a config-only change, compiles nothing) and,
//! when given a directory, their precompiled form on disk, so a restart is
//! fast too. Disk entries are named by the SHA-256 of the component's bytes
//! and a hash of the engine's compatibility settings, so a wasmtime upgrade
//! or a different engine configuration never reads a stale artifact.

use std::collections::HashMap;
use std::hash::Hasher;
use std::path::PathBuf;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How many compiled components are kept in memory.
const MEMORY_ENTRIES: usize = 32;

/// Where a component came from, for logs and the admin view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheOutcome {
    /// Already compiled in this process.
    Memory,
    /// Loaded from a precompiled artifact on disk.
    Disk,
    /// Compiled now.
    Compiled,
}

/// The SHA-256 of `bytes` as lowercase hex: a plugin version's identity.
pub fn content_hash(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds a [`std::hash::Hash`] value into SHA-256 (stable across runs,
/// unlike the std hasher's contract).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The folder's permission bits if users other than its owner may write
/// into it.
#[cfg(unix)]
fn writable_by_others(dir: &std::path::Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    Ok((mode & 0o022 != 0).then_some(mode))
}

/// The cache of one engine.
pub struct ArtifactCache {
    /// Directory of precompiled artifacts, if any.
    dir: Option<PathBuf>,
    /// Identifies the engine's compatibility settings in file names.
    engine_tag: String,
    /// Compiled components by content hash, with a use counter for eviction.
    memory: Mutex<HashMap<String, (u64, Component)>>,
    /// Monotonic use counter.
    clock: std::sync::atomic::AtomicU64,
}

impl ArtifactCache {
    /// A cache for `engine`, persisting to `dir` if given (created if
    /// missing). The directory must be private to the server: its files are
    /// loaded as native code.
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> std::io::Result<ArtifactCache> {
        if let Some(dir) = &dir {
            // Folders created here are private (0700): their files are
            // loaded as native code.
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir)?;
            // An existing folder keeps its mode: say so if others may write
            // into it (whoever writes there runs code in this process).
            #[cfg(unix)]
            {
                if let Some(mode) = writable_by_others(dir)? {
                    tracing::warn!(
                        dir = %dir.display(),
                        mode = format!("{mode:o}"),
                        "the compiled-plugin cache can be written by other users, and what it \
                         holds is loaded as native code: make it private (chmod 700) or choose \
                         another plugin_cache"
                    );
                }
            }
        }
        let mut hasher = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let engine_tag = format!("{:016x}", hasher.finish());
        Ok(ArtifactCache {
            dir,
            engine_tag,
            memory: Mutex::new(HashMap::new()),
            clock: Default::default(),
        })
    }

    /// The compiled component for `bytes` (whose hash is `hash`), from
    /// memory, from disk, or compiled now. Call it off the async runtime.
    pub fn get(
        &self,
        engine: &Engine,
        hash: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let tick = self
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some((used, component)) = self.memory().get_mut(hash) {
            *used = tick;
            return Ok((component.clone(), CacheOutcome::Memory));
        }
        let (component, outcome) = self.load_or_compile(engine, hash, bytes)?;
        let mut memory = self.memory();
        if memory.len() >= MEMORY_ENTRIES
            && let Some(oldest) = memory
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| k.clone())
        {
            memory.remove(&oldest);
        }
        memory.insert(hash.to_string(), (tick, component.clone()));
        Ok((component, outcome))
    }

    /// The in-memory map (a poisoned lock is still usable: entries are
    /// only ever inserted whole).
    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Component)>> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Disk lookup, else compile (and store on disk).
    fn load_or_compile(
        &self,
        engine: &Engine,
        hash: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(dir) = &self.dir else {
            let component = Component::new(engine, bytes)?;
            // Compiling a big guest (a Python or JavaScript interpreter,
            // 12-18 MB) allocates a few hundred MB on Cranelift's threads.
            crate::memory::release_freed_heap();
            return Ok((component, CacheOutcome::Compiled));
        };
        let path = dir.join(format!("{hash}-{}.cwasm", self.engine_tag));
        if path.exists() {
            // SAFETY: the file was written by `precompile_component` of an
            // engine with the same compatibility hash into the server's
            // private cache directory; wasmtime also checks its header.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Disk)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "discarding unusable cached artifact: {e}");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        crate::memory::release_freed_heap();
        let tmp = dir.join(format!(".{hash}.{}.tmp", std::process::id()));
        match std::fs::write(&tmp, &compiled).and_then(|()| std::fs::rename(&tmp, &path)) {
            Ok(()) => {
                // Use the artifact mapped from the file rather than from
                // this heap copy: its code and its initial memory images
                // are then file-backed pages that every instance shares
                // copy-on-write (what keeps a 20 MB Python or JavaScript
                // guest's instances cheap), and the copy is freed.
                drop(compiled);
                // SAFETY: the file was written just now from this engine's
                // `precompile_component`, into the private cache folder.
                return unsafe { Component::deserialize_file(engine, &path) }
                    .map(|component| (component, CacheOutcome::Compiled));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(dir = %dir.display(), "cannot write compiled artifact: {e}");
            }
        }
        // SAFETY: `compiled` was produced just now by this engine.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((component, CacheOutcome::Compiled))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_cache_folder_others_may_write_into_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let set = |mode| {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set(0o700);
        assert_eq!(writable_by_others(dir.path()).unwrap(), None);
        set(0o755);
        assert_eq!(writable_by_others(dir.path()).unwrap(), None);
        set(0o775);
        assert_eq!(writable_by_others(dir.path()).unwrap(), Some(0o775));
        set(0o777);
        assert_eq!(writable_by_others(dir.path()).unwrap(), Some(0o777));
    }
}
