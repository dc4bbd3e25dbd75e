//! Opening the database (SQLite or PostgreSQL by URL scheme), the connections statements
//! run on, and applying the migrations.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Transaction};

use super::{Backend, Result, Store, StoreError};

/// The migrations of one engine, in the order they are applied. A name is recorded in
/// `schema_migrations` once applied and never run again; never edit an applied one, add
/// the next file instead.
type Migrations = &'static [(&'static str, &'static str)];

const SQLITE_MIGRATIONS: Migrations = &[
    (
        "0001_init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        "0002_step_logs",
        include_str!("../../migrations/sqlite/0002_step_logs.sql"),
    ),
    (
        "0003_runner_credentials",
        include_str!("../../migrations/sqlite/0003_runner_credentials.sql"),
    ),
    (
        "0004_registry_paths",
        include_str!("../../migrations/sqlite/0004_registry_paths.sql"),
    ),
    (
        "0005_sessions",
        include_str!("../../migrations/sqlite/0005_sessions.sql"),
    ),
    (
        "0006_notifications",
        include_str!("../../migrations/sqlite/0006_notifications.sql"),
    ),
    (
        "0007_deploy",
        include_str!("../../migrations/sqlite/0007_deploy.sql"),
    ),
];

const POSTGRES_MIGRATIONS: Migrations = &[
    (
        "0001_init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        "0002_step_logs",
        include_str!("../../migrations/postgres/0002_step_logs.sql"),
    ),
    (
        "0003_runner_credentials",
        include_str!("../../migrations/postgres/0003_runner_credentials.sql"),
    ),
    (
        "0004_registry_paths",
        include_str!("../../migrations/postgres/0004_registry_paths.sql"),
    ),
    (
        "0005_sessions",
        include_str!("../../migrations/postgres/0005_sessions.sql"),
    ),
    (
        "0006_notifications",
        include_str!("../../migrations/postgres/0006_notifications.sql"),
    ),
    (
        "0007_deploy",
        include_str!("../../migrations/postgres/0007_deploy.sql"),
    ),
];

/// Set on the SQLite connection: wait up to 30 s for another process's writer, enforce
/// foreign keys, fsync every commit (`FULL`: with WAL, `NORMAL` could lose the last
/// acknowledged transactions on power loss, and nothing acknowledged may be lost), and
/// keep up to 64 MiB of pages in memory.
const SQLITE_PRAGMAS: &str = "PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON; \
     PRAGMA synchronous = FULL; PRAGMA cache_size = -65536";

/// How long a statement waits for a connection before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the store's statements run.
#[derive(Debug, Clone)]
pub(super) enum Db {
    /// PostgreSQL: a pool, whose connections run side by side.
    Pool(AnyPool),
    /// SQLite: the one connection, held by one statement or transaction at a time.
    ///
    /// One connection: in memory, each connection would be a database of its own, and on
    /// disk SQLite takes one writer at a time anyway: a second
    /// connection waiting for the write lock sleeps in SQLite's busy handler (1, 2, 5, 10 …
    /// ms), while a statement waiting for the one connection is woken the moment it is
    /// free; and its page cache stays valid, where each write by another connection would
    /// make it read its pages again. Statements are short (no query streams its rows), so
    /// readers wait microseconds. Not a pool of one: sqlx's pool pings a connection through
    /// its worker thread as it is taken and again as it is given back, which cost three
    /// times the statement itself, and the pool's bookkeeping a task more.
    One(Arc<tokio::sync::Mutex<AnyConnection>>),
}

/// A connection taken from [`Db`] for one statement or transaction.
pub(super) enum Conn<'a> {
    Pooled(PoolConnection<Any>),
    One(tokio::sync::MutexGuard<'a, AnyConnection>),
}

impl Deref for Conn<'_> {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match self {
            Conn::Pooled(conn) => conn,
            Conn::One(conn) => conn,
        }
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Conn::Pooled(conn) => conn,
            Conn::One(conn) => conn,
        }
    }
}

/// The URL with its password replaced by `***`, for messages.
pub(super) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..scheme_end + 3],
        &userinfo[..colon],
        &rest[at..]
    )
}

