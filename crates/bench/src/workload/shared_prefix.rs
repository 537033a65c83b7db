//! Shared-prefix workload: the traffic that prefix caching and cache-aware routing exist for.
//!
//! `groups` groups each have a system prompt of `system_prompt_tokens` words; each group has
//! `users_per_group` users holding multi-turn conversations. A user's turn sends the whole
//! history so far (system prompt, their earlier questions and the assistant replies exactly as
//! received) plus a new question of `question_tokens` words, so prompts grow turn by turn and
//! consecutive turns share ever longer prefixes. After `turns` turns a user starts a fresh
//! conversation (same system prompt).
//!
//! A user has at most one turn in flight, since the next turn needs the reply. Arrivals go to
//! the next idle user in round-robin order; if every user is busy (open loop at high rate), a new
//! user joins the groups in turn (user i is in group i mod `groups`), so the arrival schedule is never delayed by the workload.

use std::sync::Arc;

use anyhow::bail;
use serde::Serialize;

use super::{Input, Message, RequestPlan, Role};
use crate::dist::Distribution;
use crate::text;

/// Parameters of the shared-prefix workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SharedPrefixSpec {
    pub groups: u32,
    pub users_per_group: u32,
    pub system_prompt_tokens: u32,
    pub question_tokens: u32,
    pub turns: u32,
    /// `max_tokens` per turn.
    pub output_tokens: Distribution,
}

impl Default for SharedPrefixSpec {
    /// 4 groups × 8 users, 1024-token system prompts, 64-token questions, 4 turns, 128 output tokens.
    fn default() -> Self {
        Self {
            groups: 4,
            users_per_group: 8,
            system_prompt_tokens: 1024,
            question_tokens: 64,
            turns: 4,
            output_tokens: Distribution::Fixed { value: 128 },
        }
    }
}

impl SharedPrefixSpec {
    /// Rejects zero groups, users or turns.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.groups == 0 || self.users_per_group == 0 || self.turns == 0 {
            bail!("shared-prefix needs groups, users-per-group and turns >= 1");
        }
        Ok(())
    }
}

#[derive(Debug)]
struct User {
    /// System prompt, then alternating user/assistant messages of completed turns.
    history: Vec<Message>,
    /// The question of the turn in flight.
    pending: Option<Arc<str>>,
    turn: u32,
}

#[derive(Debug)]
struct TargetState {
    users: Vec<User>,
    cursor: usize,
    rng: fastrand::Rng,
}

/// Running state: conversations per target.
#[derive(Debug)]
pub struct SharedPrefix {
    spec: SharedPrefixSpec,
    system_prompts: Vec<Arc<str>>,
    targets: Vec<TargetState>,
}

impl SharedPrefix {
    /// State for `targets` targets; system prompts are derived from `seed`.
    pub fn new(spec: SharedPrefixSpec, targets: usize, seed: u64) -> Self {
        let system_prompts: Vec<Arc<str>> = (0..spec.groups as u64)
            .map(|g| {
                let mut rng =
                    fastrand::Rng::with_seed(seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(g + 1)));
                let mut s = format!("You are assistant number {g}.");
                text::append_words(
                    &mut s,
                    &mut rng,
                    spec.system_prompt_tokens.saturating_sub(5),
                );
                s.into()
            })
            .collect();
        let targets = (0..targets)
            .map(|_| {
                let mut t = TargetState {
                    users: Vec::new(),
                    cursor: 0,
                    rng: fastrand::Rng::with_seed(seed),
                };
                for u in 0..(spec.groups * spec.users_per_group) as usize {
                    let group = u % spec.groups as usize;
                    t.users.push(User::new(&system_prompts[group]));
                }
                t
            })
            .collect();
        Self {
            spec,
            system_prompts,
            targets,
        }
    }

    /// The next turn for `target`: picks the next idle user (adding one if all are busy).
    pub fn next(&mut self, target: usize) -> RequestPlan {
        let t = &mut self.targets[target];
        let n = t.users.len();
        let idle = (0..n)
            .map(|i| (t.cursor + i) % n)
            .find(|&i| t.users[i].pending.is_none());
        let idx = idle.unwrap_or_else(|| {
            let group = n % self.system_prompts.len();
            t.users.push(User::new(&self.system_prompts[group]));
            n
        });
        t.cursor = (idx + 1) % t.users.len();
        let question: Arc<str> = text::words(&mut t.rng, self.spec.question_tokens).into();
        let max_tokens = self.spec.output_tokens.sample(&mut t.rng);
        let user = &mut t.users[idx];
        let mut messages = user.history.clone();
        messages.push(Message {
            role: Role::User,
            content: question.clone(),
        });
        user.pending = Some(question);
        RequestPlan {
            target,
            input: Input::Chat(messages),
            max_tokens,
            model: None,
            headers: Vec::new(),
            session: Some(idx),
        }
    }

    /// Records the outcome of a turn: on success the question and reply join the history; on
    /// failure the turn is dropped and the user asks a new question next time.
    pub fn complete(&mut self, target: usize, session: usize, reply: Option<&str>) {
        let Some(user) = self
            .targets
            .get_mut(target)
            .and_then(|t| t.users.get_mut(session))
        else {
            return;
        };
        let Some(question) = user.pending.take() else {
            return;
        };
        let Some(reply) = reply else { return };
        user.history.push(Message {
            role: Role::User,
            content: question,
        });
        user.history.push(Message::new(Role::Assistant, reply));
        user.turn += 1;
        if user.turn >= self.spec.turns {
            user.history.truncate(1);
            user.turn = 0;
        }
    }

    /// The system prompt of `group` (for tests and reports).
    pub fn system_prompt(&self, group: usize) -> &str {
        &self.system_prompts[group]
    }
}

