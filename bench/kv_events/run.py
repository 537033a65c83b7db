#!/usr/bin/env python3
"""Precise prefix routing from KV-cache events (issue 18) against the approximate `inference`
picker, an oracle, and third-party cache-aware routers, on simulated fleets that publish their
real caches' events (`switchyard sim`, fleet `kv_events:`), in one run.

Two parts:

* `ttft`: for each fleet, its capacity is measured first (a closed loop at the fleet's batch
  limit, the sum of `max_num_seqs`, through today's approximate picker, as bench/predict does;
  `--rates` skips that and uses the rates given), then for each load (`--loads`, shares of that
  capacity, offered as Poisson arrivals) the shared-prefix workload (`switchyard bench
  --workload shared-prefix --endpoint completions`: the gateway keys its event index by
  tokenizing the prompt as the simulator does, which it can do for text completions) through
  - `approximate`: one gateway, `balancer: inference`;
  - `events`: one gateway, `balancer: {kind: inference, kv_events: {}}`;
  - `oracle`: the `events` gateway, with every request carrying each replica's *true* cached
    prefix (the load generator asks the simulator's `/sim/oracle/cached` before sending and
    passes the answer as `x-switchyard-oracle-cached`): the picker scores those counts in place
    of the blocks its event index holds; pending picks and every load term stay the same, so
    `events` against `oracle` is the cost of the index's inaccuracy alone;
  - `approximate-x2` / `events-x2`: two gateway replicas, one workload's arrivals spread over
    both (`switchyard bench --spread`: a conversation's next turn lands on either, as behind an
    L4 balancer);
  - `approximate-x2-same` / `events-x2-same`: two gateway replicas each sent the same
    workload at half the rate (the bench's comparison mode, and these modes' meaning before
    session 17): every new prefix reaches both gateways within one arrival gap, the worst case
    for placing it alike;
  - `epp`: `switchyard epp` with the `events` pool, behind Envoy (ext_proc, the request body
    buffered, an ORIGINAL_DST cluster), both on core 0: the picker where llm-d puts its EPP;
  - `vllm-router`, `smg`, `sglang-router`: the PyPI routers with `--policy cache_aware`
    (defaults otherwise; `--routers-bin` names the directory of their executables).
  - `vllm-router-kv`: vllm-router with `--policy kv_aware`, subscribed to every replica's
    KV-event and replay sockets: the third-party router fed by the same events. It scores only
    requests that carry token ids, so its rows send the same prompts as token ids
    (`switchyard bench --prompt-token-ids`, the simulator's tokenizer: the tokens the replicas
    compute from the text either way).
  A fresh fleet and router start for every row, so caches start cold for all. Routers on core
  0; simulator and load generator on core 1.

  WORKING SET: the workload has `groups` system prompts of 1,536 tokens (96 blocks), 8 users each
  with 4-turn conversations, and arrivals go round-robin over users. The groups are chosen per
  fleet so that the system prompts alone fill `--system-share` (0.5) of the fleet's KV blocks;
  with the users' histories the distinct prefixes are about twice what the fleet's cache holds,
  so replicas evict (LRU) under every router, and an index that does not follow evictions
  misroutes.
* `correctness`: one gateway with events (rendezvous owners off, `weights: {prefix_owner: 0}`,
  as in the runs before session 17, when an owner's credit read as a believed hit); 1% of event messages dropped on the PUB side (replayed
  or, failing that, the endpoint is stale and scored approximately) and a replica restarted
  every few seconds; each reply names the replica that served it (`x-sim-replica`) and the
  cached prompt tokens it found (`usage.prompt_tokens_details.cached_tokens`, the replica's true
  cache state at admission), and the gateway's explanation (`x-switchyard-pick`) says what prefix
  share it believed that replica held. A pick "for a hit that is not there" is one whose believed
  blocks exceed the true ones. Then a second gateway starts cold and the time until its index
  matches the first one's is measured (a gateway restart rebuilding from replay). The same
  traffic through the approximate picker alone is the baseline.

Usage: python3 bench/kv_events/run.py [--part ttft,correctness] [--fleets h100,a100-small]
       [--loads 0.8,1.0 | --rates 60,80] [--modes approximate,events,oracle] [--seconds 30]
"""

import argparse
import json
import sys
import tempfile

import correctness
import ttft


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="ttft,correctness")
    ap.add_argument("--fleets", default="h100,a100-small")
    ap.add_argument("--loads", default="0.8,1.0", help="shares of the measured capacity")
    ap.add_argument("--rates", default=None, help="req/s instead of --loads (skips calibration)")
    ap.add_argument("--modes", default="approximate,events,oracle,vllm-router,smg,sglang-router")
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--calib-seconds", type=int, default=20)
    ap.add_argument("--system-share", type=float, default=0.5,
                    help="the system prompts' share of the fleet's KV blocks (sets the groups)")
    ap.add_argument("--routers-bin", default=None, help="directory of vllm-router, smg, sglang-router")
    ap.add_argument("--out", default=None, help="write the ttft results as JSON")
    ap.add_argument("--balancer-keys", default="",
                    help="more settings of Switchyard's balancer map in the ttft rows, as YAML "
                         "(`stickiness: {enabled: true}`); calibration runs without them")
    ap.add_argument("--loss", type=float, default=0.01)
    ap.add_argument("--restart-every", type=float, default=4.0)
    ap.add_argument("--correctness-rate", type=float, default=20)
    ap.add_argument("--ttft-restart-every", type=float, default=0.0,
                    help="also restart a replica every this many seconds in the ttft part")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="sy-kv-")
    parts = args.part.split(",")
    if "ttft" in parts:
        results = ttft.run(d, args, lambda s: print(s, file=sys.stderr, flush=True))
        print(ttft.table(results))
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"args": vars(args), "fleets": results}, f, indent=2)
    if "correctness" in parts:
        for fleet in args.fleets.split(","):
            for events in (True, False):
                res = correctness.correctness(d, fleet, events, args.correctness_rate, args.seconds,
                                              args.loss, args.restart_every)
                mode = "events" if events else "approximate"
                print(f"correctness {fleet} {mode}: {json.dumps(res)}", flush=True)


if __name__ == "__main__":
    main()
