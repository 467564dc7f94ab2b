//! `api_tokens` (model-manager seed): bearer tokens of the HTTP gateway. A token reads
//! `hm_<id>_<secret>`; only the sha256 of its 256-bit secret is stored, so a leaked database
//! leaks no usable token, and the secret is shown once, at creation.

use mongodb::bson::DateTime;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may do. `admin` implies every other scope within its workspace, plus
/// tokens, audit, workers, queues and dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenScope {
    #[serde(rename = "runs:read")]
    RunsRead,
    #[serde(rename = "runs:write")]
    RunsWrite,
    #[serde(rename = "artifacts:read")]
    ArtifactsRead,
    #[serde(rename = "admin")]
    Admin,
}

impl TokenScope {
    pub const ALL: [Self; 4] = [
        Self::RunsRead,
        Self::RunsWrite,
        Self::ArtifactsRead,
        Self::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RunsRead => "runs:read",
            Self::RunsWrite => "runs:write",
            Self::ArtifactsRead => "artifacts:read",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown scope '{s}'; scopes are runs:read, runs:write, artifacts:read, admin"
                )
            })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    /// The `<id>` part of the token: 16 hex digits, public (logs and audit entries name it).
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    /// The one workspace whose runs, tasks and artifacts the token sees.
    pub workspace: String,
    pub scopes: Vec<TokenScope>,
    /// Hex sha256 of the secret.
    pub hashed_secret: String,
    pub created_by: String,
    pub created_at: DateTime,
    pub last_used_at: Option<DateTime>,
    pub revoked_at: Option<DateTime>,
}

impl ApiToken {
    pub fn allows(&self, scope: TokenScope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&TokenScope::Admin)
    }

    /// Whether `secret` is this token's: compares sha256 digests, which an attacker cannot
    /// steer byte by byte, so a plain comparison leaks nothing useful through timing.
    pub fn secret_matches(&self, secret: &str) -> bool {
        self.revoked_at.is_none() && hash_secret(secret) == self.hashed_secret
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A freshly minted token: the document to store and the one string to hand the user.
#[derive(Debug)]
pub struct NewToken {
    pub token: ApiToken,
    pub plaintext: String,
}

/// Mints a token: an 8-byte id and a 32-byte secret from the OS's CSPRNG.
pub fn mint(name: &str, workspace: &str, scopes: Vec<TokenScope>, created_by: &str) -> NewToken {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rand::fill(&mut id);
    rand::fill(&mut secret);
    let (id, secret) = (hex::encode(id), hex::encode(secret));
    NewToken {
        plaintext: format!("hm_{id}_{secret}"),
        token: ApiToken {
            id,
            name: name.to_owned(),
            workspace: workspace.to_owned(),
            scopes,
            hashed_secret: hash_secret(&secret),
            created_by: created_by.to_owned(),
            created_at: DateTime::now(),
            last_used_at: None,
            revoked_at: None,
        },
    }
}

/// Splits `hm_<id>_<secret>` into id and secret; `None` for anything else.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("hm_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 64)).then_some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_splits_into_its_id_and_a_secret_that_matches_its_hash() {
        let new = mint("ci", "ml", vec![TokenScope::RunsRead], "cli:test");
        let (id, secret) = split(&new.plaintext).expect("well-formed");
        assert_eq!(id, new.token.id);
        assert!(new.token.secret_matches(secret));
        assert!(!new.token.secret_matches(&"0".repeat(64)));
        assert!(!new.plaintext.contains(&new.token.hashed_secret));
    }

    #[test]
    fn malformed_tokens_do_not_split() {
        for bad in [
            "",
            "hm_",
            "hm_abc_def",
            "xx_0123456789abcdef_00",
            "hm_0123456789abcdef",
        ] {
            assert_eq!(split(bad), None, "{bad}");
        }
    }

    #[test]
    fn admin_allows_every_scope_and_others_only_their_own() {
        let mut t = mint("t", "ml", vec![TokenScope::RunsRead], "x").token;
        assert!(t.allows(TokenScope::RunsRead));
        assert!(!t.allows(TokenScope::RunsWrite));
        t.scopes = vec![TokenScope::Admin];
        assert!(TokenScope::ALL.iter().all(|s| t.allows(*s)));
    }
}
