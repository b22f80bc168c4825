//! The Redis wake-up subscriber: one dedicated RESP3 connection, named `tether-sub:CHANNEL` so
//! that an operator (or a test) can find it in `CLIENT LIST`, SUBSCRIBEd to the namespace's
//! wake channel. Each message becomes a [`Wake`]; when the connection dies it reconnects with a
//! capped backoff and then sends [`Wake::All`], since what was published meanwhile is lost.

use std::sync::Arc;
use std::time::Duration;

use redis::{AsyncConnectionConfig, ProtocolVersion, PushKind, Value};
use tokio::sync::{Notify, broadcast, oneshot};

use super::cluster::{Wake, parse_wake};

/// The longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How often the subscriber pings its connection, so that a half-open one is noticed.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Runs until aborted. `listening` is told once the first SUBSCRIBE is in place.
pub(super) async fn run(
    client: redis::Client,
    channel: String,
    wake: broadcast::Sender<Wake>,
    listening: oneshot::Sender<()>,
) {
    let info = client.get_connection_info().clone();
    let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    let client = match redis::Client::open(info.set_redis_settings(settings)) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "the Redis wake-up subscriber cannot start");
            return;
        }
    };
    let mut listening = Some(listening);
    let mut backoff = Duration::from_millis(50);
    loop {
        let lost = Arc::new(Notify::new());
        let (w, l) = (wake.clone(), lost.clone());
        let push = move |info: redis::PushInfo| -> Result<(), ()> {
            match info.kind {
                PushKind::Message => {
                    if let Some(Value::BulkString(payload)) = info.data.get(1)
                        && let Some(wk) = std::str::from_utf8(payload).ok().and_then(parse_wake)
                    {
                        let _ = w.send(wk);
                    }
                }
                PushKind::Disconnection => l.notify_one(),
                _ => {}
            }
            Ok(())
        };
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_push_sender(push);
        match subscribe(&client, cfg, &channel).await {
            Ok(mut conn) => {
                backoff = Duration::from_millis(50);
                match listening.take() {
                    Some(tell) => {
                        let _ = tell.send(());
                    }
                    None => {
                        tracing::info!("the Redis wake-up subscriber is back");
                        let _ = wake.send(Wake::All);
                    }
                }
                loop {
                    tokio::select! {
                        () = lost.notified() => break,
                        () = tokio::time::sleep(PING_EVERY) => {
                            if redis::cmd("PING").query_async::<Value>(&mut conn).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                tracing::warn!("the Redis wake-up connection was lost; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "the Redis wake-up subscriber cannot connect; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn subscribe(
    client: &redis::Client,
    cfg: AsyncConnectionConfig,
    channel: &str,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let mut conn = client.get_multiplexed_async_connection_with_config(&cfg).await?;
    redis::cmd("CLIENT").arg("SETNAME").arg(format!("tether-sub:{channel}")).query_async::<()>(&mut conn).await?;
    conn.subscribe(channel).await?;
    Ok(conn)
}
