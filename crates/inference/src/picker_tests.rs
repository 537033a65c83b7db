use std::net::SocketAddr;

use proptest::prelude::*;
use switchyard_balance::EndpointState;

use super::*;
use crate::request::prompt_block_hashes;
use crate::signals::{LoraState, ScrapedMetrics};

fn endpoints(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| {
            let addr: SocketAddr = format!("127.0.0.1:{}", 9000 + i).parse().unwrap();
            Endpoint {
                state: Arc::new(EndpointState::new(addr)),
                weight: 1,
                zone: None,
                region: None,
            }
        })
        .collect()
}

fn scraped(waiting: f64, kv: f64) -> ScrapedMetrics {
    ScrapedMetrics {
        waiting: Some(waiting),
        running: Some(4.0),
        kv_usage: Some(kv),
        num_gpu_blocks: Some(10_000),
        lora: None,
        models: None,
        prefix_cache: None,
    }
}

fn setup(loads: &[(f64, f64)]) -> (Vec<Endpoint>, InferencePicker, Instant) {
    setup_with(PickerConfig::default(), loads)
}

fn setup_with(
    config: PickerConfig,
    loads: &[(f64, f64)],
) -> (Vec<Endpoint>, InferencePicker, Instant) {
    let now = Instant::now();
    let signals: Vec<_> = loads
        .iter()
        .map(|&(w, kv)| {
            let s = Arc::new(EndpointSignals::new());
            s.apply_scrape(&scraped(w, kv), now);
            s
        })
        .collect();
    let picker = InferencePicker::new(config, signals, Arc::new(PrefixIndex::new()));
    (endpoints(loads.len()), picker, now)
}

fn prompt(seed: &str) -> String {
    format!("{seed} ").repeat(400)
}

#[test]
fn prefers_the_endpoint_holding_the_prefix_when_loads_are_equal() {
    let (eps, picker, now) = setup(&[(2.0, 0.3); 4]);
    let hashes = prompt_block_hashes(&prompt("system prompt"), 16);
    picker.prefix_index().record(2, &hashes);
    let req = RequestContext {
        block_hashes: &hashes,
        est_tokens: 1000,
        ..Default::default()
    };
    for _ in 0..50 {
        assert_eq!(picker.pick_at(&eps, &req, now).index, Some(2));
    }
    // A prompt nobody holds: without KV events owners are off unless set, so near-equal
    // scores are broken at random, as they are without a prompt at all.
    let other = prompt_block_hashes(&prompt("another"), 16);
    let req = RequestContext {
        block_hashes: &other,
        ..Default::default()
    };
    for req in [req, RequestContext::default()] {
        let mut seen = [false; 4];
        for _ in 0..200 {
            seen[picker.pick_at(&eps, &req, now).index.unwrap()] = true;
        }
        assert_eq!(seen, [true; 4], "near-equal scores are broken at random");
    }
    // With a band (several gateways without events set one), it goes to its owner
    // (prefix_owner.rs), the same on another picker (another gateway replica) that has seen
    // nothing at all.
    let mut config = PickerConfig::default();
    config.weights.prefix_owner = Some(0.5);
    let (eps, picker, now) = setup_with(config.clone(), &[(2.0, 0.3); 4]);
    let first = picker.pick_at(&eps, &req, now).index;
    let (eps2, replica, now2) = setup_with(config, &[(2.0, 0.3); 4]);
    for _ in 0..50 {
        assert_eq!(picker.pick_at(&eps, &req, now).index, first);
        assert_eq!(replica.pick_at(&eps2, &req, now2).index, first);
    }
}

