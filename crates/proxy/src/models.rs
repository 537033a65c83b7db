//! Model names as metric label values, with bounded cardinality that a client cannot squat.
//!
//! The `model` of a request is client input: labelling metrics with it as sent would let any
//! client mint series without end, and a fixed budget filled first-come would let a client use
//! it up so that models configured later land in `other`. So there are two kinds of label:
//!
//! - **Pinned**: names the config gives (`match.model` without `*`, `rewrite.model`,
//!   `backends[].model`), pinned when a generation is built (a reload's new names included) and
//!   never evicted. The operator bounds them by writing the config.
//! - **Shared**: other names an upstream answered with a 2xx (a model some server really
//!   serves, reached through a wildcard or an `inference` pool). They share
//!   [`SHARED_MODEL_LABELS`] slots. A new name takes a free slot, else the least recently used
//!   one if it has been idle for [`SHARED_MIN_IDLE`]; else it counts as `other`. The idle floor
//!   is what keeps a flood of junk names from churning out a model in steady use: junk takes
//!   free slots and then waits as `other` like everyone else. An evicted name's series are
//!   removed from the exposition, so the bound holds for what Prometheus sees too.
//!
//! The request path indexes per-id handles ([`ModelCells`], resolved once per config generation
//! like `RouteMetrics`) instead of hashing label sets. A shared slot is reused by a later name,
//! so its id carries the slot's generation, and a cached handle is used only for the generation
//! it was made for: an evicted name's counters never count under its successor.
//!
//! Reads are lock-free (`ArcSwap`); pinning, admitting or evicting a name takes a mutex and
//! copies the table. Past the shared cap, an unknown name costs a lock only once
//! [`SHARED_MIN_IDLE`] could have freed a slot (`next_free_at`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use switchyard_telemetry::metrics::ModelEndpointLabels;
use switchyard_telemetry::Metrics;

/// Label slots shared by model names the config does not give.
pub const SHARED_MODEL_LABELS: usize = 32;

/// How long a shared name must go unused before a new name may take its slot.
pub const SHARED_MIN_IDLE: Duration = Duration::from_secs(300);

/// The label of models with no label of their own.
pub const OTHER_MODEL: &str = "other";

/// A model's label: `other`, a pinned (configured) name, or a shared slot at a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelId {
    Other,
    Pinned(u32),
    Shared { slot: u16, generation: u32 },
}

/// Removes the series made for a shared name when its slot is evicted.
pub type SeriesRemover = Box<dyn FnOnce() + Send>;

#[derive(Clone, Default)]
struct SharedSlot {
    name: Option<Arc<str>>,
    generation: u32,
}

#[derive(Clone)]
struct Table {
    ids: HashMap<Arc<str>, ModelId>,
    pinned: Vec<Arc<str>>,
    shared: Vec<SharedSlot>,
}

/// Guarded by the write lock: per shared slot, how to remove the series made for its name.
struct Removers(Vec<Vec<SeriesRemover>>);

/// The process's model label values (shared by every config generation, so ids are stable).
pub struct ModelLabels {
    table: ArcSwap<Table>,
    write: Mutex<Removers>,
    epoch: Instant,
    /// Per shared slot: when its name was last used (ms since `epoch`).
    last_used: Box<[AtomicU64]>,
    /// No shared slot can be taken before this (ms since `epoch`); 0 while one is free.
    next_free_at: AtomicU64,
}

impl Default for ModelLabels {
    fn default() -> Self {
        Self::new()
    }
}

