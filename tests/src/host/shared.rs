//! Process-wide state that worker VMs share: shared data with CAS, and shared queues.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::Status;

/// Process-wide shared data and queues (one per simulated Envoy process): clone one into every
/// worker VM's [`super::VmOptions`].
#[derive(Debug, Default, Clone)]
pub struct SharedData {
    inner: Arc<SharedInner>,
}

/// Key → (value, CAS).
type SharedMap = HashMap<Vec<u8>, (Vec<u8>, u32)>;

#[derive(Debug, Default)]
struct SharedInner {
    map: Mutex<SharedMap>,
    cas: AtomicU32,
    queues: Mutex<Queues>,
    vm_keys: AtomicU64,
}

#[derive(Debug, Default)]
struct Queues {
    /// (vm_id, name) → token.
    tokens: HashMap<(Vec<u8>, Vec<u8>), u32>,
    queues: HashMap<u32, Queue>,
    last_token: u32,
}

#[derive(Debug)]
struct Queue {
    /// The VM whose root context registered the queue last, and that root context.
    owner_vm: u64,
    owner_root: i32,
    items: VecDeque<Vec<u8>>,
    /// Enqueues not yet announced with `on_queue_ready`.
    unannounced: u32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another test thread panicked; the data is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SharedData {
    /// Number of keys stored (shared data never deletes).
    pub fn len(&self) -> usize {
        lock(&self.inner.map).len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A key that names one VM (the owner of the queues it registers).
    pub(crate) fn new_vm_key(&self) -> u64 {
        self.inner.vm_keys.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn next_cas(&self) -> u32 {
        // One global counter starting at 1; 0 is skipped on wrap.
        loop {
            let v = self
                .inner
                .cas
                .fetch_add(1, Ordering::SeqCst)
                .wrapping_add(1);
            if v != 0 {
                return v;
            }
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        lock(&self.inner.map).get(key).cloned()
    }

    /// `cas = 0` writes unconditionally, a missing key ignores the CAS, a stale one is refused.
    pub(crate) fn set(&self, key: Vec<u8>, value: Vec<u8>, cas: u32) -> Status {
        let mut map = lock(&self.inner.map);
        match map.get(&key) {
            Some((_, current)) if cas != 0 && *current != cas => Status::CasMismatch,
            _ => {
                map.insert(key, (value, self.next_cas()));
                Status::Ok
            }
        }
    }

    /// Registers (or takes over) the queue `(vm_id, name)` for a VM's root context.
    pub(crate) fn register_queue(&self, vm_id: &[u8], name: &[u8], vm: u64, root: i32) -> u32 {
        let mut q = lock(&self.inner.queues);
        let key = (vm_id.to_vec(), name.to_vec());
        let token = match q.tokens.get(&key) {
            Some(t) => *t,
            None => {
                q.last_token = q.last_token.wrapping_add(1).max(1);
                let t = q.last_token;
                q.tokens.insert(key, t);
                t
            }
        };
        let queue = q.queues.entry(token).or_insert(Queue {
            owner_vm: vm,
            owner_root: root,
            items: VecDeque::new(),
            unannounced: 0,
        });
        queue.owner_vm = vm;
        queue.owner_root = root;
        token
    }

    pub(crate) fn resolve_queue(&self, vm_id: &[u8], name: &[u8]) -> Option<u32> {
        lock(&self.inner.queues)
            .tokens
            .get(&(vm_id.to_vec(), name.to_vec()))
            .copied()
    }

    pub(crate) fn enqueue(&self, token: u32, item: Vec<u8>) -> Status {
        let mut q = lock(&self.inner.queues);
        match q.queues.get_mut(&token) {
            Some(queue) => {
                queue.items.push_back(item);
                queue.unannounced = queue.unannounced.saturating_add(1);
                Status::Ok
            }
            None => Status::NotFound,
        }
    }

    pub(crate) fn dequeue(&self, token: u32) -> Result<Vec<u8>, Status> {
        let mut q = lock(&self.inner.queues);
        match q.queues.get_mut(&token) {
            Some(queue) => queue.items.pop_front().ok_or(Status::Empty),
            None => Err(Status::NotFound),
        }
    }

    /// The `(root context, token)` announcements due to a VM, one per enqueue since the last call.
    pub(crate) fn take_announcements(&self, vm: u64) -> Vec<(i32, u32)> {
        let mut q = lock(&self.inner.queues);
        let mut out = Vec::new();
        for (token, queue) in q.queues.iter_mut() {
            if queue.owner_vm == vm {
                for _ in 0..queue.unannounced {
                    out.push((queue.owner_root, *token));
                }
                queue.unannounced = 0;
            }
        }
        out.sort_unstable_by_key(|(_, t)| *t);
        out
    }
}