#[test]
fn a_prefix_whose_blocks_are_gone_goes_back_where_this_gateway_sent_it() {
    // Four engines publishing KV events, none holding anything: the one this gateway sent the
    // prompt to has restarted (a fresh connection clears its entries).
    let (eps, picker, now) = setup(&[(2.0, 0.3); 4]);
    let kv = Arc::new(KvIndex::new(4, 16, Duration::from_secs(1)));
    for e in 0..4 {
        kv.on_connect(e);
    }
    let picker = picker.with_kv_index(kv);
    let hashes = prompt_block_hashes(&prompt("system prompt"), 16);
    let tokens: Vec<u64> = (0..hashes.len() as u64).collect();
    let req = RequestContext {
        block_hashes: &hashes,
        token_blocks: &tokens,
        est_tokens: 1000,
        ..Default::default()
    };
    // Unheld everywhere and never sent: its owner by hash, every time.
    let by_hash = picker.pick_at(&eps, &req, now).index.unwrap();
    let sent = (by_hash + 1) % 4;
    picker.prefix_index().record(sent, &hashes);
    for _ in 0..50 {
        let d = picker.pick_at(&eps, &req, now);
        assert_eq!(d.index, Some(sent));
        assert_eq!(d.prefix, PrefixOutcome::Unheld, "no hit is credited");
    }
}

#[test]
fn sticky_until_saturated() {
    let (eps, picker, now) = setup(&[(0.0, 0.2), (0.0, 0.2)]);
    let hashes = prompt_block_hashes(&prompt("shared"), 16);
    let req = RequestContext {
        block_hashes: &hashes,
        est_tokens: 500,
        ..Default::default()
    };
    let d = picker.pick_at(&eps, &req, now);
    assert_eq!(d.prefix, PrefixOutcome::Unheld);
    let first = d.index.unwrap();
    picker.record(first, &req);
    // Moderate extra load on the holder does not move the prefix.
    picker.signals[first].apply_scrape(&scraped(20.0, 0.5), now);
    for _ in 0..20 {
        let d = picker.pick_at(&eps, &req, now);
        assert_eq!((d.index, d.prefix), (Some(first), PrefixOutcome::Holder));
    }
    // Saturated (queue over the threshold): the prefix moves.
    picker.signals[first].apply_scrape(&scraped(500.0, 0.5), now);
    let d = picker.pick_at(&eps, &req, now);
    assert_eq!(d.index, Some(1 - first));
    assert_eq!(d.prefix, PrefixOutcome::HolderSaturated);
    assert!(!d.saturated);
    // Both saturated: still picks, and says so.
    picker.signals[1 - first].apply_scrape(&scraped(300.0, 0.5), now);
    let d = picker.pick_at(&eps, &req, now);
    assert!(d.saturated);
    assert!(d.index.is_some());
}

#[test]
fn saturation_thresholds_are_settings_and_a_load_driven_move_is_told_apart() {
    let (eps, _, now) = setup(&[(0.0, 0.95), (0.0, 0.2)]);
    let hashes = prompt_block_hashes(&prompt("kv-heavy"), 16);
    let req = RequestContext {
        block_hashes: &hashes,
        est_tokens: 500,
        ..Default::default()
    };
    let with = |max_kv_usage: f64, waiting: f64| {
        let signals = (0..2).map(|_| Arc::new(EndpointSignals::new())).collect();
        let config = PickerConfig {
            max_kv_usage,
            ..PickerConfig::default()
        };
        let p = InferencePicker::new(config, signals, Arc::new(PrefixIndex::new()));
        p.signals[0].apply_scrape(&scraped(waiting, 0.95), now);
        p.signals[1].apply_scrape(&scraped(0.0, 0.2), now);
        p.prefix_index().record(0, &hashes);
        p
    };
    // At 0.9, the holder's 95% KV usage leaves it out.
    let d = with(0.9, 0.0).pick_at(&eps, &req, now);
    assert_eq!(
        (d.index, d.prefix),
        (Some(1), PrefixOutcome::HolderSaturated)
    );
    // With KV usage not counted (1.0, the default) the holder is a candidate and keeps its
    // prefix...
    let d = with(1.0, 0.0).pick_at(&eps, &req, now);
    assert_eq!((d.index, d.prefix), (Some(0), PrefixOutcome::Holder));
    // ...until its queue outweighs the hit: a move, not a saturation.
    let d = with(1.0, 100.0).pick_at(&eps, &req, now);
    assert_eq!((d.index, d.prefix), (Some(1), PrefixOutcome::Moved));
}

