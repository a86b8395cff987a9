//! The `spin` build's use of Spin's host interfaces (`wit/`): settings from Spin variables, and
//! a bundle pushed to the score cache kept in Spin's key-value store, so the fresh instance
//! each request gets (Spin makes one per request for WASIp2 components) serves it without a
//! call or a signature check.
//!
//! - A setting `SIGNALBOX_<NAME>` is the Spin variable `<name>` in lower case
//!   (`SIGNALBOX_ORIGIN_URL` → `origin_url`, a secret `SIGNALBOX_SECRET` → `secret`), else the
//!   WASI environment variable.
//! - The store (`default`) holds [`BUNDLE_KEY`], the newest pushed bundle in its prepared
//!   form, and [`POLL_KEY`], when the next bundle poll is due ([`StoredPoll`]). Each instance
//!   reads both; the one that finds the poll due claims it, answers its own request, then polls
//!   the cache: a newer bundle is verified and prepared once, here, and stored for the
//!   instances after it. The packaged file stays the floor: a stored bundle serves only above
//!   its revision, and one that no longer loads is set aside for the file.

use signalbox_pipeline::LogLevel;

use crate::{LinkCall, StoredPoll, Worker};

wit_bindgen::generate!({
    path: "wit",
    world: "spin-host",
    generate_all,
});

use fermyon::spin::key_value::Store;
use fermyon::spin::variables;

/// The store the component is granted (`key_value_stores = ["default"]`).
pub const STORE_LABEL: &str = "default";
/// The newest pushed bundle, prepared.
pub const BUNDLE_KEY: &str = "signalbox/bundle.prepared";
/// The bundle poll's state.
pub const POLL_KEY: &str = "signalbox/bundle-poll";

/// A setting by its environment variable name: the Spin variable, else `env`'s value.
pub fn setting(name: &str, env: &std::collections::HashMap<String, String>) -> Option<String> {
    let spin_name = name
        .strip_prefix("SIGNALBOX_")
        .unwrap_or(name)
        .to_ascii_lowercase();
    variables::get(&spin_name)
        .ok()
        .or_else(|| env.get(name).cloned())
}

/// The store, when the component is granted one.
pub fn open() -> Option<Store> {
    Store::open(STORE_LABEL).ok()
}

/// The stored pushed bundle.
pub fn pushed_bundle(store: &Store) -> Option<Vec<u8>> {
    store.get(BUNDLE_KEY).ok().flatten()
}

/// Sets aside a stored bundle the packaged one has overtaken.
pub fn forget_pushed(store: &Store) {
    let _ = store.delete(BUNDLE_KEY);
}

/// Sets aside a stored bundle that no longer loads (damaged, or its key is no longer trusted),
/// and the poll state with it: the next instance polls at once, without an `ETag`, so the
/// cache's bundle is fetched and checked again rather than answered "unchanged".
pub fn forget_damaged(store: &Store) {
    let _ = store.delete(BUNDLE_KEY);
    let _ = store.delete(POLL_KEY);
}

/// After the request was answered: the bundle poll, when this instance finds it due.
/// `call` makes one call to the cache: status (0: failed), `ETag`, body.
pub fn poll_if_due(
    worker: &Worker,
    store: &Store,
    now_ms: u64,
    call: impl Fn(&LinkCall, usize) -> (u16, Option<String>, Vec<u8>),
    log: impl Fn(LogLevel, &str),
) {
    let stored = StoredPoll::from_stored(store.get(POLL_KEY).ok().flatten().as_deref());
    let Some((request, claimed)) = worker.stored_poll_call(&stored, now_ms) else {
        return;
    };
    if store.set(POLL_KEY, &claimed.to_stored()).is_err() {
        return;
    }
    let (status, etag, body) = call(&request, MAX_BUNDLE_BYTES);
    let outcome = worker.stored_poll_answer(claimed, status, etag, &body, now_ms);
    for (level, line) in &outcome.logs {
        log(*level, line);
    }
    if let Some((revision, bytes)) = &outcome.keep {
        // No compare-and-swap in Spin's key-value interface: read again just before writing,
        // so an instance that took a higher revision meanwhile is not overwritten.
        let stored_revision = pushed_bundle(store)
            .and_then(|b| signalbox_policy::prepared::prepared_revision(&b))
            .unwrap_or(0);
        if *revision > stored_revision && store.set(BUNDLE_KEY, bytes).is_err() {
            log(
                LogLevel::Warn,
                "signalbox: the pushed bundle could not be stored",
            );
        }
    }
    let _ = store.set(POLL_KEY, &outcome.poll.to_stored());
    if let Some(fleet) = &outcome.fleet {
        let _ = call(fleet, 64 * 1024);
    }
}

/// A pushed bundle's answer can be megabytes (the default bundle's lists, signed, ~1.6 MB).
const MAX_BUNDLE_BYTES: usize = 32 * 1024 * 1024;
