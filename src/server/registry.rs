//! The live sessions of a server, by session id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::session::Session;

/// Session ids in use. An id is reserved when its upgrade is accepted (so a
/// second connection with the same id is refused even during the first
/// one's handshake) and released when its connection ends.
#[derive(Debug, Default, Clone)]
pub(crate) struct Registry {
    live: Arc<Mutex<HashMap<u64, Option<Session>>>>,
}

/// Holds a session id; dropping it releases the id.
#[derive(Debug)]
pub(crate) struct Reservation {
    registry: Registry,
    sid: u64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Option<Session>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `sid`, unless a live session already has it.
    pub(crate) fn reserve(&self, sid: u64) -> Option<Reservation> {
        let mut live = self.lock();
        if live.contains_key(&sid) {
            return None;
        }
        live.insert(sid, None);
        Some(Reservation {
            registry: self.clone(),
            sid,
        })
    }

    /// All sessions that finished their handshake and are still open.
    pub(crate) fn sessions(&self) -> Vec<Session> {
        self.lock().values().flatten().cloned().collect()
    }

    /// The open session with this id.
    pub(crate) fn get(&self, sid: u64) -> Option<Session> {
        self.lock().get(&sid).cloned().flatten()
    }
}

impl Reservation {
    /// The reserved id.
    pub(crate) fn sid(&self) -> u64 {
        self.sid
    }

    /// Records the session once its handshake is done.
    pub(crate) fn attach(&self, session: Session) {
        self.registry.lock().insert(self.sid, Some(session));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.sid);
    }
}