#[test]
fn prefers_an_endpoint_running_the_adapter() {
    let (eps, picker, now) = setup(&[(1.0, 0.3); 3]);
    let lora = |running: &[&str]| ScrapedMetrics {
        lora: Some(LoraState {
            running: running.iter().map(|s| s.to_string()).collect(),
            waiting: vec![],
            max_lora: 2,
        }),
        ..scraped(1.0, 0.3)
    };
    picker.signals[0].apply_scrape(&lora(&["x", "y"]), now);
    picker.signals[1].apply_scrape(&lora(&["sql"]), now);
    picker.signals[2].apply_scrape(&lora(&["x"]), now);
    let req = RequestContext {
        adapter: Some("sql"),
        debug: true,
        ..Default::default()
    };
    let d = picker.pick_at(&eps, &req, now);
    assert_eq!(d.index, Some(1));
    assert_eq!(d.top.len(), 3);
    assert_eq!(d.top[0].index, 1);
    assert_eq!(d.top[2].index, 0, "no free slot scores lowest");
    assert!(d.top[0].parts.contains(&("lora", 1.0)));
    let header = InferencePicker::debug_header(&d);
    assert!(header.starts_with("1="), "{header}");
}

#[test]
fn an_adapter_is_known_by_its_model_name() {
    let (eps, picker, now) = setup(&[(1.0, 0.3); 2]);
    // No LoRA data yet: every model is taken as a base model.
    assert!(!picker.is_adapter("sql-lora"));
    let page = |running: &[&str], max_lora| ScrapedMetrics {
        lora: Some(LoraState {
            running: running.iter().map(|s| s.to_string()).collect(),
            waiting: vec![],
            max_lora,
        }),
        models: Some(vec!["llama".to_string()]),
        ..scraped(1.0, 0.3)
    };
    picker.signals[0].apply_scrape(&page(&["chat-lora"], 1), now);
    picker.signals[1].apply_scrape(&page(&[], 1), now);
    assert!(picker.is_adapter("chat-lora"), "running somewhere");
    assert!(picker.is_adapter("sql-lora"), "not a base model, LoRA on");
    assert!(!picker.is_adapter("llama"));
    // A request for `chat-lora` goes where it is loaded; `sql-lora` must not wait behind the
    // only slot of endpoint 0, so it goes to endpoint 1's free slot.
    for (model, expected) in [("chat-lora", 0), ("sql-lora", 1)] {
        let req = RequestContext {
            adapter: picker.is_adapter(model).then_some(model),
            ..Default::default()
        };
        for _ in 0..20 {
            assert_eq!(
                picker.pick_at(&eps, &req, now).index,
                Some(expected),
                "{model}"
            );
        }
    }
    // Servers without LoRA: a model they do not list is still not an adapter.
    picker.signals[0].apply_scrape(&page(&[], 0), now);
    picker.signals[1].apply_scrape(&page(&[], 0), now);
    assert!(!picker.is_adapter("sql-lora"));
    // With the LoRA scorer off, adapters do not matter.
    let off = InferencePicker::new(
        PickerConfig {
            weights: Weights {
                lora: 0.0,
                ..Weights::default()
            },
            ..PickerConfig::default()
        },
        picker.signals.clone(),
        picker.prefix.clone(),
    );
    picker.signals[0].apply_scrape(&page(&["chat-lora"], 1), now);
    assert!(!off.is_adapter("chat-lora"));
}

#[test]
fn load_reports_feed_the_picker_unless_turned_off() {
    let (eps, picker, now) = setup(&[(0.0, 0.1); 2]);
    let full = switchyard_balance::parse_orca(
        b"TEXT named_metrics.kv_cache_utilization=0.95, named_metrics.num_requests_waiting=0",
    )
    .unwrap();
    // Endpoint 0 reports a nearly full KV cache on a response: it is saturated now, before
    // the next scrape says so.
    picker.apply_load_report_at(0, &full, now);
    let req = RequestContext::default();
    for _ in 0..20 {
        assert_eq!(picker.pick_at(&eps, &req, now).index, Some(1));
    }
    let off = InferencePicker::new(
        PickerConfig {
            orca: false,
            ..PickerConfig::default()
        },
        (0..2).map(|_| Arc::new(EndpointSignals::new())).collect(),
        Arc::new(PrefixIndex::new()),
    );
    off.apply_load_report_at(0, &full, now);
    assert!(!off.signals[0].snapshot(now, Duration::from_secs(1)).fresh);
}

