//! camp-server
