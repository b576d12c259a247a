//! The `extern "C"` functions.

use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use facade::{Bytes, Client, IncomingRequest, KvEvent, KvWatch, Message, Subscription};

use crate::error::{boundary, sb_error, Failure};
use crate::handles::{sb_client, sb_subscription, ClientEntry, SubEntry, CLIENTS, SUBSCRIPTIONS};
use crate::runtime;

/// How to connect: every field is a NUL-terminated UTF-8 string, NULL for
/// "not set". The library copies what it needs during `sb_connect`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sb_options {
    /// This client's id (required), unique on the hub.
    pub client_id: *const c_char,
    /// The hub's address, `host:port`; NULL to find the hub by discovery.
    pub addr: *const c_char,
    /// The shared token proving this client to the hub; NULL for the
    /// per-user secret that discovery finds.
    pub token: *const c_char,
    /// The service name discovery looks for; NULL for the default.
    pub service: *const c_char,
    /// How long `sb_connect` may take, in milliseconds; 0 for the default.
    pub connect_timeout_ms: u32,
}

/// A byte buffer the library allocated and the caller owns: free it with
/// `sb_bytes_free`. An empty buffer has `data == NULL` and `len == 0`.
#[repr(C)]
#[derive(Debug)]
pub struct sb_bytes {
    /// The bytes (NULL when empty).
    pub data: *mut u8,
    /// How many bytes.
    pub len: usize,
}

/// A subscription's callback: one call per message, in the order the hub
/// delivered them. `topic` is NUL-terminated; `data`/`len` the payload
/// (`data` may be NULL when `len` is 0). Both are valid only during the
/// call and stay the library's (copy them to keep them; never free them).
/// It runs on a thread of the library's blocking pool, one thread per
/// subscription, never two calls at once for one subscription; it may
/// call any `sb_*` function, `sb_unsubscribe` of its own subscription
/// included.
pub type sb_message_cb = Option<
    unsafe extern "C" fn(user_data: *mut c_void, topic: *const c_char, data: *const u8, len: usize),
>;

/// A request handler for `sb_serve`: `from` is the requester's id,
/// `data`/`len` the request payload (valid during the call only, the
/// library's: copy to keep, never free). Return 0 and fill `reply` with
/// `sb_reply_set` (left empty: an empty reply), or return non-zero for an
/// error reply (its text: what `reply` holds, or a default); `reply` is
/// the library's and freed by it. Calls run on library threads (the
/// runtime thread that received the request, which hands its other work
/// to another thread meanwhile), several at once on different threads,
/// so `user_data` must be safe to share; a handler may call any `sb_*`
/// function (a nested `sb_request` works) except `sb_close` of its own
/// client. A reply over
/// the hub's frame limit is not sent: the requester gets an error reply
/// saying why (`SB_ERR_REMOTE`) at once.
pub type sb_handler_cb = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        from: *const c_char,
        data: *const u8,
        len: usize,
        reply: *mut sb_bytes,
    ) -> i32,
>;

/// The caller's `user_data`, handed back to its callbacks on other threads.
#[derive(Clone, Copy)]
struct UserData(*mut c_void);
// SAFETY: the pointer is only handed back to the caller's callbacks; the
// header tells the caller that they run on other threads.
unsafe impl Send for UserData {}
// SAFETY: as above.
unsafe impl Sync for UserData {}

/// A NUL-terminated UTF-8 argument.
///
/// # Safety
/// `p` is NULL or a valid NUL-terminated string that outlives the call.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure::new(
            sb_error::SB_ERR_NULL,
            format!("{what} is NULL"),
        ));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map_err(|e| Failure::new(sb_error::SB_ERR_UTF8, format!("{what} is not UTF-8: {e}")))
}

/// An optional string argument (NULL: not set).
///
/// # Safety
/// As [`text`].
unsafe fn optional<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: the caller's contract.
        unsafe { text(p, what) }.map(Some)
    }
}

/// A payload argument, copied.
///
/// # Safety
/// `data` is NULL (then `len` must be 0) or points to `len` readable bytes.
unsafe fn payload(data: *const u8, len: usize) -> Result<Bytes, Failure> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    if data.is_null() {
        return Err(Failure::new(
            sb_error::SB_ERR_NULL,
            "data is NULL but len is not 0",
        ));
    }
    // SAFETY: `len` readable bytes by the caller's contract.
    Ok(Bytes::copy_from_slice(unsafe {
        std::slice::from_raw_parts(data, len)
    }))
}