#[test]
fn picks_between_scrapes_spread_a_burst() {
    let (eps, picker, now) = setup(&[(0.0, 0.1); 4]);
    let mut counts = [0; 4];
    for _ in 0..400 {
        let req = RequestContext {
            est_tokens: 2000,
            ..Default::default()
        };
        let i = picker.pick_at(&eps, &req, now).index.unwrap();
        picker.record(i, &req);
        counts[i] += 1;
    }
    // Gateway-side counts keep the burst balanced although no scrape happened.
    assert!(
        counts.iter().all(|&c| (80..=120).contains(&c)),
        "{counts:?}"
    );
    for _ in 0..100 {
        picker.finish(0, 2000, None);
    }
    assert_eq!(picker.signals[0].in_flight(), 0);
}

#[test]
fn stale_signals_and_missing_endpoints() {
    let (eps, picker, now) = setup(&[(0.0, 0.1), (0.0, 0.1)]);
    let later = now + Duration::from_secs(10);
    assert!(picker
        .pick_at(&eps, &RequestContext::default(), later)
        .index
        .is_some());
    // More endpoints than signals: the extra ones are still candidates, scored as unknown.
    let eps3 = endpoints(3);
    eps3[0].state.set_healthy(false);
    eps3[1].state.set_ejected(true);
    assert_eq!(
        picker.pick_at(&eps3, &RequestContext::default(), now).index,
        Some(2)
    );
    eps3[2].state.set_healthy(false);
    let d = picker.pick_at(&eps3, &RequestContext::default(), now);
    assert_eq!((d.index, d.saturated), (None, false));
}

proptest! {
    #[test]
    fn never_picks_an_unavailable_endpoint(
        state in proptest::collection::vec((any::<bool>(), any::<bool>(), 0.0f64..300.0, 0.0f64..1.0, 0usize..3), 1..12),
        adapter in proptest::option::of("[ab]"),
    ) {
        let loads: Vec<_> = state.iter().map(|s| (s.2, s.3)).collect();
        // KV usage as a threshold too (off by default), so that both halves are exercised.
        let config = PickerConfig { max_kv_usage: 0.9, ..PickerConfig::default() };
        let (eps, picker, now) = setup_with(config, &loads);
        let hashes = prompt_block_hashes(&prompt("p"), 16);
        for (i, s) in state.iter().enumerate() {
            eps[i].state.set_healthy(s.0);
            eps[i].state.set_ejected(s.1);
            picker.prefix_index().record(i, &hashes[..hashes.len() * s.4 / 2]);
        }
        let req = RequestContext { block_hashes: &hashes, adapter: adapter.as_deref(), est_tokens: 100, debug: true, ..Default::default() };
        let d = picker.pick_at(&eps, &req, now);
        let any = eps.iter().any(Endpoint::is_available);
        match d.index {
            Some(i) => prop_assert!(eps[i].is_available()),
            None => prop_assert!(!any),
        }
        prop_assert!(d.top.iter().all(|s| eps[s.index].is_available() && (0.0..=1.0).contains(&s.score)));
        // A non-saturated endpoint exists: the pick is not saturated.
        // Waiting counts are scraped as whole requests (rounded).
        let unsaturated = state.iter().any(|s| s.0 && !s.1 && s.2.round() <= 128.0 && s.3 <= 0.9);
        if unsaturated {
            let i = d.index.unwrap();
            prop_assert!(!d.saturated);
            prop_assert!(state[i].2.round() <= 128.0 && state[i].3 <= 0.9, "picked saturated {}", i);
        }
    }
}

/// A picker over two endpoints whose signals the test can scrape again.
fn two_scraped() -> (
    Vec<Endpoint>,
    InferencePicker,
    Vec<Arc<EndpointSignals>>,
    Instant,
) {
    let now = Instant::now();
    let signals: Vec<_> = (0..2)
        .map(|_| {
            let s = Arc::new(EndpointSignals::new());
            s.apply_scrape(&scraped(0.0, 0.3), now);
            s
        })
        .collect();
    let picker = InferencePicker::new(
        PickerConfig::default(),
        signals.clone(),
        Arc::new(PrefixIndex::new()),
    );
    (endpoints(2), picker, signals, now)
}

