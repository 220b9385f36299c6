//! camp-server's integration tests: one test binary (ripgrep's layout),
//! one module per area, on real sockets with real plugins. The guest
//! plugins come from the `camp-artifacts` dev-dependency.

mod common;
mod plugin_support;

mod admin;
mod backpressure;
mod bench;
mod binary_plugins;
mod cli;
mod every_guest;
mod filter_languages;
mod filter_suite;
mod fuzz_session;
mod hostile_upgrade;
mod layering;
mod peers;
mod plugin_cli;
mod plugin_costs;
mod plugin_e2e;
mod plugin_hooks;
mod plugin_isolation;
mod plugin_log_level;
mod plugin_reload;
mod plugin_sandbox;
mod reference_clients;
mod server;
mod session_engine;
mod soak;
mod stranger;
mod tls;
mod token_logs;
mod transactions;
mod tx_limits;
mod watch_fallback;
