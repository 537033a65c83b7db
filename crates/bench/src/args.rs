//! `switchyard bench` command-line flags, and their translation into a [`LoadSpec`].
//!
//! Flags are kept flat (no sub-subcommands) so a benchmark is one copy-pasteable line; the
//! translation checks combinations that clap cannot (a bound is required, `--chart` needs
//! `--sweep`, and so on) and says which flag to change.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use switchyard_sim::prompt_tokenizer::PromptTokenizer;

use crate::dist::Distribution;
use crate::spec::{Arrival, Endpoint, Load, LoadSpec, Target, TargetOrder};
use crate::stats::Slo;
use crate::sweep::{SweepKind, SweepSpec};
use crate::workload::{SharedPrefixSpec, SyntheticSpec, TraceSpec, WorkloadSpec};

/// Which workload `--workload` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadKind {
    Synthetic,
    SharedPrefix,
    Trace,
}

/// `switchyard bench` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Endpoint to load: NAME=URL or a bare base URL (named "default"). Repeat to compare
    /// several side by side; arrivals are spread over them.
    #[arg(long = "target", value_name = "NAME=URL", required = true)]
    pub targets: Vec<String>,
    /// API to call: chat (/v1/chat/completions) or completions (/v1/completions).
    #[arg(long, value_enum, default_value_t = Endpoint::Chat)]
    pub endpoint: Endpoint,
    /// Model name sent in each request (omitted when not given).
    #[arg(long)]
    pub model: Option<String>,
    /// Open loop: requests per second (over all targets).
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Open-loop arrival process.
    #[arg(long, value_enum, default_value_t = Arrival::Poisson)]
    pub arrival: Arrival,
    /// Closed loop: number of concurrent virtual users.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Stop issuing requests after this long (e.g. 30s, 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many requests (over all targets).
    #[arg(long)]
    pub requests: Option<u64>,
    /// How each arrival picks its target.
    #[arg(long, value_enum, default_value_t = TargetOrder::RoundRobin)]
    pub target_order: TargetOrder,
    /// The targets are replicas of one service (gateways in front of the same fleet): one
    /// workload whose arrivals are spread over them, rather than the same workload to each.
    #[arg(long)]
    pub spread: bool,
    /// What to send: synthetic, shared-prefix or trace.
    #[arg(long, value_enum, default_value_t = WorkloadKind::Synthetic)]
    pub workload: WorkloadKind,
    /// Synthetic: prompt length in tokens (the value of the `fixed` distribution).
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: u32,
    /// Synthetic: prompt length distribution: fixed, uniform:LO,HI, normal:MEAN,SD, lognormal:MEAN,SD.
    #[arg(long, default_value = "fixed")]
    pub prompt_dist: String,
    /// max_tokens per request (the value of the `fixed` distribution).
    #[arg(long, default_value_t = 128)]
    pub output_tokens: u32,
    /// Output length distribution, same forms as --prompt-dist.
    #[arg(long, default_value = "fixed")]
    pub output_dist: String,
    /// Shared-prefix: number of groups (distinct system prompts).
    #[arg(long, default_value_t = 4)]
    pub groups: u32,
    /// Shared-prefix: users per group.
    #[arg(long, default_value_t = 8)]
    pub users_per_group: u32,
    /// Shared-prefix: system prompt length in tokens.
    #[arg(long, default_value_t = 1024)]
    pub system_prompt_tokens: u32,
    /// Shared-prefix: new question length per turn in tokens.
    #[arg(long, default_value_t = 64)]
    pub question_tokens: u32,
    /// Shared-prefix: turns per conversation before a user starts over.
    #[arg(long, default_value_t = 4)]
    pub turns: u32,
    /// Trace: JSONL file to replay (see docs/bench.md).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Goodput objectives, e.g. ttft=500ms,tpot=50ms (any of ttft, tpot, itl, e2e).
    #[arg(long)]
    pub slo: Option<String>,
    /// Per-request timeout, send to end of stream.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub timeout: Duration,
    /// Use HTTP/2: with prior knowledge (h2c) for http:// targets, over TLS for https:// ones.
    #[arg(long)]
    pub http2: bool,
    /// Use HTTP/3 (QUIC) to https:// targets, one connection per target.
    #[arg(long, conflicts_with = "http2")]
    pub http3: bool,
    /// PEM CA bundle that signs https:// targets' certificates.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Ask for whole replies (`stream: false`): TTFT is then the time to the whole reply.
    #[arg(long)]
    pub no_stream: bool,
    /// Seed for prompts, lengths, arrivals and target picks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Open loop: drop (and count) arrivals while this many requests are in flight.
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// Extra request header, NAME:VALUE (repeatable).
    #[arg(long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// Before each request, post its body to this simulator URL (`http://HOST:PORT/sim/oracle/cached`)
    /// and send the answer as `x-switchyard-oracle-cached`: routing on the true cache state.
    #[arg(long, value_name = "URL")]
    pub prefix_oracle: Option<http::Uri>,
    /// Completions only: send each prompt as token ids (`"prompt": [ids]`), tokenized with the
    /// simulator's tokenizer or `--tokenizer`'s. For routers that score only requests that carry
    /// tokens, such as vllm-router's `kv_aware`.
    #[arg(long)]
    pub prompt_token_ids: bool,
    /// With --prompt-token-ids: a model's Hugging Face `tokenizer.json`.
    #[arg(long, value_name = "FILE", requires = "prompt_token_ids")]
    pub tokenizer: Option<PathBuf>,
    /// Run once per level: rate=1,2,4,8 or concurrency=1,8,32.
    #[arg(long)]
    pub sweep: Option<String>,
    /// Write the full result (config, per-target metrics) as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// With --sweep: write latency-vs-load chart as SVG.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Do not print progress on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// What the CLI will do: the spec plus output options.
