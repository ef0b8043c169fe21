//! User-interactive authentication sessions.

use sqlx::Row;

use super::{Error, Result, Storage};

/// A user-interactive authentication session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UiaSession {
    /// What the session authorises (`register`, `change_password`, …); a session started for
    /// one purpose cannot complete another.
    pub purpose: String,
    /// The user who started it, for endpoints that need an access token.
    pub user_id: Option<String>,
    /// Stages completed so far, in order.
    pub completed: Vec<String>,
    /// When it was created, in milliseconds since the epoch.
    pub created_ts: i64,
}

impl Storage {
    /// Starts a session, and forgets sessions created before `expired_before`.
    pub async fn create_uia_session(
        &self,
        session_id: &str,
        purpose: &str,
        user_id: Option<&str>,
        now: i64,
        expired_before: i64,
    ) -> Result<()> {
        sqlx::query("DELETE FROM uia_sessions WHERE created_ts < $1").bind(expired_before).execute(&self.pool).await?;
        sqlx::query(
            "INSERT INTO uia_sessions (session_id, purpose, user_id, completed, created_ts) \
             VALUES ($1, $2, $3, '[]', $4)",
        )
        .bind(session_id)
        .bind(purpose)
        .bind(user_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Looks a session up.
    pub async fn uia_session(&self, session_id: &str) -> Result<Option<UiaSession>> {
        let row = sqlx::query("SELECT purpose, user_id, completed, created_ts FROM uia_sessions WHERE session_id = $1")
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let completed: String = r.try_get(2)?;
        Ok(Some(UiaSession {
            purpose: r.try_get(0)?,
            user_id: r.try_get(1)?,
            completed: serde_json::from_str(&completed)
                .map_err(|e| Error::Corrupt(format!("uia session {session_id}: {e}")))?,
            created_ts: r.try_get(3)?,
        }))
    }

    /// Records the stages completed so far.
    pub async fn set_uia_completed(&self, session_id: &str, completed: &[String]) -> Result<()> {
        let completed = serde_json::to_string(completed).map_err(|e| Error::Corrupt(e.to_string()))?;
        sqlx::query("UPDATE uia_sessions SET completed = $1 WHERE session_id = $2")
            .bind(completed)
            .bind(session_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends a session once the operation it authorised has run.
    pub async fn delete_uia_session(&self, session_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM uia_sessions WHERE session_id = $1").bind(session_id).execute(&self.pool).await?;
        Ok(())
    }
}