fn closed() -> Failure {
    Failure::new(
        sb_error::SB_ERR_CLOSED,
        "the handle is closed (or was never a valid handle)",
    )
}

pub(crate) fn entry(client: *mut sb_client) -> Result<Arc<ClientEntry>, Failure> {
    if client.is_null() {
        return Err(Failure::new(sb_error::SB_ERR_NULL, "client is NULL"));
    }
    CLIENTS.get(client as usize).ok_or_else(closed)
}

fn fill(out: &mut sb_bytes, bytes: &[u8]) {
    if bytes.is_empty() {
        *out = sb_bytes {
            data: std::ptr::null_mut(),
            len: 0,
        };
    } else {
        let boxed: Box<[u8]> = bytes.into();
        let len = boxed.len();
        *out = sb_bytes {
            data: Box::into_raw(boxed).cast::<u8>(),
            len,
        };
    }
}

/// Frees a buffer the library returned and sets it to empty (`data` NULL,
/// `len` 0), so a second call does nothing. NULL does nothing.
///
/// Threads: any thread, but not at once with another use of the same
/// buffer. Ownership: for buffers the library gave the caller
/// (`sb_request`'s reply, `sb_kv_get`'s value); never for memory the
/// caller allocated, nor for a handler's `reply` (the library frees that).
///
/// # Safety
/// `bytes` is NULL or points to an `sb_bytes` filled by this library (or
/// zeroed).
#[no_mangle]
pub unsafe extern "C" fn sb_bytes_free(bytes: *mut sb_bytes) {
    let _ = boundary(|| {
        // SAFETY: NULL or valid by the contract.
        let Some(b) = (unsafe { bytes.as_mut() }) else {
            return Ok(());
        };
        if !b.data.is_null() {
            let slice = std::ptr::slice_from_raw_parts_mut(b.data, b.len);
            // SAFETY: made by `fill` from a `Box<[u8]>` of this length.
            drop(unsafe { Box::from_raw(slice) });
        }
        b.data = std::ptr::null_mut();
        b.len = 0;
        Ok(())
    });
}

/// Sets the reply of an `sb_handler_cb` call to a copy of `data`/`len`
/// (replacing what it held). Only for the `reply` a handler was given.
///
/// Threads: only inside the handler's call, on its thread. Ownership:
/// `data` is copied (the caller keeps it); `reply` stays the library's,
/// which frees it after the handler returns.
///
/// # Safety
/// `reply` is the handler's `reply` argument; `data` is NULL (with `len`
/// 0) or points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn sb_reply_set(
    reply: *mut sb_bytes,
    data: *const u8,
    len: usize,
) -> sb_error {
    boundary(|| {
        if reply.is_null() {
            return Err(Failure::new(sb_error::SB_ERR_NULL, "reply is NULL"));
        }
        // SAFETY: the contract.
        let bytes = unsafe { payload(data, len) }?;
        // SAFETY: `reply` is the handler's, filled by the library.
        unsafe { sb_bytes_free(reply) };
        // SAFETY: non-NULL, valid.
        fill(unsafe { &mut *reply }, &bytes);
        Ok(())
    })
}

/// Connects to a hub and stores a new client handle in `*out`.
///
/// Blocks until the handshake is done or fails. On failure `*out` is left
/// unchanged. May be called from any thread.
///
/// Threads: any thread, also several at once (callbacks included).
/// Ownership: `options` and its strings are read during the call only; the
/// handle in `*out` is the caller's and is ended with `sb_close` (which
/// frees everything the library holds for it).
///
/// # Safety
/// `options` and `out` are NULL or valid; the strings in `options` are NULL
/// or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn sb_connect(
    options: *const sb_options,
    out: *mut *mut sb_client,
) -> sb_error {
    boundary(|| {
        // SAFETY: NULL or valid by the contract.
        let Some(options) = (unsafe { options.as_ref() }) else {
            return Err(Failure::new(sb_error::SB_ERR_NULL, "options is NULL"));
        };
        if out.is_null() {
            return Err(Failure::new(sb_error::SB_ERR_NULL, "out is NULL"));
        }
        // SAFETY: the strings' contract.
        let id = unsafe { text(options.client_id, "client_id") }?;
        let addr = unsafe { optional(options.addr, "addr") }?;
        let token = unsafe { optional(options.token, "token") }?;
        let service = unsafe { optional(options.service, "service") }?;
        let mut builder = Client::builder(id);
        if let Some(addr) = addr {
            builder = builder.addr(addr);
        }
        if let Some(token) = token {
            builder = builder.token(token);
        }
        if let Some(service) = service {
            builder = builder.service(service);
        }
        if options.connect_timeout_ms > 0 {
            builder =
                builder.connect_timeout(Duration::from_millis(options.connect_timeout_ms.into()));
        }
        let client = runtime::block_on(builder.connect())?;
        let id = CLIENTS.insert(ClientEntry {
            client,
            serving: Mutex::new(None),
            subscriptions: Mutex::new(Vec::new()),
        });
        // SAFETY: non-NULL, writable by the contract.
        unsafe { *out = id as *mut sb_client };
        Ok(())
    })
}

