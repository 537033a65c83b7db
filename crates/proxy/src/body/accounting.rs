//! What is measured as an upstream response body passes, without buffering it: one usage
//! reader (the OpenAI `usage` object, found in a bounded tail when the body ends) and one stream
//! timer (time to the first chunk and between chunks; for a known model also the inter-token
//! latency, output tokens and decode rate).
//!
//! Both used to exist twice (a per-chunk `usage` scan for streams of unknown model beside the
//! tail reader, and a route first-chunk timer beside the per-model TTFT timer), measuring the
//! same bytes twice with slightly different rules. One reader and one timer now feed every
//! metric: the route's and, when the gateway read the request's model, the model's.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use switchyard_inference::{Usage, UsageLines, UsageTail};
use tokio::time::Instant;

use crate::models::ModelStreamMetrics;
use crate::observe::LiveRoute;

/// Usage and timing of one response. Boxed on the body: most responses carry none.
pub struct Accounting {
    usage: Option<UsageReader>,
    stream: Option<StreamTimer>,
    /// The route target's live numbers: output tokens.
    live: std::sync::Arc<LiveRoute>,
}

/// The one usage reader.
struct UsageReader {
    /// (prompt, completion) counters: the model's when the gateway read it, else the route's.
    tokens: (Counter, Counter),
    scan: UsageScan,
}

/// Where `usage` is looked for: a stream's lines as they pass (nothing kept between events),
/// or a JSON document's last bytes, kept bounded and read when the body ends.
enum UsageScan {
    Lines(UsageLines),
    Tail(UsageTail),
}

impl UsageScan {
    fn push(&mut self, data: &[u8]) {
        match self {
            UsageScan::Lines(l) => l.push(data),
            UsageScan::Tail(t) => t.push(data),
        }
    }

    fn usage(&mut self) -> Option<Usage> {
        match self {
            UsageScan::Lines(l) => l.usage(),
            UsageScan::Tail(t) => t.usage(),
        }
    }
}

/// The one stream timer of a streamed (SSE) response.
pub struct StreamTimer {
    start: Instant,
    first_chunk: Histogram,
    chunk_gap: Histogram,
    last_chunk: Option<Instant>,
    /// Token timing per model, pool and endpoint, when the gateway read the model.
    model: Option<ModelTiming>,
    /// The rollout arm of the route target, for its `ttft_p99` and `tpot_p99` checks.
    arm: Option<std::sync::Arc<crate::rollout::judge::ArmWindow>>,
    /// The route target's live numbers (first chunk, gaps).
    live: std::sync::Arc<LiveRoute>,
}

struct ModelTiming {
    metrics: ModelStreamMetrics,
    /// Chunks carrying generated text: first and last arrival, and how many events.
    first_text: Option<Instant>,
    last_text: Option<Instant>,
    text_events: u64,
    /// Counts events across chunk boundaries (an event split by a read is counted once).
    events: switchyard_inference::TokenEvents,
}

impl StreamTimer {
    /// Times a stream whose request arrived at `start` into the route's histograms.
    pub fn new(
        start: Instant,
        first_chunk: Histogram,
        chunk_gap: Histogram,
        live: std::sync::Arc<LiveRoute>,
    ) -> Self {
        Self {
            start,
            first_chunk,
            chunk_gap,
            last_chunk: None,
            model: None,
            arm: None,
            live,
        }
    }

    /// Also report the first chunk's time to a rollout arm.
    pub fn with_arm(
        mut self,
        arm: Option<std::sync::Arc<crate::rollout::judge::ArmWindow>>,
    ) -> Self {
        self.arm = arm;
        self
    }

    /// Also time tokens into a model's histograms.
    pub fn with_model(mut self, metrics: ModelStreamMetrics) -> Self {
        self.model = Some(ModelTiming {
            metrics,
            first_text: None,
            last_text: None,
            text_events: 0,
            events: switchyard_inference::TokenEvents::default(),
        });
        self
    }

