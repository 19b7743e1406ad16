//! Notifications: Postgres LISTEN/NOTIFY, or on SQLite a notification table polled by id and
//! woken at once by writes from the same process.

use sqlx::postgres::PgListener;

use crate::Result;
use crate::sqlite::Poller;

/// A notification from another process (or this one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A message on a channel.
    Message {
        /// The channel.
        channel: String,
        /// Its payload.
        payload: String,
    },
    /// The listening connection was lost; messages may have been missed. Caches must resync.
    Lost,
}

/// A listener on notification channels.
pub struct Listener(Inner);

enum Inner {
    Postgres(Box<PgListener>),
    Sqlite(Box<Poller>),
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listener")
    }
}

impl Listener {
    pub(crate) fn postgres(l: PgListener) -> Self {
        Self(Inner::Postgres(Box::new(l)))
    }

    pub(crate) fn sqlite(p: Poller) -> Self {
        Self(Inner::Sqlite(Box::new(p)))
    }

    /// The next notice. After [`Notice::Lost`], the next call reconnects (Postgres) or goes on
    /// from the oldest notification still kept (SQLite).
    pub async fn recv(&mut self) -> Result<Notice> {
        match &mut self.0 {
            Inner::Postgres(l) => match l.try_recv().await? {
                Some(n) => Ok(Notice::Message {
                    channel: n.channel().to_owned(),
                    payload: n.payload().to_owned(),
                }),
                None => Ok(Notice::Lost),
            },
            Inner::Sqlite(p) => p.recv().await,
        }
    }
}