impl ModelLabels {
    pub fn new() -> Self {
        let table = Table {
            ids: HashMap::new(),
            pinned: Vec::new(),
            shared: vec![SharedSlot::default(); SHARED_MODEL_LABELS],
        };
        Self {
            table: ArcSwap::from_pointee(table),
            write: Mutex::new(Removers(
                (0..SHARED_MODEL_LABELS).map(|_| Vec::new()).collect(),
            )),
            epoch: Instant::now(),
            last_used: (0..SHARED_MODEL_LABELS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            next_free_at: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Removers> {
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The id of `model` if it has a label of its own now.
    pub fn get(&self, model: &str) -> Option<ModelId> {
        self.table.load().ids.get(model).copied()
    }

    /// How many names are pinned (the size of a generation's pinned cells).
    pub fn pinned_len(&self) -> usize {
        self.table.load().pinned.len()
    }

    /// Give a config-named model a label for the life of the process. A name already in a
    /// shared slot moves out of it (its series keep their label, so they are not removed).
    pub fn pin(&self, model: &str) -> ModelId {
        let mut removers = self.lock();
        let current = self.table.load_full();
        let slot = match current.ids.get(model) {
            Some(id @ ModelId::Pinned(_)) => return *id,
            Some(ModelId::Shared { slot, .. }) => Some(usize::from(*slot)),
            _ => None,
        };
        let mut table = Table::clone(&current);
        if let Some(slot) = slot {
            removers.0[slot].clear();
            let s = &mut table.shared[slot];
            s.name = None;
            s.generation = s.generation.wrapping_add(1);
            self.next_free_at.store(0, Ordering::Relaxed);
        }
        let id = ModelId::Pinned(table.pinned.len() as u32);
        let name: Arc<str> = Arc::from(model);
        table.pinned.push(name.clone());
        table.ids.insert(name, id);
        self.table.store(Arc::new(table));
        id
    }

    /// The id of a model an upstream served (the request path): its label if it has one, else a
    /// shared slot if one is free or idle long enough, else `other`.
    pub fn intern(&self, model: &str) -> ModelId {
        match self.table.load().ids.get(model) {
            Some(ModelId::Shared { .. }) | None => {}
            Some(id) => return *id,
        }
        self.intern_at(model, self.now_ms())
    }

    /// [`ModelLabels::intern`] at `now` (ms since `epoch`), for names without a pinned label.
    fn intern_at(&self, model: &str, now: u64) -> ModelId {
        match self.table.load().ids.get(model) {
            Some(id @ ModelId::Shared { slot, .. }) => {
                // Written at most once a millisecond, so busy workers do not fight over the line.
                let used = &self.last_used[usize::from(*slot)];
                if used.load(Ordering::Relaxed) != now {
                    used.store(now, Ordering::Relaxed);
                }
                *id
            }
            Some(id) => *id,
            None => self.admit(model, now),
        }
    }

    /// A name with no label yet, at `now` (ms since `epoch`).
    fn admit(&self, model: &str, now: u64) -> ModelId {
        if now < self.next_free_at.load(Ordering::Relaxed) {
            return ModelId::Other;
        }
        let mut removers = self.lock();
        let current = self.table.load_full();
        if let Some(id) = current.ids.get(model) {
            return *id;
        }
        let free = current.shared.iter().position(|s| s.name.is_none());
        let slot = free.or_else(|| {
            let (slot, used) = (0..current.shared.len())
                .map(|i| (i, self.last_used[i].load(Ordering::Relaxed)))
                .min_by_key(|(_, used)| *used)?;
            let free_at = used.saturating_add(SHARED_MIN_IDLE.as_millis() as u64);
            if now < free_at {
                self.next_free_at.store(free_at, Ordering::Relaxed);
                None
            } else {
                Some(slot)
            }
        });
        let Some(slot) = slot else {
            return ModelId::Other;
        };
        let mut table = Table::clone(&current);
        let s = &mut table.shared[slot];
        if let Some(old) = s.name.take() {
            table.ids.remove(&old);
        }
        s.generation = s.generation.wrapping_add(1);
        let id = ModelId::Shared {
            slot: slot as u16,
            generation: s.generation,
        };
        let name: Arc<str> = Arc::from(model);
        s.name = Some(name.clone());
        table.ids.insert(name, id);
        self.last_used[slot].store(now, Ordering::Relaxed);
        self.table.store(Arc::new(table));
        // The evicted name is out of the table: its series go (new ones for it are removed at
        // registration, see `on_evict`).
        for remove in removers.0[slot].drain(..) {
            remove();
        }
        id
    }

    /// The label value of `id`, or `None` for a shared slot that has moved on since.
    pub fn label(&self, id: ModelId) -> Option<Arc<str>> {
        let table = self.table.load();
        match id {
            ModelId::Other => Some(Arc::from(OTHER_MODEL)),
            ModelId::Pinned(i) => table.pinned.get(i as usize).cloned(),
            ModelId::Shared { slot, generation } => table
                .shared
                .get(usize::from(slot))
                .filter(|s| s.generation == generation)
                .and_then(|s| s.name.clone()),
        }
    }

    /// The label value of `id` (`other` for a stale shared id).
    pub fn name(&self, id: ModelId) -> Arc<str> {
        self.label(id).unwrap_or_else(|| Arc::from(OTHER_MODEL))
    }

    /// Run `remove` when the shared `id` (made for `name`) is evicted; at once if it already
    /// was and `name` has no label now (a series made just as its slot moved on).
    fn on_evict(&self, id: ModelId, name: &str, remove: SeriesRemover) {
        let ModelId::Shared { slot, generation } = id else {
            return;
        };
        let mut removers = self.lock();
        let table = self.table.load();
        if table.shared[usize::from(slot)].generation == generation {
            removers.0[usize::from(slot)].push(remove);
        } else if !table.ids.contains_key(name) {
            remove();
        }
    }
}

/// Per-model handles of one label set, resolved on first use: pinned names and `other` in
/// `OnceLock`s, shared slots tagged with the generation they were made for.
pub struct ModelCells<T> {
    other: OnceLock<T>,
    /// Sized on first use to the names pinned by then.
    pinned: OnceLock<Box<[OnceLock<T>]>>,
    shared: Box<[ArcSwapOption<(u32, T)>]>,
}

impl<T: Clone> Default for ModelCells<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> ModelCells<T> {
    /// Empty cells. The pinned ones are sized at first use to the names pinned by then, which
    /// covers the generation's config (pinned before it is built); a name pinned by a later
    /// reload is resolved on each use here until its own generation takes over.
    pub fn new() -> Self {
        Self {
            other: OnceLock::new(),
            pinned: OnceLock::new(),
            shared: (0..SHARED_MODEL_LABELS)
                .map(|_| ArcSwapOption::empty())
                .collect(),
        }
    }

    /// The handles of `id`, made by `make(label)` on first use; `make` also says how to remove
    /// the series it made, for when a shared name is evicted.
    pub fn get(
        &self,
        id: ModelId,
        labels: &ModelLabels,
        make: impl FnOnce(&str) -> (T, SeriesRemover),
    ) -> T {
        match id {
            ModelId::Other => self.other.get_or_init(|| make(OTHER_MODEL).0).clone(),
            ModelId::Pinned(i) => {
                let pinned = self
                    .pinned
                    .get_or_init(|| (0..labels.pinned_len()).map(|_| OnceLock::new()).collect());
                if let Some(cell) = pinned.get(i as usize) {
                    return cell.get_or_init(|| make(&labels.name(id)).0).clone();
                }
                match labels.label(id) {
                    Some(name) => make(&name).0,
                    None => self.get(ModelId::Other, labels, make),
                }
            }
            ModelId::Shared { slot, generation } => {
                let cell = &self.shared[usize::from(slot)];
                if let Some(c) = &*cell.load() {
                    if c.0 == generation {
                        return c.1.clone();
                    }
                }
                let Some(name) = labels.label(id) else {
                    return self.get(ModelId::Other, labels, make);
                };
                let (value, remove) = make(&name);
                cell.store(Some(Arc::new((generation, value.clone()))));
                labels.on_evict(id, &name, remove);
                value
            }
        }
    }
}

/// Histograms of streamed responses for one (model, pool, endpoint).
#[derive(Clone)]
pub struct ModelStreamMetrics {
    pub ttft: Histogram,
    pub itl: Histogram,
    pub output_tokens: Histogram,
    pub tokens_per_second: Histogram,
}

type HistogramFamily = Family<ModelEndpointLabels, Histogram, fn() -> Histogram>;

/// A pool's per-endpoint, per-model stream histograms, each resolved on first use in a
/// generation.
pub struct PoolModelMetrics {
    pool: String,
    endpoints: Vec<String>,
    families: [HistogramFamily; 4],
    cells: Box<[ModelCells<ModelStreamMetrics>]>,
}

impl PoolModelMetrics {
    pub fn new(metrics: &Metrics, pool: &str, endpoints: Vec<String>) -> Self {
        let cells = endpoints.iter().map(|_| ModelCells::new()).collect();
        Self {
            pool: pool.to_string(),
            endpoints,
            families: [
                metrics.inference_ttft.clone(),
                metrics.inference_itl.clone(),
                metrics.inference_output_tokens.clone(),
                metrics.inference_tokens_per_second.clone(),
            ],
            cells,
        }
    }

    /// The histograms for endpoint `index` and `model`.
    pub fn get(&self, index: usize, model: ModelId, labels: &ModelLabels) -> ModelStreamMetrics {
        self.cells[index].get(model, labels, |name| {
            let labels = ModelEndpointLabels {
                model: name.to_string(),
                pool: self.pool.clone(),
                endpoint: self.endpoints[index].clone(),
            };
            let [ttft, itl, output_tokens, tokens_per_second] = self
                .families
                .each_ref()
                .map(|f| f.get_or_create(&labels).clone());
            let families = self.families.clone();
            let remove: SeriesRemover = Box::new(move || {
                for f in &families {
                    f.remove(&labels);
                }
            });
            let m = ModelStreamMetrics {
                ttft,
                itl,
                output_tokens,
                tokens_per_second,
            };
            (m, remove)
        })
    }
}

/// The model a request names, as the upstream sees it and as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestModel {
    /// Sent upstream (after any rewrite); the `model` metric label and access log field.
    pub model: Arc<str>,
    /// What the client asked for, when a rewrite changed it.
    pub original: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    const IDLE_MS: u64 = SHARED_MIN_IDLE.as_millis() as u64;

    #[test]
    fn configured_names_keep_their_label_through_a_flood() {
        let m = ModelLabels::new();
        let a = m.pin("llama");
        assert_eq!(a, ModelId::Pinned(0));
        assert_eq!(m.pin("llama"), a);
        let flood: Vec<_> = (0..100).map(|i| m.intern(&format!("junk-{i}"))).collect();
        let shared = flood
            .iter()
            .filter(|id| matches!(id, ModelId::Shared { .. }))
            .count();
        assert_eq!(shared, SHARED_MODEL_LABELS);
        assert!(flood[SHARED_MODEL_LABELS..]
            .iter()
            .all(|id| *id == ModelId::Other));
        // A model configured by a later reload gets its own label regardless.
        let late = m.pin("late");
        assert_eq!(late, ModelId::Pinned(1));
        assert_eq!(m.intern("late"), late);
        assert_eq!(&*m.name(late), "late");
        assert_eq!(m.intern("llama"), a);
        assert_eq!(m.intern("junk-99"), ModelId::Other);
        assert_eq!(&*m.name(ModelId::Other), OTHER_MODEL);
    }

    #[test]
    fn a_shared_slot_goes_to_a_new_name_only_after_its_name_idles() {
        let m = ModelLabels::new();
        let ids: Vec<_> = (0..SHARED_MODEL_LABELS)
            .map(|i| m.intern_at(&format!("n{i}"), i as u64))
            .collect();
        // `n0` is the least recently used until it is used again.
        assert_eq!(m.intern_at("n0", 100), ids[0]);
        assert_eq!(m.intern_at("new", IDLE_MS), ModelId::Other);
        // `n1` (last used at 1 ms) is the oldest; it idles out at IDLE_MS + 1.
        let new = m.intern_at("new", IDLE_MS + 1);
        let ModelId::Shared { slot, generation } = new else {
            panic!("expected a shared slot, got {new:?}");
        };
        assert_eq!(
            ModelId::Shared {
                slot,
                generation: generation - 1
            },
            ids[1]
        );
        assert_eq!(m.get("n1"), None);
        assert_eq!(m.label(ids[1]), None, "a stale id has no label");
        assert_eq!(&*m.name(ids[1]), OTHER_MODEL);
        // Everything else is fresh enough: the next new name waits as `other`.
        assert_eq!(m.intern_at("newer", IDLE_MS + 1), ModelId::Other);
        assert_eq!(m.intern_at("n0", IDLE_MS + 1), ids[0]);
    }

    #[test]
    fn cached_handles_follow_the_slot_generation_and_evicted_series_are_removed() {
        let m = ModelLabels::new();
        let cells: ModelCells<String> = ModelCells::new();
        let removed = Arc::new(Mutex::new(Vec::new()));
        let made = AtomicUsize::new(0);
        let get = |id| {
            cells.get(id, &m, |name| {
                made.fetch_add(1, Ordering::Relaxed);
                let (removed, label) = (removed.clone(), name.to_string());
                let remove: SeriesRemover = Box::new(move || removed.lock().unwrap().push(label));
                (name.to_string(), remove)
            })
        };
        let first = m.intern_at("first", 0);
        assert_eq!(get(first), "first");
        assert_eq!(get(first), "first");
        assert_eq!(made.load(Ordering::Relaxed), 1, "resolved once");
        for i in 1..SHARED_MODEL_LABELS {
            m.intern_at(&format!("n{i}"), IDLE_MS);
        }
        // `first` idles out; its slot goes to `second`, and its series with it.
        let second = m.intern_at("second", IDLE_MS + 1);
        assert!(
            matches!(second, ModelId::Shared { slot: 0, .. }),
            "{second:?}"
        );
        assert_eq!(*removed.lock().unwrap(), ["first"]);
        assert_eq!(get(second), "second");
        // A request that resolved `first` before the eviction counts as `other`, never as
        // `second`.
        assert_eq!(get(first), OTHER_MODEL);
        assert_eq!(get(second), "second");
    }

    #[test]
    fn pinning_a_shared_name_frees_its_slot_and_keeps_its_series() {
        let m = ModelLabels::new();
        let cells: ModelCells<u8> = ModelCells::new();
        let removed = Arc::new(AtomicUsize::new(0));
        let shared = m.intern("m");
        m.pin("before");
        assert_eq!(
            cells.get(ModelId::Pinned(0), &m, |_| (0, Box::new(|| {}))),
            0
        );
        let r = removed.clone();
        cells.get(shared, &m, |_| {
            let remove: SeriesRemover = Box::new(move || {
                r.fetch_add(1, Ordering::Relaxed);
            });
            (1, remove)
        });
        let pinned = m.pin("m");
        assert_eq!(pinned, ModelId::Pinned(1));
        assert_eq!(m.intern("m"), pinned);
        assert_eq!(m.label(shared), None);
        // The freed slot is taken by the next name; the pinned name's series stay.
        assert!(matches!(m.intern("n"), ModelId::Shared { .. }));
        assert_eq!(removed.load(Ordering::Relaxed), 0);
        // Cells sized before the pin still resolve the new pinned id (uncached).
        assert_eq!(cells.get(pinned, &m, |_| (2, Box::new(|| {}))), 2);
        assert_eq!(cells.get(pinned, &m, |_| (3, Box::new(|| {}))), 3);
    }
}