/// Closes the client: stops its subscriptions (their callbacks have
/// returned when this returns) and its `sb_serve` handler, flushes what
/// it sent, and disconnects. The handle is then dead: every later call
/// with it, a second `sb_close` included, answers `SB_ERR_CLOSED`; NULL
/// answers `SB_ERR_NULL`. Nothing is freed by the caller.
///
/// It waits for running `sb_serve` handlers of this client to return, so
/// a handler of this client must not call it (a subscription callback
/// may).
///
/// Threads: any thread, also while other threads use the same client:
/// their calls then finish or answer `SB_ERR_CLOSED`. Ownership: ends the
/// handle and every subscription and watch of it; when it returns, no
/// callback of this client runs any more and the library no longer uses
/// any `user_data` given for it (the caller may free them).
///
/// # Safety
/// `client` is any value; it is never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn sb_close(client: *mut sb_client) -> sb_error {
    boundary(|| {
        let entry = entry(client)?;
        let Some(entry) = CLIENTS.remove(client as usize).map(|_| entry) else {
            return Err(closed());
        };
        let subs = std::mem::take(
            &mut *entry
                .subscriptions
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for sub in subs {
            stop_subscription(sub);
        }
        let serving = entry
            .serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(serving) = serving {
            runtime::block_on(serving.stop());
        }
        runtime::block_on(entry.client.close());
        Ok(())
    })
}

/// Publishes `data`/`len` (copied) on `topic`; returns once the hub has it.
/// A payload over the hub's frame limit answers `SB_ERR_INVALID_ARGUMENT`.
///
/// Threads: any thread, also at once on one client; publishes made one
/// after another from one thread reach the hub in that order. Ownership:
/// `topic` and the payload are copied; the caller keeps them.
///
/// # Safety
/// `topic` is NUL-terminated; `data` is NULL (with `len` 0) or points to
/// `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn sb_publish(
    client: *mut sb_client,
    topic: *const c_char,
    data: *const u8,
    len: usize,
) -> sb_error {
    boundary(|| {
        let entry = entry(client)?;
        // SAFETY: the contract.
        let topic = unsafe { text(topic, "topic") }?;
        let payload = unsafe { payload(data, len) }?;
        runtime::block_on(entry.client.publish(topic, payload))?;
        Ok(())
    })
}

/// Sends `data`/`len` (copied) to client `to` as a direct message; returns
/// once the hub has queued it for `to`. A target that is not connected
/// answers `SB_ERR_NO_SUCH_CLIENT`, one not taking direct messages
/// `SB_ERR_NOT_LISTENING`; a payload over the hub's frame limit
/// `SB_ERR_INVALID_ARGUMENT`.
///
/// Threads: any thread, also at once on one client. Ownership: `to` and
/// the payload are copied; the caller keeps them.
///
/// # Safety
/// `to` is NUL-terminated; `data` is NULL (with `len` 0) or points to
/// `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn sb_send(
    client: *mut sb_client,
    to: *const c_char,
    data: *const u8,
    len: usize,
) -> sb_error {
    boundary(|| {
        let entry = entry(client)?;
        // SAFETY: the contract.
        let to = unsafe { text(to, "to") }?;
        let payload = unsafe { payload(data, len) }?;
        runtime::block_on(entry.client.send(to, payload))?;
        Ok(())
    })
}

