//! Dashboard sessions: a browser's sign-in, stored by the hash of its cookie's id.

use anyhow::Context;
use sqlx::Row;

use super::Store;
use super::rows::{text, ts};
use crate::domain::Timestamp;

/// A stored dashboard session (see [`crate::dashboard`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardSession {
    /// SHA-256 (hex) of the id the cookie holds.
    pub id_hash: String,
    /// The API token the session was opened with ([`crate::domain::ApiToken::id`]).
    pub token_id: String,
    /// The secret every form of the session carries.
    pub csrf_secret: String,
    pub created_on: Timestamp,
    pub last_seen_on: Timestamp,
    /// The session ends at this time.
    pub expires_on: Timestamp,
}

impl Store {
    /// Stores a new session, and deletes the sessions that expired before `session.created_on`.
    pub async fn insert_dashboard_session(&self, session: &DashboardSession) -> anyhow::Result<()> {
        let mut w = self.begin_write().await?;
        sqlx::query("DELETE FROM dashboard_sessions WHERE expires_on <= $1")
            .bind(session.created_on.millis())
            .execute(&mut *w.tx)
            .await
            .context("deleting expired dashboard sessions")?;
        sqlx::query(
            "INSERT INTO dashboard_sessions (id_hash, token_id, csrf_secret, created_on, last_seen_on, expires_on) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&session.id_hash)
        .bind(&session.token_id)
        .bind(&session.csrf_secret)
        .bind(session.created_on.millis())
        .bind(session.last_seen_on.millis())
        .bind(session.expires_on.millis())
        .execute(&mut *w.tx)
        .await
        .context("inserting a dashboard session")?;
        w.commit().await
    }

    /// The session with this id hash, unless it expired by `now`.
    pub async fn get_dashboard_session(
        &self,
        id_hash: &str,
        now: Timestamp,
    ) -> anyhow::Result<Option<DashboardSession>> {
        let row = sqlx::query(
            "SELECT id_hash, token_id, csrf_secret, created_on, last_seen_on, expires_on \
             FROM dashboard_sessions WHERE id_hash = $1 AND expires_on > $2",
        )
        .bind(id_hash)
        .bind(now.millis())
        .fetch_optional(&self.pool)
        .await
        .context("reading a dashboard session")?;
        row.map(|row| {
            Ok(DashboardSession {
                id_hash: text(&row, "id_hash")?,
                token_id: text(&row, "token_id")?,
                csrf_secret: text(&row, "csrf_secret")?,
                created_on: ts(&row, "created_on")?,
                last_seen_on: ts(&row, "last_seen_on")?,
                expires_on: ts(&row, "expires_on")?,
            })
        })
        .transpose()
    }

    /// Records a use of the session at `now`, which now ends at `expires_on` (unless it is gone).
    pub async fn touch_dashboard_session(
        &self,
        id_hash: &str,
        now: Timestamp,
        expires_on: Timestamp,
    ) -> anyhow::Result<()> {
        let mut w = self.begin_write().await?;
        sqlx::query(
            "UPDATE dashboard_sessions SET last_seen_on = $1, expires_on = $2 WHERE id_hash = $3",
        )
        .bind(now.millis())
        .bind(expires_on.millis())
        .bind(id_hash)
        .execute(&mut *w.tx)
        .await
        .context("recording a dashboard session's use")?;
        w.commit().await
    }

    /// Deletes a session (sign-out, or its token is gone); false when there was none.
    pub async fn delete_dashboard_session(&self, id_hash: &str) -> anyhow::Result<bool> {
        let mut w = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM dashboard_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&mut *w.tx)
            .await
            .context("deleting a dashboard session")?;
        w.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// How many sessions are stored (expired ones not yet deleted included).
    pub async fn count_dashboard_sessions(&self) -> anyhow::Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM dashboard_sessions")
            .fetch_one(&self.pool)
            .await
            .context("counting dashboard sessions")?;
        Ok(row.try_get("n")?)
    }
}