#[derive(Debug, Clone)]
pub struct CliPlan {
    pub spec: LoadSpec,
    pub sweep: Option<SweepSpec>,
    pub out: Option<PathBuf>,
    pub chart: Option<PathBuf>,
    pub quiet: bool,
}

impl BenchArgs {
    /// Checks flag combinations and builds the plan.
    pub fn plan(&self) -> anyhow::Result<CliPlan> {
        let targets = self
            .targets
            .iter()
            .map(|t| Target::parse(t))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            bail!(
                "two targets are named `{}`; use NAME=URL to tell them apart",
                w[0]
            );
        }
        let sweep = self.sweep.as_deref().map(SweepSpec::parse).transpose()?;
        let is_trace = self.workload == WorkloadKind::Trace;
        if self.duration.is_none() && self.requests.is_none() && !is_trace {
            bail!("give --duration, --requests or both to bound the run");
        }
        if self.chart.is_some() && sweep.is_none() {
            bail!("--chart draws a sweep; add --sweep rate=... or --sweep concurrency=...");
        }
        if self.trace.is_some() && !is_trace {
            bail!("--trace needs --workload trace");
        }
        let load = match (self.rate, self.concurrency, &sweep) {
            (_, Some(c), _) => Load::Closed { concurrency: c },
            (Some(rate), None, _) => Load::Open {
                rate,
                arrival: self.arrival,
            },
            (None, None, Some(s)) => match s.kind {
                SweepKind::Rate => Load::Open {
                    rate: s.levels[0],
                    arrival: self.arrival,
                },
                SweepKind::Concurrency => Load::Closed {
                    concurrency: s.levels[0] as usize,
                },
            },
            // A trace brings its own arrival times; the rate is unused.
            (None, None, None) if is_trace => Load::Open {
                rate: 1.0,
                arrival: self.arrival,
            },
            (None, None, None) => {
                bail!("give --rate R (open loop) or --concurrency N (closed loop)")
            }
        };
        let output_tokens = Distribution::parse(&self.output_dist, self.output_tokens)?;
        let workload = match self.workload {
            WorkloadKind::Synthetic => WorkloadSpec::Synthetic(SyntheticSpec {
                prompt_tokens: Distribution::parse(&self.prompt_dist, self.prompt_tokens)?,
                output_tokens,
            }),
            WorkloadKind::SharedPrefix => WorkloadSpec::SharedPrefix(SharedPrefixSpec {
                groups: self.groups,
                users_per_group: self.users_per_group,
                system_prompt_tokens: self.system_prompt_tokens,
                question_tokens: self.question_tokens,
                turns: self.turns,
                output_tokens,
            }),
            WorkloadKind::Trace => match &self.trace {
                Some(p) => WorkloadSpec::Trace(TraceSpec::from_path(p)),
                None => bail!("--workload trace needs --trace FILE"),
            },
        };
        let headers = self
            .headers
            .iter()
            .map(|h| match h.split_once(':') {
                Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
                None => bail!("--header `{h}` should be NAME:VALUE"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut spec = LoadSpec::new(targets, workload);
        spec.endpoint = self.endpoint;
        spec.model = self.model.clone();
        spec.load = load;
        spec.duration = self.duration;
        spec.max_requests = self.requests;
        spec.target_order = self.target_order;
        spec.spread = self.spread;
        spec.slo = self
            .slo
            .as_deref()
            .map(Slo::parse)
            .transpose()?
            .unwrap_or_default();
        spec.timeout = self.timeout;
        spec.http2 = self.http2;
        spec.http3 = self.http3;
        spec.cacert = self.cacert.clone();
        spec.stream = !self.no_stream;
        spec.seed = self.seed;
        spec.max_in_flight = self.max_in_flight;
        spec.headers = headers;
        spec.prefix_oracle = self.prefix_oracle.clone();
        if self.prompt_token_ids {
            if self.endpoint != Endpoint::Completions {
                bail!("--prompt-token-ids needs --endpoint completions (chat sends messages)");
            }
            spec.prompt_ids = Some(match &self.tokenizer {
                Some(path) => PromptTokenizer::load(path).map_err(anyhow::Error::msg)?,
                None => PromptTokenizer::Sim,
            });
        }
        spec.validate()?;
        Ok(CliPlan {
            spec,
            sweep,
            out: self.out.clone(),
            chart: self.chart.clone(),
            quiet: self.quiet,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn plan(line: &str) -> anyhow::Result<CliPlan> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(line.split_whitespace()))?;
        cli.args.plan()
    }

    #[test]
    fn builds_specs() {
        let p = plan("--target http://127.0.0.1:1 --rate 5 --duration 10s --slo ttft=1s").unwrap();
        assert_eq!(
            p.spec.load,
            Load::Open {
                rate: 5.0,
                arrival: Arrival::Poisson
            }
        );
        assert_eq!(p.spec.duration, Some(Duration::from_secs(10)));
        assert_eq!(p.spec.targets[0].name, "default");
        assert_eq!(p.spec.slo.ttft, Some(Duration::from_secs(1)));
        let p = plan(
            "--target a=http://127.0.0.1:1 --target b=http://127.0.0.1:2 --concurrency 4 --requests 9 \
             --workload shared-prefix --groups 2 --output-dist uniform:1,9 --header authorization:Bearer",
        )
        .unwrap();
        assert_eq!(p.spec.load, Load::Closed { concurrency: 4 });
        assert_eq!(
            p.spec.headers,
            vec![("authorization".to_string(), "Bearer".to_string())]
        );
        let WorkloadSpec::SharedPrefix(s) = &p.spec.workload else {
            panic!("shared-prefix")
        };
        assert_eq!(
            (s.groups, &s.output_tokens),
            (2, &Distribution::Uniform { lo: 1, hi: 9 })
        );
        let p =
            plan("--target http://127.0.0.1:1 --requests 5 --sweep concurrency=2,4 --chart c.svg")
                .unwrap();
        assert_eq!(p.spec.load, Load::Closed { concurrency: 2 });
    }

    #[test]
    fn rejects_bad_combinations() {
        for (line, want) in [
            ("--target http://127.0.0.1:1 --rate 5", "--duration"),
            ("--target http://127.0.0.1:1 --requests 5", "--rate"),
            (
                "--target http://127.0.0.1:1 --rate 5 --requests 5 --chart x.svg",
                "--sweep",
            ),
            (
                "--target a=http://127.0.0.1:1 --target a=http://127.0.0.1:2 --rate 1 --requests 1",
                "named",
            ),
            ("--target http://127.0.0.1:1 --workload trace", "--trace"),
            (
                "--target http://127.0.0.1:1 --rate 1 --requests 1 --prompt-dist zipf",
                "unknown distribution",
            ),
            ("--target http://127.0.0.1:1 --rate 0 --requests 1", "rate"),
            (
                "--target http://127.0.0.1:1 --rate 1 --requests 1 --header nocolon",
                "NAME:VALUE",
            ),
            (
                "--target http://127.0.0.1:1 --rate 1 --requests 1 --prompt-token-ids",
                "--endpoint completions",
            ),
            (
                "--target http://127.0.0.1:1 --rate 1 --requests 1 --endpoint completions \
                 --prompt-token-ids --tokenizer /nonexistent/tokenizer.json",
                "/nonexistent/tokenizer.json",
            ),
        ] {
            let err = plan(line).unwrap_err().to_string();
            assert!(err.contains(want), "{line}: {err}");
        }
        assert!(plan("--target http://127.0.0.1:1 --rate 1 --concurrency 2 --requests 1").is_err());
        // A tokenizer without --prompt-token-ids is refused by clap.
        assert!(
            plan("--target http://127.0.0.1:1 --rate 1 --requests 1 --tokenizer t.json").is_err()
        );
        let p = plan("--target http://127.0.0.1:1 --rate 1 --requests 1 --endpoint completions --prompt-token-ids")
            .unwrap();
        assert!(p.spec.prompt_ids.is_some_and(|t| t.is_sim()));
    }
}