    /// Returns whether this was the stream's first chunk.
    fn on_chunk(&mut self, data: &[u8], now: Instant) -> bool {
        let first = match self.last_chunk {
            None => {
                let elapsed = now.duration_since(self.start);
                let ttft = elapsed.as_secs_f64();
                self.first_chunk.observe(ttft);
                self.live.first_chunk(ttft);
                if let Some(arm) = &self.arm {
                    arm.record_ttft(elapsed);
                }
                if let Some(m) = &self.model {
                    m.metrics.ttft.observe(ttft);
                }
                true
            }
            Some(prev) => {
                let gap = now.duration_since(prev).as_secs_f64();
                self.chunk_gap.observe(gap);
                self.live.chunk_gap(gap);
                false
            }
        };
        self.last_chunk = Some(now);
        if let Some(m) = self.model.as_mut() {
            let events = m.events.push(data);
            if events > 0 {
                if let Some(prev) = m.last_text {
                    m.metrics
                        .itl
                        .observe(now.duration_since(prev).as_secs_f64());
                }
                m.first_text.get_or_insert(now);
                m.last_text = Some(now);
                m.text_events += events;
            }
        }
        first
    }

    /// Output tokens of the stream: `usage`, else the text events counted for a known model.
    fn output_tokens(&self, usage: Option<Usage>) -> Option<u64> {
        usage
            .map(|u| u.completion_tokens)
            .or_else(|| self.model.as_ref().map(|m| m.text_events))
    }

    fn on_end(&self, usage: Option<Usage>) {
        let Some(m) = &self.model else { return };
        let output = self.output_tokens(usage).unwrap_or(0);
        if output == 0 {
            return;
        }
        m.metrics.output_tokens.observe(output as f64);
        if let (Some(first), Some(last)) = (m.first_text, m.last_text) {
            let decode = last.duration_since(first).as_secs_f64();
            if output > 1 && decode > 0.0 {
                m.metrics
                    .tokens_per_second
                    .observe((output - 1) as f64 / decode);
                if let Some(arm) = &self.arm {
                    arm.record_tpot(decode / (output - 1) as f64);
                }
            }
        }
    }
}

impl Accounting {
    pub fn new(
        usage_tokens: Option<(Counter, Counter)>,
        stream: Option<StreamTimer>,
        live: std::sync::Arc<LiveRoute>,
    ) -> Self {
        Self {
            usage: usage_tokens.map(|tokens| UsageReader {
                tokens,
                scan: if stream.is_some() {
                    UsageScan::Lines(UsageLines::default())
                } else {
                    UsageScan::Tail(UsageTail::default())
                },
            }),
            stream,
            live,
        }
    }

    /// One data chunk went by at `now`. Returns whether it was a stream's first chunk.
    pub fn on_chunk(&mut self, data: &[u8], now: Instant) -> bool {
        if let Some(u) = self.usage.as_mut() {
            u.scan.push(data);
        }
        self.stream.as_mut().is_some_and(|s| s.on_chunk(data, now))
    }

    /// The body ended cleanly: count the usage it reported, and return it.
    pub fn on_end(&mut self) -> Option<Usage> {
        let usage = self.usage.as_mut().and_then(|u| {
            let usage = u.scan.usage()?;
            u.tokens.0.inc_by(usage.prompt_tokens);
            u.tokens.1.inc_by(usage.completion_tokens);
            Some(usage)
        });
        let output = match &self.stream {
            Some(s) => {
                s.on_end(usage);
                s.output_tokens(usage)
            }
            None => usage.map(|u| u.completion_tokens),
        };
        if let Some(n) = output.filter(|&n| n > 0) {
            self.live.output_tokens(n);
        }
        usage
    }

    #[cfg(test)]
    fn tail_len(&self) -> usize {
        self.usage.as_ref().map_or(0, |u| match &u.scan {
            UsageScan::Lines(l) => l.held(),
            UsageScan::Tail(t) => t.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Accounting, StreamTimer};
    use crate::models::ModelStreamMetrics;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::histogram::Histogram;
    use std::time::Duration;
    use tokio::time::Instant;

    fn live() -> std::sync::Arc<crate::observe::LiveRoute> {
        std::sync::Arc::default()
    }

    fn histogram() -> Histogram {
        Histogram::new([0.001, 1.0, 10.0, 100.0].into_iter())
    }

    fn histograms() -> ModelStreamMetrics {
        ModelStreamMetrics {
            ttft: histogram(),
            itl: histogram(),
            output_tokens: histogram(),
            tokens_per_second: histogram(),
        }
    }

    /// (count, sum) of a histogram, through its text encoding.
    fn observed(h: &Histogram) -> (u64, f64) {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("h", "", h.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value = |suffix: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("h_{suffix} ")))
                .unwrap()
                .parse()
                .unwrap()
        };
        (value("count") as u64, value("sum"))
    }

