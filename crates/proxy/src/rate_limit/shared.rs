//! Limits shared by a fleet of gateways (`store: redis`): each key's count per fixed window
//! lives in Redis, taken in one round trip by a Lua script that reads Redis's own clock (so
//! every gateway agrees on the window), checks the limit and adds the request's cost
//! atomically. A token request's settlement is a second, fire-and-forget call off the request
//! path. Every call is bounded by `redis.timeout`; a call that fails or times out is counted and
//! answered by `redis.on_error` (let through uncounted, or refuse).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use redis::aio::ConnectionManager;
use redis::Script;
use switchyard_config::rate_limit::{OnError, Redis};
use tokio::sync::OnceCell;

/// Reserve: `KEYS[1]` the key's prefix; `ARGV`: window seconds, limit, cost, shadow (0/1).
/// Returns {granted, window, retry_after_secs, over_in_shadow}.
const RESERVE: &str = r"
local per = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(redis.call('TIME')[1])
local w = math.floor(now / per)
local k = KEYS[1] .. ':' .. w
local used = tonumber(redis.call('GET', k) or '0')
local over = used + cost > limit
if over and ARGV[4] ~= '1' then
  return {0, w, (w + 1) * per - now, 0}
end
redis.call('INCRBY', k, cost)
redis.call('EXPIRE', k, per + 60)
return {1, w, 0, over and 1 or 0}
";

/// Settle: `KEYS[1]` a window's key; `ARGV[1]` the change (negative: a refund). A window that
/// has expired is left alone.
const SETTLE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('INCRBY', KEYS[1], ARGV[1])
end
return 0
";

/// One Redis for a config generation's shared limits.
pub struct SharedStore {
    pub config: Redis,
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    reserve: Script,
    settle: Script,
    pub(super) errors: Counter,
}

/// What Redis said of a reservation.
pub enum Shared {
    Granted {
        window: u64,
        over: bool,
    },
    Limited {
        retry_after_secs: u64,
    },
    /// Redis did not answer in time, or failed.
    Error,
}

impl SharedStore {
    pub fn new(config: &Redis, errors: Counter) -> Result<Self, String> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| format!("redis.url `{}`: {e}", config.url))?;
        Ok(Self {
            config: config.clone(),
            client,
            conn: OnceCell::new(),
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
            errors,
        })
    }

    /// The connection, made on first use (a Redis that is down at start is an error per call,
    /// not a gateway that will not start); it reconnects by itself after that.
    async fn conn(&self) -> Option<ConnectionManager> {
        let timeout = self.config.timeout;
        let made = self
            .conn
            .get_or_try_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(1);
                tokio::time::timeout(
                    timeout * 4,
                    ConnectionManager::new_with_config(self.client.clone(), config),
                )
                .await
                .map_err(|_| ())?
                .map_err(|_| ())
            })
            .await;
        made.ok().cloned()
    }

    pub async fn reserve(
        &self,
        prefix: &str,
        per_secs: u64,
        limit: u64,
        cost: u64,
        shadow: bool,
    ) -> Shared {
        let call = async {
            let mut conn = self.conn().await?;
            let mut inv = self.reserve.key(prefix);
            inv.arg(per_secs).arg(limit).arg(cost).arg(u8::from(shadow));
            inv.invoke_async::<(u64, u64, u64, u64)>(&mut conn)
                .await
                .ok()
        };
        match tokio::time::timeout(self.config.timeout, call).await {
            Ok(Some((1, window, _, over))) => Shared::Granted {
                window,
                over: over == 1,
            },
            Ok(Some((_, _, retry, _))) => Shared::Limited {
                retry_after_secs: retry.max(1),
            },
            _ => {
                self.errors.inc();
                Shared::Error
            }
        }
    }

    /// Change a window's count by `delta`, from a task of its own.
    pub fn settle(self: &std::sync::Arc<Self>, key: String, delta: i64) {
        if delta == 0 {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = std::sync::Arc::clone(self);
        rt.spawn(async move {
            let call = async {
                let mut conn = me.conn().await?;
                let mut inv = me.settle.key(key);
                inv.arg(delta);
                inv.invoke_async::<i64>(&mut conn).await.ok()
            };
            // Settlements wait longer than reservations: nothing waits on them.
            let bound = me.config.timeout.max(Duration::from_millis(250));
            if tokio::time::timeout(bound, call)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                me.errors.inc();
            }
        });
    }

    pub fn fails_open(&self) -> bool {
        self.config.on_error == OnError::Allow
    }
}
