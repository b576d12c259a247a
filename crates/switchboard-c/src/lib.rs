//! switchboard for C: `libswitchboard` (cdylib and staticlib) and its
//! header `include/switchboard.h`, generated from this crate by
//! `cargo xtask codegen` (cbindgen) and checked by `cargo xtask codegen
//! --check`.
//!
//! The library wraps the facade's client-only build ([`facade::Client`]);
//! reliable delivery, resume, discovery and the handshake are the Rust
//! client's. Design (ARCHITECTURE.md, "Bindings"):
//!
//! * one multi-thread tokio runtime per process, started on first use;
//!   every call blocks the calling thread on it;
//! * nothing unwinds into C: every `extern "C"` function catches panics and
//!   returns [`sb_error::SB_ERR_PANIC`];
//! * handles are opaque ids, never dereferenced: a closed or unknown handle
//!   answers [`sb_error::SB_ERR_CLOSED`], never a crash;
//! * errors map one to one from [`facade::ClientError`], with the Rust
//!   message available from [`sb_last_error_message`].
#![allow(non_camel_case_types)]

mod error;
mod handles;
mod ops;
mod runtime;
#[cfg(debug_assertions)]
mod testing;

pub use error::{sb_error, sb_last_error_message};
pub use handles::{sb_client, sb_subscription};
pub use ops::{
    sb_bytes, sb_bytes_free, sb_close, sb_connect, sb_handler_cb, sb_kv_delete, sb_kv_get,
    sb_kv_set, sb_kv_watch, sb_kv_watch_cb, sb_message_cb, sb_options, sb_publish, sb_reply_set,
    sb_request, sb_send, sb_serve, sb_subscribe, sb_unsubscribe,
};
