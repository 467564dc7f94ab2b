//! `dashboard_sessions`: a browser signed in with an API token. The cookie carries a random
//! 256-bit secret; only its sha256 is stored (as for tokens). Each session has its own CSRF
//! token, which every form and every script's request must send back.

use mongodb::bson::DateTime;
use serde::{Deserialize, Serialize};

use super::token::hash_secret;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Hex sha256 of the cookie's secret.
    #[serde(rename = "_id")]
    pub id: String,
    /// The token signed in with: the session has its workspace and scopes, and ends with it.
    pub token_id: String,
    pub csrf: String,
    pub created_at: DateTime,
    /// MongoDB removes the session after this (TTL index).
    pub expires_at: DateTime,
}

/// A new session: the document to store and the cookie's secret.
#[derive(Debug)]
pub struct NewSession {
    pub session: Session,
    pub secret: String,
}

pub fn start(token_id: &str, lifetime: std::time::Duration) -> NewSession {
    let mut secret = [0u8; 32];
    let mut csrf = [0u8; 32];
    rand::fill(&mut secret);
    rand::fill(&mut csrf);
    let secret = hex::encode(secret);
    let now = DateTime::now();
    NewSession {
        session: Session {
            id: hash_secret(&secret),
            token_id: token_id.to_owned(),
            csrf: hex::encode(csrf),
            created_at: now,
            expires_at: DateTime::from_millis(now.timestamp_millis() + lifetime.as_millis() as i64),
        },
        secret,
    }
}

/// Whether `presented` is a well-formed cookie secret (64 hex digits), before any lookup.
pub fn well_formed(presented: &str) -> bool {
    presented.len() == 64 && presented.bytes().all(|b| b.is_ascii_hexdigit())
}