    const ROLE: &[u8] =
        b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
    const TOKEN: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n";
    const END: &[u8] = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";

    #[test]
    fn stream_usage_and_timing_feed_route_and_model() {
        let tokens = (Counter::default(), Counter::default());
        let m = histograms();
        let (first, gap) = (histogram(), histogram());
        let t0 = Instant::now();
        let route = live();
        let timer =
            StreamTimer::new(t0, first.clone(), gap.clone(), route.clone()).with_model(m.clone());
        let mut a = Accounting::new(Some(tokens.clone()), Some(timer), route.clone());
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(a.on_chunk(ROLE, ms(100)));
        assert!(!a.on_chunk(TOKEN, ms(100)));
        a.on_chunk(TOKEN, ms(120));
        a.on_chunk(TOKEN, ms(140));
        // Between whole events a stream's usage reader holds nothing.
        assert_eq!(a.tail_len(), 0);
        // The usage event split over two frames is still found at the end.
        a.on_chunk(&END[..30], ms(141));
        a.on_chunk(&END[30..], ms(141));
        a.on_end();
        assert_eq!((tokens.0.get(), tokens.1.get()), (5, 3));
        // One timer: the route's first chunk and the model's TTFT are the same measurement.
        assert_eq!(observed(&m.ttft), (1, 0.1));
        assert_eq!(observed(&first), (1, 0.1));
        assert_eq!(observed(&gap).0, 5);
        let (n, sum) = observed(&m.itl);
        assert_eq!(n, 2);
        assert!((sum - 0.04).abs() < 1e-9);
        assert_eq!(observed(&m.output_tokens), (1, 3.0));
        // The live numbers see the same first chunk, gaps and output tokens.
        let seen = route.snapshot();
        assert_eq!(
            (seen.ttft.count(), seen.itl.count(), seen.output_tokens),
            (1, 5, 3)
        );
        // (3 - 1) tokens over 40 ms.
        let (n, rate) = observed(&m.tokens_per_second);
        assert_eq!(n, 1);
        assert!((rate - 50.0).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn stream_of_unknown_model_counts_route_usage_only() {
        let tokens = (Counter::default(), Counter::default());
        let t0 = Instant::now();
        let timer = StreamTimer::new(t0, histogram(), histogram(), live());
        let mut a = Accounting::new(Some(tokens.clone()), Some(timer), live());
        a.on_chunk(TOKEN, t0);
        a.on_chunk(END, t0);
        let usage = a.on_end().expect("usage");
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (5, 3));
        assert_eq!((tokens.0.get(), tokens.1.get()), (5, 3));
    }

    #[test]
    fn stream_without_usage_counts_text_events() {
        let tokens = (Counter::default(), Counter::default());
        let m = histograms();
        let t0 = Instant::now();
        let timer = StreamTimer::new(t0, histogram(), histogram(), live()).with_model(m.clone());
        let mut a = Accounting::new(Some(tokens.clone()), Some(timer), live());
        for i in 0..4 {
            a.on_chunk(TOKEN, t0 + Duration::from_millis(10 * i));
        }
        a.on_chunk(b"data: [DONE]\n\n", t0 + Duration::from_millis(50));
        a.on_end();
        assert_eq!((tokens.0.get(), tokens.1.get()), (0, 0));
        assert_eq!(observed(&m.output_tokens), (1, 4.0));
    }

    #[test]
    fn json_usage_from_the_tail() {
        let tokens = (Counter::default(), Counter::default());
        let mut a = Accounting::new(Some(tokens.clone()), None, live());
        let now = Instant::now();
        a.on_chunk(b"{\"choices\":[{\"message\":{\"content\":\"", now);
        a.on_chunk(&[b'a'; 200_000], now);
        a.on_chunk(
            b"\"}}],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}",
            now,
        );
        assert!(a.tail_len() <= switchyard_inference::USAGE_TAIL_BYTES);
        let usage = a.on_end().expect("usage returned for the span");
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (9, 2));
        assert_eq!((tokens.0.get(), tokens.1.get()), (9, 2));
    }
}
