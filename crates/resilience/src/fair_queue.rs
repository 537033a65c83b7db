//! The waiting room in front of a concurrency limit: strict priority between levels, round
//! robin between tenants within a level.
//!
//! A FIFO queue is fair to requests, not to the people sending them: a tenant that fires a
//! thousand requests puts a thousand entries ahead of a tenant that sends one, and the light
//! tenant waits for all of them (or times out). Fair queueing (Demers, Keshav and Shenker,
//! "Analysis and Simulation of a Fair Queueing Algorithm", 1989) gives each active flow its
//! turn instead; with equal costs per entry, deficit round robin (Shreedhar and Varghese, 1995)
//! reduces to plain round robin over the tenants that have someone waiting, which is what this
//! is. A newly active tenant joins the back of the ring, so a request waits for at most one
//! grant per other active tenant of its level, however deep their queues are. Kubernetes API
//! Priority and Fairness and the Gateway API Inference Extension's flow control take the same
//! shape: priority levels served strictly in order, fairness between flows within a level.
//!
//! Costs are counted in requests, not tokens: admission happens before the body is read, and a
//! request's real cost (its output length) is unknown until it ends.
//!
//! Plain data, no locking and no time: the limiter owns one under its lock.

use std::collections::{HashMap, VecDeque};

/// Priority levels the queue keeps apart; a higher level is always served first.
pub const PRIORITY_LEVELS: usize = 3;

/// Who is asking, for queueing: a priority level (`0..PRIORITY_LEVELS`, higher served first;
/// larger values count as the top level) and a tenant (an opaque hash; 0 for requests with no
/// identity, which then share one turn).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueClass {
    pub priority: u8,
    pub tenant: u64,
}

impl QueueClass {
    /// The middle level, for callers that do not distinguish priorities.
    pub const STANDARD: u8 = 1;

    fn level(self) -> usize {
        usize::from(self.priority).min(PRIORITY_LEVELS - 1)
    }
}

impl Default for QueueClass {
    /// Standard priority, anonymous tenant.
    fn default() -> Self {
        QueueClass {
            priority: Self::STANDARD,
            tenant: 0,
        }
    }
}

#[derive(Debug)]
struct Level<T> {
    /// Tenants with at least one waiter, in turn order.
    ring: VecDeque<u64>,
    /// Each tenant's waiters (id, item), oldest first; absent when it has none.
    tenants: HashMap<u64, VecDeque<(u64, T)>>,
    len: usize,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Level {
            ring: VecDeque::new(),
            tenants: HashMap::new(),
            len: 0,
        }
    }
}

/// Waiters by priority level and tenant.
#[derive(Debug)]
pub(crate) struct FairQueue<T> {
    levels: [Level<T>; PRIORITY_LEVELS],
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            levels: std::array::from_fn(|_| Level::default()),
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Waiters at each level, lowest level first.
    pub(crate) fn len_by_level(&self) -> [usize; PRIORITY_LEVELS] {
        std::array::from_fn(|i| self.levels[i].len)
    }

    /// Tenants with someone waiting, over all levels (a tenant at two levels counts twice).
    pub(crate) fn tenants(&self) -> usize {
        self.levels.iter().map(|l| l.ring.len()).sum()
    }

    /// Waiters `class`'s tenant has at `class`'s level.
    pub(crate) fn tenant_len(&self, class: QueueClass) -> usize {
        self.levels[class.level()]
            .tenants
            .get(&class.tenant)
            .map_or(0, VecDeque::len)
    }

    /// Queue `item` (known by `id`) at the back of its tenant's line.
    pub(crate) fn push(&mut self, class: QueueClass, id: u64, item: T) {
        let level = &mut self.levels[class.level()];
        let line = level.tenants.entry(class.tenant).or_default();
        if line.is_empty() {
            level.ring.push_back(class.tenant);
        }
        line.push_back((id, item));
        level.len += 1;
        self.len += 1;
    }

    /// The next waiter: the highest level with anyone waiting, the tenant whose turn it is
    /// there, that tenant's oldest waiter. The tenant then goes to the back of the ring.
    pub(crate) fn pop(&mut self) -> Option<T> {
        let level = self.levels.iter_mut().rev().find(|l| l.len > 0)?;
        let tenant = level.ring.pop_front()?;
        let line = level.tenants.get_mut(&tenant)?;
        let (_, item) = line.pop_front()?;
        if line.is_empty() {
            level.tenants.remove(&tenant);
        } else {
            level.ring.push_back(tenant);
        }
        level.len -= 1;
        self.len -= 1;
        Some(item)
    }

    /// Take waiter `id` of `class` out of the queue (it gave up); `None` if it is not there.
    pub(crate) fn remove(&mut self, class: QueueClass, id: u64) -> Option<T> {
        let level = &mut self.levels[class.level()];
        let line = level.tenants.get_mut(&class.tenant)?;
        let pos = line.iter().position(|(i, _)| *i == id)?;
        let (_, item) = line.remove(pos)?;
        if line.is_empty() {
            level.tenants.remove(&class.tenant);
            level.ring.retain(|t| *t != class.tenant);
        }
        level.len -= 1;
        self.len -= 1;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(priority: u8, tenant: u64) -> QueueClass {
        QueueClass { priority, tenant }
    }

    fn drain(q: &mut FairQueue<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn tenants_take_turns_within_a_level() {
        let mut q = FairQueue::default();
        for (id, name) in ["a1", "a2", "a3", "a4"].into_iter().enumerate() {
            q.push(class(1, 1), id as u64, name);
        }
        q.push(class(1, 2), 10, "b1");
        q.push(class(1, 2), 11, "b2");
        q.push(class(1, 3), 20, "c1");
        assert_eq!((q.len(), q.tenants(), q.tenant_len(class(1, 1))), (7, 3, 4));
        assert_eq!(drain(&mut q), ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]);
        assert!(q.is_empty());
        assert_eq!(q.tenants(), 0);
    }

    #[test]
    fn a_newly_active_tenant_waits_one_turn_per_other_tenant() {
        let mut q = FairQueue::default();
        for id in 0..100 {
            q.push(class(1, 1), id, "flood");
        }
        assert_eq!(q.pop(), Some("flood"));
        q.push(class(1, 2), 1000, "light");
        assert_eq!(q.pop(), Some("flood"));
        assert_eq!(q.pop(), Some("light"));
    }

    #[test]
    fn higher_levels_first_and_out_of_range_levels_are_the_top() {
        let mut q = FairQueue::default();
        q.push(class(0, 1), 1, "low");
        q.push(class(1, 1), 2, "standard");
        q.push(class(200, 2), 3, "critical");
        assert_eq!(q.len_by_level(), [1, 1, 1]);
        assert_eq!(drain(&mut q), ["critical", "standard", "low"]);
    }

    #[test]
    fn removing_the_last_waiter_of_a_tenant_ends_its_turns() {
        let mut q = FairQueue::default();
        q.push(class(1, 1), 1, "a1");
        q.push(class(1, 2), 2, "b1");
        q.push(class(1, 1), 3, "a2");
        assert_eq!(q.remove(class(1, 2), 2), Some("b1"));
        assert_eq!(q.remove(class(1, 2), 2), None);
        assert_eq!(q.remove(class(2, 1), 1), None, "wrong level");
        assert_eq!(q.tenants(), 1);
        assert_eq!(drain(&mut q), ["a1", "a2"]);
    }
}