/// Subscribes to topics matching `pattern` (`*` one segment, final `>` the
/// rest) and calls `callback(user_data, ...)` for each message (see
/// `sb_message_cb` for its thread). The subscription is active at the hub
/// when this returns; `*out` receives its handle.
///
/// Threads: any thread; `callback` runs on a library thread (see
/// `sb_message_cb`). Ownership: `pattern` is copied; `user_data` is not the
/// library's: it must stay valid until `sb_unsubscribe` (or `sb_close` of
/// the client) returns, after which it is no longer used. The handle in
/// `*out` is the caller's to end with `sb_unsubscribe`; `sb_close` of the
/// client ends it too (then `sb_unsubscribe` answers `SB_ERR_CLOSED`).
///
/// # Safety
/// `pattern` is NUL-terminated; `out` is valid; `user_data` stays valid
/// until the subscription ends.
#[no_mangle]
pub unsafe extern "C" fn sb_subscribe(
    client: *mut sb_client,
    pattern: *const c_char,
    callback: sb_message_cb,
    user_data: *mut c_void,
    out: *mut *mut sb_subscription,
) -> sb_error {
    boundary(|| {
        let entry = entry(client)?;
        // SAFETY: the contract.
        let pattern = unsafe { text(pattern, "pattern") }?;
        let Some(callback) = callback else {
            return Err(Failure::new(sb_error::SB_ERR_NULL, "callback is NULL"));
        };
        if out.is_null() {
            return Err(Failure::new(sb_error::SB_ERR_NULL, "out is NULL"));
        }
        let sub = runtime::block_on(entry.client.subscribe(pattern))?;
        let user = UserData(user_data);
        let id = deliver(&entry, sub, move |msg: Message| {
            let topic = CString::new(&*msg.topic).unwrap_or_default();
            let user = user;
            // SAFETY: the caller's callback, with arguments valid for the call.
            unsafe {
                callback(
                    user.0,
                    topic.as_ptr(),
                    msg.payload.as_ptr(),
                    msg.payload.len(),
                )
            };
        });
        // SAFETY: non-NULL, writable.
        unsafe { *out = id as *mut sb_subscription };
        Ok(())
    })
}

/// A stream whose items a delivery thread hands to a C callback.
trait Source: Send + 'static {
    type Item: Send;
    /// The next item; `None` at the end.
    fn next(&mut self) -> impl std::future::Future<Output = Option<Self::Item>> + Send;
    /// Ends the stream at the hub.
    fn finish(self) -> impl std::future::Future<Output = ()> + Send;
}

impl Source for Subscription {
    type Item = Message;
    fn next(&mut self) -> impl std::future::Future<Output = Option<Message>> + Send {
        self.recv()
    }
    async fn finish(self) {
        let _ = self.unsubscribe().await;
    }
}

impl Source for KvWatch {
    type Item = KvEvent;
    fn next(&mut self) -> impl std::future::Future<Output = Option<KvEvent>> + Send {
        self.recv()
    }
    async fn finish(self) {
        drop(self);
    }
}

/// Starts a thread of the blocking pool that calls `callback` with each
/// item of `source`, in order, until the source ends or the returned
/// subscription id is stopped; registers it with the client.
fn deliver<S: Source>(
    entry: &ClientEntry,
    mut source: S,
    mut callback: impl FnMut(S::Item) + Send + 'static,
) -> usize {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let callback_thread = Arc::new(Mutex::new(None));
    let seen_thread = callback_thread.clone();
    let thread = runtime::handle().spawn_blocking(move || {
        *seen_thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::thread::current().id());
        loop {
            let next = runtime::block_on(async {
                tokio::select! {
                    item = source.next() => item,
                    _ = stopped.wait_for(|s| *s) => None,
                }
            });
            let Some(item) = next else { break };
            callback(item);
        }
        runtime::block_on(source.finish());
    });
    let id = SUBSCRIPTIONS.insert(SubEntry {
        stop,
        thread: Mutex::new(Some(thread)),
        callback_thread,
    });
    entry
        .subscriptions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(id);
    id
}

/// Stops a subscription's delivery and waits for it (unless called from
/// its own callback).
fn stop_subscription(id: usize) -> bool {
    let Some(sub) = SUBSCRIPTIONS.remove(id) else {
        return false;
    };
    let _ = sub.stop.send(true);
    let own = *sub
        .callback_thread
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        == Some(std::thread::current().id());
    let thread = sub.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let (false, Some(thread)) = (own, thread) {
        let _ = runtime::block_on(thread);
    }
    true
}

/// Ends a subscription or a key-value watch: when this returns no callback of it runs any more
/// (called from its own callback: none after that callback returns). A
/// second call, or one after `sb_close` of its client, answers
/// `SB_ERR_CLOSED`; NULL answers `SB_ERR_NULL`.
///
/// Threads: any thread, the subscription's own callback included (then
/// it does not wait for that callback to return). Ownership: when it
/// returns (from the own callback: when that callback returns) the
/// library no longer uses the subscription's `user_data`.
///
/// # Safety
/// `subscription` is any value; it is never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn sb_unsubscribe(subscription: *mut sb_subscription) -> sb_error {
    boundary(|| {
        if subscription.is_null() {
            return Err(Failure::new(sb_error::SB_ERR_NULL, "subscription is NULL"));
        }
        if stop_subscription(subscription as usize) {
            Ok(())
        } else {
            Err(closed())
        }
    })
}

