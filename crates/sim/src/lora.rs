//! LoRA adapter residency, after vLLM's LRU adapter cache.
//!
//! At most `max_loras` adapters are resident on the GPU. A request for a resident adapter runs at
//! once; one for an absent adapter needs a load, which vLLM does inside the step before the
//! forward pass, so the load time is added to that step (every request in the batch feels it —
//! the reason routers try to keep an adapter's traffic together). When all slots are taken, the
//! least recently used adapter that no running request is using is unloaded; if every resident
//! adapter is busy, requests for other adapters wait in the queue while others pass them.

/// Index of an adapter in the replica's adapter list.
pub type AdapterId = u16;

/// Which adapters are resident, with LRU order.
#[derive(Debug)]
pub struct LoraManager {
    max_loras: usize,
    /// (adapter, last use tick)
    resident: Vec<(AdapterId, u64)>,
    tick: u64,
}

/// Outcome of [`LoraManager::ensure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// Already resident.
    Resident,
    /// Loaded now (the step pays the load time).
    Loaded,
    /// Cannot be loaded until a busy adapter goes idle.
    Blocked,
}

impl LoraManager {
    /// An empty manager with `max_loras` slots.
    pub fn new(max_loras: usize) -> Self {
        Self {
            max_loras: max_loras.max(1),
            resident: Vec::new(),
            tick: 0,
        }
    }

    /// Whether `id` is resident.
    #[cfg(test)]
    pub fn is_resident(&self, id: AdapterId) -> bool {
        self.resident.iter().any(|&(a, _)| a == id)
    }

    /// Makes `id` resident if possible, evicting the least recently used adapter for which
    /// `busy` is false when all slots are full, and marks it used.
    pub fn ensure(&mut self, id: AdapterId, busy: impl Fn(AdapterId) -> bool) -> Residency {
        self.tick += 1;
        if let Some(slot) = self.resident.iter_mut().find(|(a, _)| *a == id) {
            slot.1 = self.tick;
            return Residency::Resident;
        }
        if self.resident.len() >= self.max_loras {
            let victim = self
                .resident
                .iter()
                .enumerate()
                .filter(|(_, (a, _))| !busy(*a))
                .min_by_key(|(_, (_, t))| *t)
                .map(|(i, _)| i);
            match victim {
                Some(i) => {
                    self.resident.swap_remove(i);
                }
                None => return Residency::Blocked,
            }
        }
        self.resident.push((id, self.tick));
        Residency::Loaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_unloads_idle_adapters_only() {
        let mut m = LoraManager::new(2);
        assert_eq!(m.ensure(0, |_| false), Residency::Loaded);
        assert_eq!(m.ensure(1, |_| false), Residency::Loaded);
        assert_eq!(m.ensure(0, |_| false), Residency::Resident);
        // 1 is least recently used: it goes.
        assert_eq!(m.ensure(2, |_| false), Residency::Loaded);
        assert!(!m.is_resident(1) && m.is_resident(0) && m.is_resident(2));
        // Both busy: adapter 3 must wait.
        assert_eq!(m.ensure(3, |_| true), Residency::Blocked);
        assert_eq!(m.ensure(3, |a| a == 2), Residency::Loaded);
        assert!(m.is_resident(2) && m.is_resident(3));
    }
}