#[test]
fn in_flight_work_counts_only_tokens_not_cached_where_they_go() {
    // Both endpoints hold a conversation's system prompt; endpoint 0 also holds the whole
    // conversation so far and is serving its previous turn. That turn is work of its uncached
    // tokens only, and the next turn costs little at 0 and a history's prefill at 1: it stays.
    let (eps, picker, signals, now) = two_scraped();
    let system = prompt("system").repeat(4);
    let turn = format!("{system} {}", "history ".repeat(150));
    let sys_hashes = prompt_block_hashes(&system, 16);
    let hashes = prompt_block_hashes(&turn, 16);
    let prompt_tokens = 16 * hashes.len() as u32;
    let req = RequestContext {
        block_hashes: &hashes,
        est_tokens: prompt_tokens + 64,
        prompt_tokens,
        debug: true,
        ..Default::default()
    };
    // The previous turn was sent to 0 (where the system prompt was) and is running: the next
    // scrape shows no queue.
    picker.prefix_index().record(1, &sys_hashes);
    picker.prefix_index().record(0, &sys_hashes);
    let d = picker.pick_at(&eps, &req, now);
    let whole_prefill = d.work_tokens;
    picker.record(
        0,
        &RequestContext {
            est_tokens: 64,
            ..req
        },
    );
    picker.prefix_index().record(0, &hashes);
    for s in &signals {
        s.apply_scrape(&scraped(0.0, 0.3), now);
    }
    let d = picker.pick_at(&eps, &req, now);
    assert_eq!(d.work_tokens, 64, "every prompt block cached there");
    for _ in 0..50 {
        let d = picker.pick_at(&eps, &req, now);
        assert_eq!(d.index, Some(0), "{}", InferencePicker::debug_header(&d));
    }
    // Had the previous turn been counted whole, endpoint 0 would look a prompt's worth busier
    // and the conversation would move, to be prefilled again on 1.
    picker.finish(0, 64, None);
    picker.record(
        0,
        &RequestContext {
            est_tokens: prompt_tokens + 64,
            ..req
        },
    );
    for s in &signals {
        s.apply_scrape(&scraped(0.0, 0.3), now);
    }
    assert!(whole_prefill > 64);
    let d = picker.pick_at(&eps, &req, now);
    assert_eq!(d.index, Some(1), "{}", InferencePicker::debug_header(&d));
    // Real work in flight there still counts: a backlog of uncached prompts moves it.
    picker.finish(0, prompt_tokens + 64, None);
    for _ in 0..4 {
        picker.record(
            0,
            &RequestContext {
                est_tokens: 4 * prompt_tokens,
                ..req
            },
        );
    }
    for s in &signals {
        s.apply_scrape(&scraped(0.0, 0.3), now);
    }
    assert_eq!(picker.pick_at(&eps, &req, now).index, Some(1));
}

