//! Every Redis key name Harmonia uses, formatted in this one place.
//!
//! All keys start with the configured prefix, so deployments can share one Redis server.

use crate::resources::ResourceClass;

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

    /// The task stream of one resource class (`cpu`, `g1m40000`, ...).
    pub fn task_stream(&self, class: ResourceClass) -> String {
        format!("{}:tasks:{class}", self.prefix)
    }

    /// The class back from a task stream name, if it is one.
    pub fn class_of(&self, stream: &str) -> Option<ResourceClass> {
        stream
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":tasks:")?
            .parse()
            .ok()
    }

    /// The hint stream of one model in one resource class: a copy of each of its entries
    /// that names `model`, read first by the workers that hold the model (model affinity).
    pub fn hint_stream(&self, class: ResourceClass, model: &str) -> String {
        format!("{}:hints:{class}:{model}", self.prefix)
    }

    /// Exists (expiring after a second) while a worker holding `model` is looking for work in
    /// `class`: it is set by each read of the model's hint stream.
    pub fn looking(&self, class: ResourceClass, model: &str) -> String {
        format!("{}:looking:{class}:{model}", self.prefix)
    }

    /// Set of the hint streams entries were appended to (their consumers are pruned too).
    pub fn hint_streams(&self) -> String {
        format!("{}:hint-streams", self.prefix)
    }

    /// Set of resource classes that have a task stream (workers read it to find streams).
    pub fn classes(&self) -> String {
        format!("{}:classes", self.prefix)
    }

    /// Task state changes the scheduler reacts to (promotion, skipping).
    pub fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// Tasks that failed for good, with their last error.
    pub fn dead_letter(&self) -> String {
        format!("{}:dead", self.prefix)
    }

    /// Pub/sub channel carrying cancel signals for running tasks.
    pub fn cancel_channel(&self) -> String {
        format!("{}:cancel", self.prefix)
    }

    /// Written by the scheduler; its absence means Redis lost its data (restart or flush).
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
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
        let class = ResourceClass {
            gpus: 1,
            gpu_memory_mb: 40000,
        };
        assert_eq!(keys.task_stream(class), "harmonia:tasks:g1m40000");
        assert_eq!(keys.class_of("harmonia:tasks:g1m40000"), Some(class));
        assert_eq!(keys.class_of("other:tasks:cpu"), None);
        assert_eq!(
            keys.hint_stream(class, "org/model"),
            "harmonia:hints:g1m40000:org/model"
        );
        assert_eq!(keys.class_of("harmonia:hints:g1m40000:org/model"), None);
        assert_eq!(
            keys.looking(ResourceClass::CPU, "org/model"),
            "harmonia:looking:cpu:org/model"
        );
    }
}
