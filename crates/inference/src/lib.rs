//! Inference-aware routing for Switchyard: what an LLM-serving proxy knows beyond "which endpoint
//! has the fewest requests".
//!
//! Model servers are not interchangeable once they are busy. A vLLM replica with the request's
//! prompt prefix in its KV cache skips most of the prefill; one with a full KV cache will queue
//! or preempt; one without the requested LoRA adapter must load it first. The Gateway API
//! Inference Extension's endpoint picker (EPP) and the llm-d scheduler route on exactly these
//! signals, and SGLang's router adds cache-aware (prefix-tree) affinity. This crate provides the
//! pieces, as plain synchronous data structures the proxy calls per request:
//!
//! * [`request`]: parse an OpenAI body once (model, prompt, max tokens, adapter), estimate tokens,
//!   hash the prompt into vLLM-style prefix blocks;
//! * [`prefix_index`]: which endpoint probably holds which prefix blocks;
//! * [`signals`] and [`scrape`]: queue depth, KV usage and LoRA state scraped from each model
//!   server's Prometheus endpoint, corrected between scrapes by the gateway's own picks;
//! * [`scorer`] and [`picker`]: weighted scorers, a saturation filter and the `inference` picker;
//!   [`stickiness`]: a prefix kept on its holder unless moving it pays;
//! * [`body_rewrite`]: per-target model rewrite of a request body, and the engine priority of
//!   a request predicted late, byte for byte otherwise;
//! * [`predictor`] and [`slo_pick`]: TTFT/TPOT predicted per endpoint by an online model, and
//!   the pick for requests with latency SLOs;
//! * [`usage`]: token usage read from responses as they pass (bounded tail, no buffering).

// The request path never panics on a missing value: it answers or fails the request.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod batch_slots;
pub mod body_rewrite;
pub mod kv_index;
pub mod kv_subscriptions;
pub mod picker;
pub mod predictor;
mod predictor_fit;
pub mod prefix_index;
pub mod prefix_owner;
pub mod prefix_truth;
pub mod prom_text;
mod prompt_walk;
pub mod request;
pub mod request_pick;
pub mod scorer;
pub mod scrape;
pub mod signals;
pub mod slo_pick;
pub mod slo_queue;
pub mod stickiness;
pub mod usage;

pub use body_rewrite::{add_priority, rewrite_model};
pub use kv_index::KvIndex;
pub use kv_subscriptions::{spawn_kv_subscriptions, KvSubscriptions};
pub use picker::{
    Decision, EndpointView, InferencePicker, PickerConfig, PrefixOutcome, RequestContext,
};
pub use predictor::{
    parse_slo_ms, LatencyPredictor, Measured, PredictorConfig, PredictorMetrics, Selection, Slo,
    Ticket,
};
pub use prefix_index::PrefixIndex;
pub use request::{
    estimate_tokens, parse_openai, prompt_block_hashes, prompt_block_hashes_seeded, seed_for,
    ApiKind, InferenceRequest, RequestError, INLINE_PARSE_BYTES,
};
pub use request_pick::{RequestPick, DEFAULT_EXPECTED_OUTPUT};
pub use scorer::{ScoreContext, Scorer, Weights};
pub use scrape::{
    spawn_scraper, MetricNames, ScrapeError, ScrapeEvent, ScrapeSink, Scraper, MAX_SCRAPE_BYTES,
};
pub use signals::{EndpointSignals, OrcaSignals, SignalSnapshot};
pub use switchyard_sim::prompt_tokenizer::PromptTokenizer;
pub use usage::{
    find_usage, token_events, TokenEvents, Usage, UsageLines, UsageTail, USAGE_TAIL_BYTES,
};