/// Sends a request to client `to` and waits for its reply, which is stored
/// in `*reply` (free it with `sb_bytes_free`). `timeout_ms` 0 uses the
/// client's default (30 s). An unknown target answers
/// `SB_ERR_NO_SUCH_CLIENT`, a target not serving `SB_ERR_NOT_LISTENING`,
/// an error reply `SB_ERR_REMOTE`, no reply in time `SB_ERR_TIMEOUT`.
///
/// Threads: any thread, also at once on one client (each call waits for
/// its own reply); it may be called from a handler or callback (nested
/// requests work). Ownership: `to` and the payload are copied; on success
/// `*reply` receives a buffer the caller owns and frees with
/// `sb_bytes_free`; on error `*reply` is left unchanged.
///
/// # Safety
/// `to` is NUL-terminated; `data` is NULL (with `len` 0) or points to
/// `len` readable bytes; `reply` is valid (its old contents are not
/// freed).
#[no_mangle]
pub unsafe extern "C" fn sb_request(
    client: *mut sb_client,
    to: *const c_char,
    data: *const u8,
    len: usize,
    timeout_ms: u32,
    reply: *mut sb_bytes,
) -> sb_error {
    boundary(|| {
        let entry = entry(client)?;
        // SAFETY: the contract.
        let to = unsafe { text(to, "to") }?;
        let payload = unsafe { payload(data, len) }?;
        // SAFETY: NULL or valid.
        let Some(reply) = (unsafe { reply.as_mut() }) else {
            return Err(Failure::new(sb_error::SB_ERR_NULL, "reply is NULL"));
        };
        let answer = if timeout_ms == 0 {
            runtime::block_on(entry.client.request(to, payload))?
        } else {
            let timeout = Duration::from_millis(timeout_ms.into());
            runtime::block_on(entry.client.request_with(to, "", payload, timeout))?
        };
        fill(reply, &answer);
        Ok(())
    })
}

/// Answers every request to this client with `handler(user_data, ...)`
/// (see `sb_handler_cb` for its threads). Requests are accepted when this
/// returns. A second call replaces the handler. Serving ends with
/// `sb_close`.
///
/// Threads: any thread; the handler runs on library threads, several at
/// once (see `sb_handler_cb`). Ownership: `user_data` is not the library's:
/// it must stay valid until `sb_close` of the client returns (or, after a
/// second `sb_serve`, until that call returns: the old handler is stopped
/// first).
///
/// # Safety
/// `user_data` stays valid and shareable across threads until `sb_close`.
#[no_mangle]
pub unsafe extern "C" fn sb_serve(
    client: *mut sb_client,
    handler: sb_handler_cb,
    user_data: *mut c_void,
) -> sb_error {
    boundary(|| {
        let entry = entry(client)?;
        let Some(handler) = handler else {
            return Err(Failure::new(sb_error::SB_ERR_NULL, "handler is NULL"));
        };
        let user = UserData(user_data);
        let serving = runtime::block_on(entry.client.serve(move |req: IncomingRequest| {
            let user = user;
            async move {
                // The handler runs right here, on the runtime thread that
                // took the request (no hand-over to another thread and
                // back): `block_in_place` first gives that thread's other
                // work to another thread, so a slow or blocking handler
                // (a nested `sb_request`) holds nothing up.
                tokio::task::block_in_place(move || call_handler(handler, user, &req))
            }
        }))?;
        let old = entry
            .serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(serving);
        if let Some(old) = old {
            runtime::block_on(old.stop());
        }
        Ok(())
    })
}

type Handler =
    unsafe extern "C" fn(*mut c_void, *const c_char, *const u8, usize, *mut sb_bytes) -> i32;

