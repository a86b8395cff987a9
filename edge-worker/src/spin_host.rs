//! The `spin` build's use of Spin's host interfaces (`wit/`): settings from Spin variables, and
//! a bundle pushed to the score cache kept in Spin's key-value store, so the fresh instance
//! each request gets (Spin makes one per request for WASIp2 components) serves it without a
//! call or a signature check.
//!
//! - A setting `SIGNALBOX_<NAME>` is the Spin variable `<name>` in lower case
//!   (`SIGNALBOX_ORIGIN_URL` → `origin_url`, a secret `SIGNALBOX_SECRET` → `secret`), else the
//!   WASI environment variable.
//! - The store (`default`) holds [`BUNDLE_KEY`], the newest pushed bundle in its prepared
//!   form, and [`POLL_KEY`], the poll's state ([`StoredPoll`]: when it is due, its `ETag`, the
//!   highest revision kept). Each instance reads both; the one that finds the poll due claims
//!   it, answers its own request, then polls the cache: a newer bundle is verified and prepared
//!   once, here, and stored for the instances after it.
//! - The store is not trusted as the signed bundle is: anything with access to it (another
//!   component granted it, `spin cloud kv`, a shared backend) could write it. So the stored
//!   bundle carries an HMAC-SHA256 tag under `SIGNALBOX_STORE_KEY` (a secret only the
//!   deployment holds), checked in constant time before it is loaded; without that key the
//!   store is not used. The packaged file stays the floor: a stored bundle serves only above
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
/// The newest pushed bundle: its tag, then its prepared bytes.
pub const BUNDLE_KEY: &str = "signalbox/bundle.prepared";
/// The bundle poll's state.
pub const POLL_KEY: &str = "signalbox/bundle-poll";
/// The setting with the key that tags stored bundles.
pub const STORE_KEY_VAR: &str = "SIGNALBOX_STORE_KEY";
/// Keys shorter than this are refused (32 random bytes, base64, are 44 characters).
const MIN_STORE_KEY_LEN: usize = 32;
/// What the tag covers before the bundle: the purpose, so a tag made for anything else under
/// the same key never passes.
const TAG_CONTEXT: &[u8] = b"signalbox stored prepared bundle v1\0";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

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

/// The deployment's store: the key-value store and the key its bundles are tagged with.
pub struct BundleStore {
    store: Store,
    key: Vec<u8>,
}

