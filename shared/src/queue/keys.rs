//! Every Redis key name Harmonia uses, formatted in this one place.
//!
//! All keys start with the configured prefix. A prefix written as a hash tag (`{harmonia}`) puts
//! every key in one Redis Cluster slot, which the multi-key scripts need there.

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis-fronted API: any client XADDs submissions here.
    pub fn submissions(&self) -> String {
        format!("{}:submissions", self.prefix)
    }

    /// One reply stream per submission request.
    pub fn replies(&self, request_id: &str) -> String {
        format!("{}:replies:{request_id}", self.prefix)
    }

    /// Rejections of submissions too broken to carry a request id.
    pub fn rejections(&self) -> String {
        format!("{}:rejections", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_contract() {
        let keys = Keys::new("harmonia");
        assert_eq!(keys.submissions(), "harmonia:submissions");
        assert_eq!(keys.replies("r-1"), "harmonia:replies:r-1");
        assert_eq!(keys.rejections(), "harmonia:rejections");
        assert_eq!(Keys::new("{h}").submissions(), "{h}:submissions");
    }
}