fn call_handler(handler: Handler, user: UserData, req: &IncomingRequest) -> Result<Bytes, String> {
    let from = CString::new(req.from()).unwrap_or_default();
    let mut reply = sb_bytes {
        data: std::ptr::null_mut(),
        len: 0,
    };
    let data = req.payload();
    // SAFETY: the caller's handler, with arguments valid for the call.
    let code = unsafe { handler(user.0, from.as_ptr(), data.as_ptr(), data.len(), &mut reply) };
    let bytes = if reply.data.is_null() {
        Bytes::new()
    } else {
        // SAFETY: filled by `sb_reply_set`.
        Bytes::copy_from_slice(unsafe { std::slice::from_raw_parts(reply.data, reply.len) })
    };
    // SAFETY: library-filled or empty.
    unsafe { sb_bytes_free(&mut reply) };
    if code == 0 {
        Ok(bytes)
    } else if bytes.is_empty() {
        Err(format!("the handler returned {code}"))
    } else {
        Err(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Sets `key` to `data`/`len` (copied) in the hub's key-value store;
/// `*version` (if not NULL) receives the key's new version.
///
/// Threads: any thread, also at once on one client. Ownership: `key` and
/// the value are copied; the caller keeps them.
///
/// # Safety
/// `key` is NUL-terminated; `data` is NULL (with `len` 0) or points to
/// `len` readable bytes; `version` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sb_kv_set(
    client: *mut sb_client,
    key: *const c_char,
    data: *const u8,
    len: usize,
    version: *mut u64,
) -> sb_error {
    boundary(|| {
        let entry = entry(client)?;
        // SAFETY: the contract.
        let key = unsafe { text(key, "key") }?;
        let payload = unsafe { payload(data, len) }?;
        let v = runtime::block_on(entry.client.kv().set(key, payload))?;
        // SAFETY: NULL or writable.
        if let Some(version) = unsafe { version.as_mut() } {
            *version = v;
        }
        Ok(())
    })
}

/// Reads `key` into `*value` (free it with `sb_bytes_free`); `*version`
/// (if not NULL) receives its version. A missing key answers
/// `SB_ERR_NOT_FOUND` and leaves `*value` unchanged.
///
/// Threads: any thread, also at once on one client. Ownership: `key` is
/// copied; on success `*value` receives a buffer the caller owns and frees
/// with `sb_bytes_free` (its old contents are not freed); on error it is
/// left unchanged.
///
/// # Safety
/// `key` is NUL-terminated; `value` is valid; `version` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn sb_kv_get(
    client: *mut sb_client,
    key: *const c_char,
    value: *mut sb_bytes,
    version: *mut u64,
) -> sb_error {
    boundary(|| {
        let entry = entry(client)?;
        // SAFETY: the contract.
        let key = unsafe { text(key, "key") }?;
        // SAFETY: NULL or valid.
        let Some(value) = (unsafe { value.as_mut() }) else {
            return Err(Failure::new(sb_error::SB_ERR_NULL, "value is NULL"));
        };
        let Some(found) = runtime::block_on(entry.client.kv().get(key))? else {
            return Err(Failure::new(
                sb_error::SB_ERR_NOT_FOUND,
                format!("no key {key:?} in the store"),
            ));
        };
        fill(value, &found.value);
        // SAFETY: NULL or writable.
        if let Some(version) = unsafe { version.as_mut() } {
            *version = found.version;
        }
        Ok(())
    })
}

/// Deletes `key` from the hub's key-value store; `*existed` (if not NULL)
/// receives 1 when the key existed, 0 when it did not (not an error).
/// Watchers of the key see the delete.
///
/// Threads: any thread, also at once on one client. Ownership: `key` is
/// copied; the caller keeps it.
///
/// # Safety
/// `key` is NUL-terminated; `existed` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sb_kv_delete(
    client: *mut sb_client,
    key: *const c_char,
    existed: *mut i32,
) -> sb_error {
    boundary(|| {
        let entry = entry(client)?;
        // SAFETY: the contract.
        let key = unsafe { text(key, "key") }?;
        let found = runtime::block_on(entry.client.kv().delete(key))?;
        // SAFETY: NULL or writable.
        if let Some(existed) = unsafe { existed.as_mut() } {
            *existed = i32::from(found);
        }
        Ok(())
    })
}

/// A key-value watch's callback: one call per change of a watched key, in
/// order. The first call carries the key's current value (if it exists)
/// when the watch starts. `key` is NUL-terminated; `data`/`len` the new
/// value (empty when `deleted` is 1); `version` the version after the
/// change. Arguments are valid during the call only and stay the
/// library's (copy to keep, never free). It runs like an
/// `sb_message_cb`: on a library thread, one at a time per watch.
pub type sb_kv_watch_cb = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        key: *const c_char,
        data: *const u8,
        len: usize,
        version: u64,
        deleted: i32,
    ),
>;

