//! Limits at the HTTP-upgrade stage, against clients that never become
//! sessions: how long a client has to send its request, how many
//! connections the server and one address may hold, how large a request
//! head and how many query parameters are read. Each refusal is an HTTP
//! status with a body naming the limit and its config key, counted in
//! `camp_upgrades_refused_total{reason}`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;

use super::{Refusal, ServerBuilder};
use crate::metrics::Metrics;
use crate::session::transaction::TxLimits;

/// Limits on connections before they are sessions. The defaults suit a
/// public server; `[limits]` in the configuration file sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeLimits {
    /// How long a client has for its TLS handshake and for its whole
    /// upgrade request (`limits.upgrade_timeout_ms`, default 10 s): a slow
    /// sender (slowloris) gets 408 then.
    pub request_timeout: Duration,
    /// Connections held at once, sessions and upgrades in progress
    /// (`limits.max_connections`, default 16384); above it, 503.
    pub max_connections: usize,
    /// Connections held at once from one IP address
    /// (`limits.max_connections_per_ip`, default 1024); above it, 429.
    pub max_connections_per_ip: usize,
    /// Largest request head (request line and headers) read
    /// (`limits.max_request_head_bytes`, default 16384); above it, 414
    /// when the request line alone is too long, 431 otherwise.
    pub max_request_head_bytes: usize,
    /// Most query parameters in the upgrade URL
    /// (`limits.max_query_params`, default 64); above it, 414.
    pub max_query_params: usize,
}

impl Default for UpgradeLimits {
    fn default() -> UpgradeLimits {
        UpgradeLimits {
            request_timeout: Duration::from_secs(10),
            max_connections: 16_384,
            max_connections_per_ip: 1024,
            max_request_head_bytes: 16 * 1024,
            max_query_params: 64,
        }
    }
}

impl UpgradeLimits {
    /// Checks the values (every limit at least 1, head at least 1 KiB).
    pub fn validate(&self) -> Result<(), String> {
        if self.request_timeout.is_zero() {
            return Err("upgrade_timeout_ms must be at least 1".into());
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err("max_connections and max_connections_per_ip must be at least 1".into());
        }
        if self.max_request_head_bytes < 1024 {
            return Err("max_request_head_bytes must be at least 1024".into());
        }
        if self.max_query_params < 2 {
            return Err(
                "max_query_params must be at least 2 (authorization and x-camp-sid)".into(),
            );
        }
        Ok(())
    }
}

impl ServerBuilder {
    /// Limits on connections before they are sessions (see
    /// [`UpgradeLimits`]).
    pub fn upgrade_limits(mut self, limits: UpgradeLimits) -> Self {
        self.upgrade_limits = limits;
        self
    }

    /// Transaction limits of every session (see [`TxLimits`]); the spool
    /// budget in it is shared by all sessions of the server.
    pub fn transaction_limits(mut self, limits: TxLimits) -> Self {
        self.tx_limits = limits;
        self
    }
}

/// The connections a server holds, in total and by address.
#[derive(Debug)]
pub(crate) struct Connections {
    /// The limits.
    pub(crate) limits: UpgradeLimits,
    /// Connections held: the total and per address.
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One held connection; dropping it releases its place.
#[derive(Debug)]
pub(crate) struct Permit {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    pub(crate) fn new(limits: UpgradeLimits) -> Connections {
        Connections {
            limits,
            held: Mutex::new((0, HashMap::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections held now (total, from `ip`).
    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> (usize, usize) {
        let held = self.lock();
        (held.0, held.1.get(&ip).copied().unwrap_or(0))
    }

    /// A place for a new connection from `ip`, or the refusal.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let ip = ip.to_canonical();
        let mut held = self.lock();
        let limits = &self.limits;
        if held.0 >= limits.max_connections {
            return Err(Refusal::new(
                503,
                "connection_limit",
                format!(
                    "the server holds its maximum of {} connections (limits.max_connections); try again later",
                    limits.max_connections
                ),
            ));
        }
        let from_ip = held.1.get(&ip).copied().unwrap_or(0);
        if from_ip >= limits.max_connections_per_ip {
            return Err(Refusal::new(
                429,
                "ip_connection_limit",
                format!(
                    "your address holds the maximum of {} connections (limits.max_connections_per_ip)",
                    limits.max_connections_per_ip
                ),
            ));
        }
        held.0 += 1;
        *held.1.entry(ip).or_insert(0) += 1;
        Ok(Permit {
            connections: self.clone(),
            ip,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut held = self.connections.lock();
        held.0 -= 1;
        if let Some(n) = held.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.1.remove(&self.ip);
            }
        }
    }
}

/// The refusal of a request not received within `request_timeout`.
pub(crate) fn timed_out(limits: &UpgradeLimits) -> Refusal {
    Refusal::new(
        408,
        "timeout",
        format!(
            "request not received within {} ms (limits.upgrade_timeout_ms)",
            limits.request_timeout.as_millis()
        ),
    )
}

/// Refuses a connection over a limit at once, before its request is read:
/// writes the response, closes the write side and drains (discards) what
/// the client sends for at most 1 s. A TLS connection is closed without a
/// response (answering would cost a TLS handshake).
pub(crate) async fn refuse_at_accept(
    mut tcp: TcpStream,
    remote: SocketAddr,
    refusal: Refusal,
    tls: bool,
    metrics: &Metrics,
) {
    tracing::info!(%remote, status = refusal.status, reason = refusal.reason, "connection refused: {}", refusal.body);
    metrics.refused(refusal.reason);
    if tls {
        return;
    }
    let _ = refusal.send_and_drain(&mut tcp).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_address_and_released() {
        let connections = Arc::new(Connections::new(UpgradeLimits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..UpgradeLimits::default()
        }));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let a6: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = connections.admit(a).unwrap();
        let _p2 = connections.admit(a6).unwrap();
        let r = connections.admit(a).unwrap_err();
        assert_eq!((r.status, r.reason), (429, "ip_connection_limit"));
        assert!(
            r.body.contains("limits.max_connections_per_ip"),
            "{}",
            r.body
        );
        let _p3 = connections.admit(b).unwrap();
        let r = connections.admit(b).unwrap_err();
        assert_eq!((r.status, r.reason), (503, "connection_limit"));
        assert!(r.body.contains("limits.max_connections"), "{}", r.body);
        drop(p1);
        assert_eq!(connections.held(a), (2, 1));
        let _p4 = connections.admit(a).unwrap();
    }

    #[test]
    fn limits_are_validated() {
        assert!(UpgradeLimits::default().validate().is_ok());
        let bad = UpgradeLimits {
            max_request_head_bytes: 100,
            ..UpgradeLimits::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("max_request_head_bytes")
        );
    }
}