impl User {
    fn new(system: &Arc<str>) -> Self {
        Self {
            history: vec![Message {
                role: Role::System,
                content: system.clone(),
            }],
            pending: None,
            turn: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SharedPrefixSpec {
        SharedPrefixSpec {
            groups: 2,
            users_per_group: 2,
            system_prompt_tokens: 50,
            question_tokens: 8,
            turns: 3,
            output_tokens: Distribution::Fixed { value: 16 },
        }
    }

    fn messages(p: &RequestPlan) -> &[Message] {
        match &p.input {
            Input::Chat(m) => m,
            Input::Text(_) => panic!("shared-prefix sends chat"),
        }
    }

    #[test]
    fn groups_share_exact_system_prompts() {
        let mut w = SharedPrefix::new(spec(), 1, 3);
        assert_ne!(w.system_prompt(0), w.system_prompt(1));
        assert_eq!(w.system_prompt(0).split(' ').count(), 50);
        let plans: Vec<_> = (0..4).map(|_| w.next(0)).collect();
        for p in &plans {
            // User i belongs to group i mod groups.
            let group = p.session.unwrap() % 2;
            let m = messages(p);
            assert_eq!(m[0].role, Role::System);
            assert_eq!(&*m[0].content, w.system_prompt(group));
            assert_eq!(m.len(), 2);
        }
        // Users 0 and 2 are in group 0 and must share the very same text.
        assert_eq!(messages(&plans[0])[0], messages(&plans[2])[0]);
        assert_ne!(messages(&plans[0])[0], messages(&plans[1])[0]);
        // Same seed, same prompts.
        assert_eq!(
            SharedPrefix::new(spec(), 1, 3).system_prompt(1),
            w.system_prompt(1)
        );
    }

    #[test]
    fn turns_grow_with_history_and_restart() {
        let mut w = SharedPrefix::new(
            SharedPrefixSpec {
                groups: 1,
                users_per_group: 1,
                ..spec()
            },
            1,
            1,
        );
        let p1 = w.next(0);
        let q1 = messages(&p1)[1].content.clone();
        w.complete(0, p1.session.unwrap(), Some("first reply"));
        let p2 = w.next(0);
        let m2 = messages(&p2);
        assert_eq!(m2.len(), 4);
        assert_eq!((m2[1].role, &m2[1].content), (Role::User, &q1));
        assert_eq!(
            (m2[2].role, &*m2[2].content),
            (Role::Assistant, "first reply")
        );
        assert_eq!(m2[3].role, Role::User);
        w.complete(0, p2.session.unwrap(), Some("second"));
        let p3 = w.next(0);
        assert_eq!(messages(&p3).len(), 6);
        w.complete(0, p3.session.unwrap(), Some("third"));
        // Three turns done: a fresh conversation.
        let p4 = w.next(0);
        assert_eq!(messages(&p4).len(), 2);
        // A failed turn does not grow the history.
        w.complete(0, p4.session.unwrap(), None);
        assert_eq!(messages(&w.next(0)).len(), 2);
    }

    #[test]
    fn busy_users_add_new_users() {
        let mut w = SharedPrefix::new(spec(), 2, 1);
        let sessions: Vec<_> = (0..6).map(|_| w.next(0).session.unwrap()).collect();
        assert_eq!(sessions, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(w.targets[0].users.len(), 6);
        assert_eq!(w.targets[1].users.len(), 4);
        w.complete(0, 1, Some("r"));
        assert_eq!(w.next(0).session, Some(1));
    }
}
