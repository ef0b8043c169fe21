//! What the other processes on one PostgreSQL database committed: the `NOTIFY`s that
//! migration 0011's triggers send at commit, heard on a dedicated `LISTEN` connection.
//! SQLite serves one process, which wakes its own waiters, so it has no such channel.

use std::time::Duration;

use sqlx::postgres::PgListener;

use super::{Backend, Result, Storage};

const STREAM: &str = "myelin_stream";
const OUTBOX: &str = "myelin_outbox";
const MEDIA: &str = "myelin_media";

/// A change some process (this one included) committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new stream position: what `/sync` reads grew.
    Stream(i64),
    /// Something was queued for another server.
    Outbox,
    /// A reserved media ID got its content.
    Media,
    /// The connection dropped and was made again: anything may have happened meanwhile.
    Missed,
}

/// The listening connection.
#[derive(Debug)]
pub struct Changes(PgListener);

impl Storage {
    /// Starts listening for other processes' changes; `None` on SQLite. Listening starts before
    /// this returns, so a change committed afterwards is never missed.
    pub async fn changes(&self) -> Result<Option<Changes>> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let mut listener = PgListener::connect(&self.url.0).await?;
        listener.listen_all([STREAM, OUTBOX, MEDIA]).await?;
        Ok(Some(Changes(listener)))
    }
}

impl Changes {
    /// The next change. When the connection drops, reconnects (every second while the database
    /// is unreachable), listens again and then says [`Change::Missed`].
    pub async fn next(&mut self) -> Change {
        loop {
            match self.0.try_recv().await {
                Ok(Some(notification)) => match notification.channel() {
                    STREAM => {
                        if let Ok(position) = notification.payload().parse() {
                            return Change::Stream(position);
                        }
                    }
                    OUTBOX => return Change::Outbox,
                    MEDIA => return Change::Media,
                    _ => {}
                },
                // Lost, and already reconnected and listening again.
                Ok(None) => return Change::Missed,
                // Lost, and the reconnect failed: any query through the listener reconnects and
                // listens again; only once one succeeds is nothing missed from then on.
                Err(err) => {
                    tracing::warn!(error = %err, "listening for other processes' changes");
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        match sqlx::query("SELECT 1").execute(&mut self.0).await {
                            Ok(_) => return Change::Missed,
                            Err(err) => tracing::warn!(error = %err, "reconnecting to listen for changes"),
                        }
                    }
                }
            }
        }
    }
}