#[test]
fn stickiness_keeps_a_conversation_on_a_mildly_busier_holder_and_says_so() {
    let (eps, plain, now) = setup(&[(3.0, 0.4), (0.0, 0.3)]);
    let config = PickerConfig {
        stickiness: crate::stickiness::PrefixStickiness {
            enabled: true,
            ..Default::default()
        },
        ..PickerConfig::default()
    };
    let sticky = InferencePicker::new(config, plain.signals.clone(), plain.prefix.clone());
    let hashes = prompt_block_hashes(&prompt("conversation"), 16);
    // 0 holds the whole conversation, 1 its first three quarters (the system prompt, say).
    plain.prefix_index().record(0, &hashes);
    plain
        .prefix_index()
        .record(1, &hashes[..hashes.len() * 3 / 4]);
    let req = RequestContext {
        block_hashes: &hashes,
        est_tokens: 1100,
        prompt_tokens: 1000,
        debug: true,
        ..Default::default()
    };
    // The weighted sum moves it for three waiting requests and a little KV usage.
    let d = plain.pick_at(&eps, &req, now);
    assert_eq!((d.index, d.sticky), (Some(1), None));
    let d = sticky.pick_at(&eps, &req, now);
    let kept = crate::stickiness::Kept { kept: 0, over: 1 };
    assert_eq!((d.index, d.sticky), (Some(0), Some(kept)));
    let header = InferencePicker::debug_header(&d);
    assert!(header.starts_with("sticky(kept=0,over=1);1="), "{header}");
    // Much busier: the queueing saved outweighs prefilling the last quarter again.
    sticky.signals[0].apply_scrape(&scraped(12.0, 0.4), now);
    let d = sticky.pick_at(&eps, &req, now);
    assert_eq!((d.index, d.sticky), (Some(1), None));
    // Much fuller KV cache: it would evict or preempt to take the request.
    sticky.signals[0].apply_scrape(&scraped(3.0, 0.7), now);
    let d = sticky.pick_at(&eps, &req, now);
    assert_eq!((d.index, d.sticky), (Some(1), None));
    // A saturated holder is never kept, also when every endpoint is saturated and all are
    // candidates again.
    sticky.signals[0].apply_scrape(&scraped(500.0, 0.4), now);
    sticky.signals[1].apply_scrape(&scraped(200.0, 0.2), now);
    let d = sticky.pick_at(&eps, &req, now);
    assert_eq!((d.index, d.sticky, d.saturated), (Some(1), None, true));
    sticky.signals[1].apply_scrape(&scraped(0.0, 0.3), now);
    // No prefix information at all: the score alone.
    sticky.signals[0].apply_scrape(&scraped(3.0, 0.4), now);
    let d = sticky.pick_at(
        &eps,
        &RequestContext {
            block_hashes: &[],
            ..req
        },
        now,
    );
    assert_eq!((d.index, d.sticky), (Some(1), None));
}

#[test]
fn prefix_outcomes_sit_at_their_discriminants() {
    // The proxy indexes its per-pool counters by `outcome as usize`.
    for (i, o) in PrefixOutcome::ALL.iter().enumerate() {
        assert_eq!(*o as usize, i, "{o:?}");
    }
}

#[test]
fn a_picked_request_is_tracked_in_its_endpoints_batch_until_it_finishes() {
    use crate::predictor::{LatencyPredictor, Measured, PredictorConfig};
    let (eps, picker, now) = setup(&[(0.0, 0.1)]);
    let config = PredictorConfig {
        min_samples: 16,
        refit_every: 4,
        ..PredictorConfig::default()
    };
    let predictor = Arc::new(LatencyPredictor::new(config, 1, Default::default()));
    let picker = picker.with_predictor(predictor.clone());
    let body = br#"{"model":"m","prompt":"the 7:15 to York","max_tokens":40}"#;
    let req = crate::request::parse_openai("/v1/completions", body).unwrap();
    let measured = Measured::Stream {
        ttft_ms: 50.0,
        tpot_ms: Some(10.0),
    };
    for _ in 0..32 {
        let pick = picker.pick_request(&eps, &req, false, false);
        let ticket = pick
            .decision
            .ticket
            .expect("a pool with a predictor keeps a ticket");
        picker.observe(&ticket, measured);
        picker.finish(0, pick.est_tokens, Some(&ticket));
    }
    assert!(predictor.model().is_some(), "warm");
    assert_eq!(
        predictor.slot_wait_ms(0, Some(1), now),
        0.0,
        "every one ended"
    );
    // Warm: the next is tracked (about 50 + 40 × 10 ms), and a batch of one is full until then.
    let pick = picker.pick_request(&eps, &req, false, false);
    let ticket = pick.decision.ticket.unwrap();
    assert!(ticket.ends_at > 0);
    let wait = predictor.slot_wait_ms(0, Some(1), Instant::now());
    assert!((300.0..=500.0).contains(&wait), "{wait}");
    picker.finish(0, pick.est_tokens, Some(&ticket));
    assert_eq!(predictor.slot_wait_ms(0, Some(1), Instant::now()), 0.0);
}
