//! The PostgreSQL wire protocol, with no knowledge of sessions, routes or engines:
//! the bottom layer every other part may use.
//!
//! - `frame`: frontend messages, framed and decoded with bounds checks.
//! - `connection`: one client socket (plain or TLS) with its input and output
//!   buffers, and the recorder the result cache captures answers with.
//! - `messages`: every backend message Sluice sends — pgwire's encoders where they
//!   exist, Sluice's own for ErrorResponse, NoticeResponse and text DataRows.
//! - `rows`: Arrow record batches → RowDescription and DataRows (text and binary).
//! - `types`: Arrow types ↔ PostgreSQL type OIDs.

pub mod connection;
pub mod frame;
pub mod messages;
pub mod rows;
pub mod types;

pub use connection::{Connection, Disconnect, FLUSH_THRESHOLD};

/// The PostgreSQL version Sluice reports (`server_version`, `version()`).
pub const SERVER_VERSION: &str = "15.0";