impl BundleStore {
    /// The store, when the component is granted one and the store key is set (why not, else).
    pub fn open(env: &std::collections::HashMap<String, String>) -> Result<BundleStore, String> {
        let key = setting(STORE_KEY_VAR, env)
            .map(|k| k.trim().as_bytes().to_vec())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| format!("{STORE_KEY_VAR} is not set"))?;
        if key.len() < MIN_STORE_KEY_LEN {
            return Err(format!(
                "{STORE_KEY_VAR} is shorter than {MIN_STORE_KEY_LEN} characters"
            ));
        }
        let store = Store::open(STORE_LABEL).map_err(|e| format!("store {STORE_LABEL}: {e:?}"))?;
        Ok(BundleStore { store, key })
    }

    fn mac(&self) -> Option<HmacSha256> {
        use hmac::{KeyInit, Mac};
        let mut mac = HmacSha256::new_from_slice(&self.key).ok()?;
        mac.update(TAG_CONTEXT);
        Some(mac)
    }

    /// The stored pushed bundle: `Ok(None)` when there is none, an error when the store cannot
    /// be read or the entry's tag does not verify (then it is not to be used).
    pub fn pushed_bundle(&self) -> Result<Option<Vec<u8>>, String> {
        self.read_entry()?
            .map(|entry| self.verified(&entry).map(<[u8]>::to_vec))
            .transpose()
    }

    /// The stored entry as it is (tag and bundle), or `None`; an error when unreadable.
    fn read_entry(&self) -> Result<Option<Vec<u8>>, String> {
        self.store
            .get(BUNDLE_KEY)
            .map_err(|e| format!("reading {BUNDLE_KEY}: {e:?}"))
    }

    /// An entry's bundle, when its tag verifies under the store key (in constant time).
    fn verified<'e>(&self, entry: &'e [u8]) -> Result<&'e [u8], String> {
        use hmac::Mac;
        let (tag, bundle) = entry
            .split_at_checked(32)
            .ok_or_else(|| format!("{BUNDLE_KEY} is too short to carry a tag"))?;
        let mut mac = self.mac().ok_or("the store key")?;
        mac.update(bundle);
        mac.verify_slice(tag)
            .map_err(|_| format!("{BUNDLE_KEY}: its tag does not verify under {STORE_KEY_VAR}"))?;
        Ok(bundle)
    }

    /// The revision of the stored bundle whose tag verifies (0: none, or one that does not
    /// verify, which a good one may replace); an error when the store cannot be read. The
    /// entry is read once.
    fn stored_revision(&self) -> Result<u64, String> {
        Ok(self
            .read_entry()?
            .and_then(|entry| {
                let bundle = self.verified(&entry).ok()?;
                signalbox_policy::prepared::prepared_revision(bundle)
            })
            .unwrap_or(0))
    }

    /// Stores `bundle` (prepared) with its tag.
    fn keep(&self, bundle: &[u8]) -> Result<(), String> {
        use hmac::Mac;
        let mut mac = self.mac().ok_or("the store key")?;
        mac.update(bundle);
        let mut entry = mac.finalize().into_bytes().to_vec();
        entry.extend_from_slice(bundle);
        self.store
            .set(BUNDLE_KEY, &entry)
            .map_err(|e| format!("writing {BUNDLE_KEY}: {e:?}"))
    }

    fn poll_state(&self) -> Result<StoredPoll, String> {
        let stored = self
            .store
            .get(POLL_KEY)
            .map_err(|e| format!("reading {POLL_KEY}: {e:?}"))?;
        Ok(StoredPoll::from_stored(stored.as_deref()))
    }

    fn set_poll_state(&self, poll: &StoredPoll) -> bool {
        self.store.set(POLL_KEY, &poll.to_stored()).is_ok()
    }

    /// Sets aside a stored bundle the packaged one has overtaken.
    pub fn forget_pushed(&self) {
        let _ = self.store.delete(BUNDLE_KEY);
    }

    /// Sets aside a stored bundle that does not load or verify, and has the next instance
    /// fetch the cache's bundle again (at once, without an `ETag`); the floor stays. Another
    /// instance may have stored a good bundle meanwhile: it is fetched again too.
    pub fn forget_damaged(&self) {
        let _ = self.store.delete(BUNDLE_KEY);
        if let Ok(poll) = self.poll_state() {
            let _ = self.set_poll_state(&poll.fetch_again());
        }
    }

    /// After the request was answered: the bundle poll, when this instance finds it due.
    /// `call` makes one call to the cache: status (0: failed), `ETag`, body.
    pub fn poll_if_due(
        &self,
        worker: &Worker,
        now_ms: u64,
        call: impl Fn(&LinkCall, usize) -> (u16, Option<String>, Vec<u8>),
        log: impl Fn(LogLevel, &str),
    ) {
        let Ok(stored) = self.poll_state() else {
            return;
        };
        let Some((request, claimed)) = worker.stored_poll_call(&stored, now_ms) else {
            return;
        };
        if !self.set_poll_state(&claimed) {
            return;
        }
        let (status, etag, body) = call(&request, MAX_BUNDLE_BYTES);
        let mut outcome = worker.stored_poll_answer(claimed, status, etag, &body, now_ms);
        for (level, line) in &outcome.logs {
            log(*level, line);
        }
        let mut serving = worker.pipeline().settings().policy.revision();
        if let Some((revision, bytes)) = &outcome.keep {
            // No compare-and-swap in Spin's key-value interface: read again just before
            // writing, so an instance that stored a higher revision meanwhile is not
            // overwritten; a read that fails stores nothing.
            let kept = match self.stored_revision() {
                Ok(stored) if *revision <= stored => {
                    serving = stored;
                    Ok(())
                }
                Ok(_) => self.keep(bytes).map(|()| serving = *revision),
                Err(why) => Err(why),
            };
            if let Err(why) = kept {
                log(
                    LogLevel::Warn,
                    &format!("signalbox: the pushed bundle could not be stored: {why}"),
                );
                // Fetched again at the next poll rather than answered "unchanged".
                outcome.poll = outcome.poll.fetch_again();
                outcome.last_error = Some(format!("bundle not stored: {why}"));
            }
        }
        let _ = self.set_poll_state(&outcome.poll);
        if let Some(fleet) = worker.stored_fleet_call(serving, outcome.last_error, now_ms) {
            let _ = call(&fleet, 64 * 1024);
        }
    }
}

/// A pushed bundle's answer can be megabytes (the default bundle's lists, signed, ~1.6 MB).
const MAX_BUNDLE_BYTES: usize = 32 * 1024 * 1024;