fn open_error(url: &str, message: impl std::fmt::Display) -> StoreError {
    StoreError::Open {
        url: redact(url),
        message: message.to_string(),
    }
}

fn is_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// `sqlite://PATH` with `mode=rwc` unless a mode is given, so a missing file is created.
fn sqlite_url(url: &str) -> String {
    if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

impl Store {
    /// Opens the database at `url` and applies the migrations it lacks.
    ///
    /// - `sqlite://PATH` (relative or absolute; `sqlite:///abs/path.db`): the file is created
    ///   when missing; WAL journal, a 30 s busy timeout, foreign keys on. `sqlite::memory:`
    ///   gives a private in-memory database (one connection).
    /// - `postgres://user:pass@host:port/db` (or `postgresql://`).
    ///
    /// Any other scheme, or a database that cannot be reached, is [`StoreError::Open`]
    /// naming the URL (password hidden).
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let store = if url.starts_with("sqlite:") {
            Self::open_sqlite(url).await?
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::open_postgres(url).await?
        } else {
            return Err(open_error(
                url,
                "unsupported database URL: expected sqlite://PATH or postgres://USER:PASSWORD@HOST/DB",
            ));
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Which engine this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// SQLite: rewrites the database file without its free pages and empties the WAL, so
    /// values overwritten or deleted (a secret stored in clear by an older version) leave
    /// no bytes behind. PostgreSQL: nothing (its files are the database server's).
    pub async fn scrub(&self) -> Result<()> {
        if self.backend != Backend::Sqlite {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        sqlx::query("VACUUM").execute(&mut *conn).await?;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn open_sqlite(url: &str) -> Result<Store> {
        let memory = is_memory(url);
        let full = if memory {
            url.to_owned()
        } else {
            sqlite_url(url)
        };
        let options: AnyConnectOptions = full.parse().map_err(|e| open_error(url, e))?;
        let mut conn = AnyConnection::connect_with(&options)
            .await
            .map_err(|e| open_error(url, e))?;
        // WAL is a property of the file; switching to it needs an exclusive lock that
        // busy_timeout does not wait for, so it comes first.
        if !memory {
            sqlx::raw_sql("PRAGMA journal_mode = WAL")
                .execute(&mut conn)
                .await
                .map_err(|e| open_error(url, e))?;
        }
        sqlx::raw_sql(SQLITE_PRAGMAS)
            .execute(&mut conn)
            .await
            .map_err(|e| open_error(url, e))?;
        let store = Store {
            db: Db::One(Arc::new(tokio::sync::Mutex::new(conn))),
            backend: Backend::Sqlite,
            ends: None,
            repos: Some(Default::default()),
        };
        Ok(Store {
            ends: Some(super::commit::start(store.clone())),
            ..store
        })
    }

    async fn open_postgres(url: &str) -> Result<Store> {
        let options: AnyConnectOptions = url.parse().map_err(|e| open_error(url, e))?;
        // One plain connection first: the pool retries a refused connection until its
        // acquire timeout, this fails at once with the server's (or the network's) answer.
        let conn = sqlx::AnyConnection::connect_with(&options)
            .await
            .map_err(|e| open_error(url, e))?;
        conn.close().await.map_err(|e| open_error(url, e))?;
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| open_error(url, e))?;
        Ok(Store {
            db: Db::Pool(pool),
            backend: Backend::Postgres,
            ends: None,
            repos: None,
        })
    }

    /// A transaction that, on SQLite, holds the write lock from its first statement
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads first and then writes fails
    /// with SQLITE_BUSY instead of waiting when another writer committed in between.
    pub(super) async fn begin<'c>(&self, conn: &'c mut Conn<'_>) -> Result<Transaction<'c, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => conn.begin().await?,
        })
    }

    /// A connection to run a statement or a transaction on, waited for at most
    /// [`ACQUIRE_TIMEOUT`] (as sqlx's pool does, with its error).
    pub(super) async fn conn(&self) -> Result<Conn<'_>> {
        match &self.db {
            Db::Pool(pool) => Ok(Conn::Pooled(pool.acquire().await?)),
            Db::One(conn) => tokio::time::timeout(ACQUIRE_TIMEOUT, conn.lock())
                .await
                .map(Conn::One)
                .map_err(|_| sqlx::Error::PoolTimedOut.into()),
        }
    }

    /// Applies, in order, every migration of this engine not yet in `schema_migrations`,
    /// each in its own transaction together with its record. Claiming the name first
    /// (`INSERT … ON CONFLICT DO NOTHING`) makes two processes opening the same database
    /// at once apply it once: the second waits for the first and then finds it recorded.
    async fn migrate(&self) -> Result<()> {
        let migrations = match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => POSTGRES_MIGRATIONS,
        };
        let failed = |name: &str, e: sqlx::Error| StoreError::Migration {
            name: name.to_owned(),
            message: e.to_string(),
        };
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations \
             (name TEXT PRIMARY KEY, applied BIGINT NOT NULL)",
        )
        .execute(&mut *self.conn().await?)
        .await
        .map_err(|e| failed("schema_migrations", e))?;
        for (name, sql) in migrations {
            let as_migration = |e| match e {
                StoreError::Database(e) => failed(name, e),
                other => other,
            };
            let mut conn = self.conn().await.map_err(as_migration)?;
            let mut tx = self.begin(&mut conn).await.map_err(as_migration)?;
            let claimed = sqlx::query(
                "INSERT INTO schema_migrations (name, applied) VALUES ($1, $2) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(*name)
            .bind(super::rows::now_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| failed(name, e))?
            .rows_affected();
            if claimed == 0 {
                tx.rollback().await.map_err(|e| failed(name, e))?;
                continue;
            }
            sqlx::raw_sql(sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| failed(name, e))?;
            tx.commit().await.map_err(|e| failed(name, e))?;
            tracing::info!(migration = name, "applied database migration");
        }
        Ok(())
    }

    /// The migrations recorded as applied, by name, with the unix ms they were applied at.
    pub async fn applied_migrations(&self) -> Result<Vec<(String, i64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT name, applied FROM schema_migrations ORDER BY name")
                .fetch_all(&mut *self.conn().await?)
                .await?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("postgres://slipway:secret@127.0.0.1:5432/db?sslmode=disable"),
            "postgres://slipway:***@127.0.0.1:5432/db?sslmode=disable"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
        assert_eq!(redact("mysql://a:b@c"), "mysql://a:***@c");
        assert_eq!(redact("nonsense"), "nonsense");
    }

    /// A transaction dropped half-way (its caller's future cancelled) leaves nothing behind
    /// on SQLite's one connection: the next holder sees none of its writes and can begin.
    #[tokio::test]
    async fn a_dropped_transaction_is_rolled_back_before_the_next_holder() {
        let store = Store::open("sqlite::memory:").await.expect("open");
        let count = || async {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM t")
                .fetch_one(&mut *store.conn().await.expect("conn"))
                .await
                .expect("count");
            n
        };
        sqlx::raw_sql("CREATE TABLE t (v BIGINT)")
            .execute(&mut *store.conn().await.expect("conn"))
            .await
            .expect("create");
        for commit in [false, true] {
            let mut conn = store.conn().await.expect("conn");
            let mut tx = store.begin(&mut conn).await.expect("begin");
            sqlx::query("INSERT INTO t (v) VALUES (1)")
                .execute(&mut *tx)
                .await
                .expect("insert");
            if commit {
                tx.commit().await.expect("commit");
            } else {
                drop(tx);
            }
            // Dropped uncommitted first, then begun again and committed.
            drop(conn);
            assert_eq!(count().await, i64::from(commit));
        }
    }

    #[test]
    fn sqlite_urls_get_rwc() {
        assert_eq!(sqlite_url("sqlite:///x.db"), "sqlite:///x.db?mode=rwc");
        assert_eq!(
            sqlite_url("sqlite:///x.db?cache=shared"),
            "sqlite:///x.db?cache=shared&mode=rwc"
        );
        assert_eq!(
            sqlite_url("sqlite:///x.db?mode=ro"),
            "sqlite:///x.db?mode=ro"
        );
    }
}