/// Watches `key` (with `prefix` non-zero: every key starting with `key`)
/// and calls `callback(user_data, ...)` for each change. The watch is
/// registered at the hub when this returns; `*out` receives its handle,
/// ended with `sb_unsubscribe` (or `sb_close`).
///
/// Threads: any thread; `callback` runs on a library thread (see
/// `sb_kv_watch_cb`). Ownership: `key` is copied; `user_data` is not the
/// library's: it must stay valid until `sb_unsubscribe` (or `sb_close` of
/// the client) returns. The handle in `*out` is the caller's to end with
/// `sb_unsubscribe`; `sb_close` of the client ends it too.
///
/// # Safety
/// `key` is NUL-terminated; `out` is valid; `user_data` stays valid until
/// the watch ends.
#[no_mangle]
pub unsafe extern "C" fn sb_kv_watch(
    client: *mut sb_client,
    key: *const c_char,
    prefix: i32,
    callback: sb_kv_watch_cb,
    user_data: *mut c_void,
    out: *mut *mut sb_subscription,
) -> sb_error {
    boundary(|| {
        let entry = entry(client)?;
        // SAFETY: the contract.
        let key = unsafe { text(key, "key") }?;
        let Some(callback) = callback else {
            return Err(Failure::new(sb_error::SB_ERR_NULL, "callback is NULL"));
        };
        if out.is_null() {
            return Err(Failure::new(sb_error::SB_ERR_NULL, "out is NULL"));
        }
        let kv = entry.client.kv();
        let watch = if prefix != 0 {
            runtime::block_on(kv.watch_prefix(key))?
        } else {
            runtime::block_on(kv.watch(key))?
        };
        let user = UserData(user_data);
        let id = deliver(&entry, watch, move |event: KvEvent| {
            let key = CString::new(event.key).unwrap_or_default();
            let user = user;
            // SAFETY: the caller's callback, with arguments valid for the call.
            unsafe {
                callback(
                    user.0,
                    key.as_ptr(),
                    event.value.as_ptr(),
                    event.value.len(),
                    event.version,
                    i32::from(event.deleted),
                )
            };
        });
        // SAFETY: non-NULL, writable.
        unsafe { *out = id as *mut sb_subscription };
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr::{null, null_mut};

    fn options(id: &CStr) -> sb_options {
        sb_options {
            client_id: id.as_ptr(),
            addr: c"127.0.0.1:1".as_ptr(),
            token: c"t".as_ptr(),
            service: null(),
            connect_timeout_ms: 500,
        }
    }

    #[test]
    fn bad_input_answers_codes() {
        let mut client = null_mut();
        unsafe {
            assert_eq!(sb_connect(null(), &mut client), sb_error::SB_ERR_NULL);
            assert_eq!(
                sb_connect(&options(c"ok"), null_mut()),
                sb_error::SB_ERR_NULL
            );
            let bad = c"bad\xff";
            assert_eq!(
                sb_connect(&options(bad), &mut client),
                sb_error::SB_ERR_UTF8
            );
            assert!(client.is_null());
            assert_eq!(sb_close(null_mut()), sb_error::SB_ERR_NULL);
            let made_up = 0xdead_0000usize as *mut sb_client;
            assert_eq!(sb_close(made_up), sb_error::SB_ERR_CLOSED);
            assert_eq!(
                sb_publish(made_up, c"t".as_ptr(), null(), 0),
                sb_error::SB_ERR_CLOSED
            );
            let mut reply = sb_bytes {
                data: null_mut(),
                len: 0,
            };
            assert_eq!(
                sb_request(made_up, c"x".as_ptr(), null(), 0, 10, &mut reply),
                sb_error::SB_ERR_CLOSED
            );
            assert_eq!(
                sb_kv_delete(made_up, c"k".as_ptr(), null_mut()),
                sb_error::SB_ERR_CLOSED
            );
            assert_eq!(
                sb_kv_delete(null_mut(), c"k".as_ptr(), null_mut()),
                sb_error::SB_ERR_NULL
            );
            assert_eq!(sb_unsubscribe(null_mut()), sb_error::SB_ERR_NULL);
            assert_eq!(
                sb_unsubscribe(0xdead_0001usize as *mut sb_subscription),
                sb_error::SB_ERR_CLOSED
            );
            sb_bytes_free(null_mut());
            sb_bytes_free(&mut reply);
        }
    }

    #[test]
    fn no_hub_is_a_connect_error() {
        let mut client = null_mut();
        let code = unsafe { sb_connect(&options(c"lonely"), &mut client) };
        assert_eq!(code, sb_error::SB_ERR_CONNECT);
        assert!(client.is_null());
    }

    /// How long the echo handler takes over "slow".
    const SLOW: Duration = Duration::from_millis(1000);

    /// An echo handler; "slow" sleeps [`SLOW`] first.
    unsafe extern "C" fn echo(
        _user: *mut c_void,
        _from: *const c_char,
        data: *const u8,
        len: usize,
        reply: *mut sb_bytes,
    ) -> i32 {
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        if bytes == b"slow" {
            std::thread::sleep(SLOW);
        }
        unsafe { sb_reply_set(reply, data, len) as i32 }
    }

    /// Asks the client in `user` (an `sb_client*`) to echo the payload:
    /// a nested request from inside a handler.
    unsafe extern "C" fn forward(
        user: *mut c_void,
        _from: *const c_char,
        data: *const u8,
        len: usize,
        reply: *mut sb_bytes,
    ) -> i32 {
        let client = user as *mut sb_client;
        unsafe { sb_request(client, c"c-echo".as_ptr(), data, len, 5000, reply) as i32 }
    }

    #[test]
    fn handlers_nest_and_run_at_once() {
        let hub = runtime::block_on(
            facade::Hub::builder()
                .listen("127.0.0.1:0")
                .token("t")
                .write_hint(false)
                .unix(facade::hub::UnixSocket::disabled())
                .start(),
        )
        .expect("hub starts");
        let addr = CString::new(hub.local_addr().to_string()).unwrap();
        let connect = |id: &CStr| {
            let mut o = options(id);
            o.addr = addr.as_ptr();
            o.connect_timeout_ms = 5000;
            let mut client = null_mut();
            assert_eq!(unsafe { sb_connect(&o, &mut client) }, sb_error::SB_OK);
            client
        };
        let (echoer, forwarder, asker) = (connect(c"c-echo"), connect(c"c-fwd"), connect(c"c-ask"));
        unsafe {
            assert_eq!(sb_serve(echoer, Some(echo), null_mut()), sb_error::SB_OK);
            assert_eq!(
                sb_serve(forwarder, Some(forward), echoer.cast()),
                sb_error::SB_OK
            );
        }
        let ask = |to: &CStr, payload: &[u8]| {
            let mut reply = sb_bytes {
                data: null_mut(),
                len: 0,
            };
            let code = unsafe {
                sb_request(
                    asker,
                    to.as_ptr(),
                    payload.as_ptr(),
                    payload.len(),
                    5000,
                    &mut reply,
                )
            };
            assert_eq!(code, sb_error::SB_OK);
            let got = unsafe { std::slice::from_raw_parts(reply.data, reply.len) }.to_vec();
            unsafe { sb_bytes_free(&mut reply) };
            got
        };
        // A handler's own request, answered by a handler of the same
        // library.
        assert_eq!(ask(c"c-fwd", b"hello"), b"hello");
        // Four slow requests at once take about one handler's time.
        let asker_id = asker as usize;
        let started = std::time::Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut reply = sb_bytes {
                        data: null_mut(),
                        len: 0,
                    };
                    let code = unsafe {
                        sb_request(
                            asker_id as *mut sb_client,
                            c"c-echo".as_ptr(),
                            b"slow".as_ptr(),
                            4,
                            5000,
                            &mut reply,
                        )
                    };
                    unsafe { sb_bytes_free(&mut reply) };
                    code
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), sb_error::SB_OK);
        }
        // One after another they take 4 x SLOW; a loaded machine adds
        // to 1 x SLOW, far less than that.
        assert!(
            started.elapsed() < 3 * SLOW,
            "handlers ran one after another: {:?}",
            started.elapsed()
        );
        unsafe {
            for c in [asker, forwarder, echoer] {
                assert_eq!(sb_close(c), sb_error::SB_OK);
            }
        }
        let _runtime = runtime::handle().enter();
        drop(hub);
    }

    #[test]
    fn reply_buffers_round_trip() {
        let mut reply = sb_bytes {
            data: null_mut(),
            len: 0,
        };
        unsafe {
            assert_eq!(
                sb_reply_set(&mut reply, b"abc".as_ptr(), 3),
                sb_error::SB_OK
            );
            assert_eq!(std::slice::from_raw_parts(reply.data, reply.len), b"abc");
            assert_eq!(sb_reply_set(&mut reply, b"de".as_ptr(), 2), sb_error::SB_OK);
            assert_eq!(reply.len, 2);
            assert_eq!(sb_reply_set(&mut reply, null(), 1), sb_error::SB_ERR_NULL);
            sb_bytes_free(&mut reply);
            assert!(reply.data.is_null());
            sb_bytes_free(&mut reply);
        }
    }
}
