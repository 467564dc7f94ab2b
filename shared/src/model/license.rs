//! `licenses`: one document per license (by SPDX id), parsed from model cards.

use mongodb::bson::DateTime;
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct License {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// SPDX identifier (`Apache-2.0`), or the card's own id prefixed `LicenseRef-` when it has
    /// none (`LicenseRef-llama3`).
    pub spdx_id: String,
    /// Whether commercial use is allowed; absent when the license needs a human to read it.
    pub commercial_use: Option<bool>,
    pub notes: Option<String>,
    /// A copy of the license text in the bucket, when the repo ships one.
    pub text_path: Option<String>,
    /// The repo whose card first named it.
    pub first_seen_in: String,
    pub created_at: DateTime,
}

/// Maps a model card's `license:` value to an SPDX id and what is known about commercial use.
pub fn from_card_id(card_id: &str) -> (String, Option<bool>) {
    let id = card_id.trim().to_ascii_lowercase();
    let known: &[(&str, &str, Option<bool>)] = &[
        ("apache-2.0", "Apache-2.0", Some(true)),
        ("mit", "MIT", Some(true)),
        ("bsd-2-clause", "BSD-2-Clause", Some(true)),
        ("bsd-3-clause", "BSD-3-Clause", Some(true)),
        ("cc0-1.0", "CC0-1.0", Some(true)),
        ("cc-by-4.0", "CC-BY-4.0", Some(true)),
        ("cc-by-sa-4.0", "CC-BY-SA-4.0", Some(true)),
        ("cc-by-nc-4.0", "CC-BY-NC-4.0", Some(false)),
        ("cc-by-nc-sa-4.0", "CC-BY-NC-SA-4.0", Some(false)),
        ("cc-by-nc-nd-4.0", "CC-BY-NC-ND-4.0", Some(false)),
        ("gpl-3.0", "GPL-3.0-only", Some(true)),
        ("lgpl-3.0", "LGPL-3.0-only", Some(true)),
        ("agpl-3.0", "AGPL-3.0-only", Some(true)),
        ("mpl-2.0", "MPL-2.0", Some(true)),
        ("unlicense", "Unlicense", Some(true)),
    ];
    match known.iter().find(|(card, _, _)| *card == id) {
        Some((_, spdx, commercial)) => ((*spdx).to_owned(), *commercial),
        None => (format!("LicenseRef-{id}"), None),
    }
}

/// The `license:` value of a model card's YAML front matter (`---` ... `---`).
pub fn card_license(card: &str) -> Option<String> {
    let body = card.strip_prefix("---")?;
    let end = body.find("\n---")?;
    body[..end].lines().find_map(|line| {
        let value = line
            .strip_prefix("license:")?
            .trim()
            .trim_matches(['"', '\'']);
        (!value.is_empty()).then(|| value.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_front_matter() {
        let card = "---\nlanguage: en\nlicense: apache-2.0\ntags:\n- x\n---\n# Model\nlicense: mit";
        assert_eq!(card_license(card).as_deref(), Some("apache-2.0"));
        assert_eq!(card_license("# no front matter\nlicense: mit"), None);
        assert_eq!(
            from_card_id("Apache-2.0"),
            ("Apache-2.0".into(), Some(true))
        );
        assert_eq!(from_card_id("cc-by-nc-4.0").1, Some(false));
        assert_eq!(from_card_id("llama3"), ("LicenseRef-llama3".into(), None));
    }
}
