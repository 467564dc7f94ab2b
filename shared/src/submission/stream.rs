//! Reading a submission without holding its whole JSON tree: the `tasks` array is walked as it
//! is parsed, each task validated and kept only as its typed [`TaskSpec`](super::TaskSpec).
//! A 100,000-task submission held as a `serde_json::Value` tree takes ~100 MB, about fifteen
//! times its size on the wire; read this way, one task's tree at a time.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::validate::TaskCollector;

/// A submission's top level as read.
pub(super) enum Top {
    Object {
        /// Every top-level field but `tasks`, as JSON.
        fields: Map<String, Value>,
        tasks: Tasks,
    },
    /// Not an object: what it was instead ("a string", "null", ...).
    Other(&'static str),
}

/// The `tasks` field as read.
pub(super) enum Tasks {
    Missing,
    /// An array: each item already validated.
    Items(TaskCollector),
    /// Not an array: what it was instead.
    Other(&'static str),
    /// The field appears more than once.
    Repeated,
}

/// Parses `raw`; `Err` only when it is not JSON at all.
pub(super) fn read(raw: &[u8]) -> Result<Top, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    let top = de.deserialize_any(TopVisitor)?;
    de.end()?;
    Ok(top)
}

/// Consumes a sequence or map this reader does not descend into.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// The visitor methods for the scalars, all answering `$wrap(kind)`; what stays is the
/// container the visitor is for.
macro_rules! other_kinds {
    ($wrap:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($wrap("a boolean"))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($wrap("a number"))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($wrap("a number"))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($wrap("a number"))
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($wrap("a string"))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($wrap("null"))
        }
    };
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    other_kinds!(Top::Other);

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Top, A::Error> {
        drain_seq(seq)?;
        Ok(Top::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
        let mut fields = Map::new();
        let mut tasks = Tasks::Missing;
        while let Some(key) = map.next_key::<String>()? {
            if key != "tasks" {
                let value = map.next_value::<Value>()?;
                fields.insert(key, value);
            } else if matches!(tasks, Tasks::Missing) {
                tasks = map.next_value_seed(TasksSeed)?;
            } else {
                map.next_value::<IgnoredAny>()?;
                tasks = Tasks::Repeated;
            }
        }
        Ok(Top::Object { fields, tasks })
    }
}

struct TasksSeed;

impl<'de> DeserializeSeed<'de> for TasksSeed {
    type Value = Tasks;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Tasks, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TasksSeed {
    type Value = Tasks;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    other_kinds!(Tasks::Other);

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Tasks, A::Error> {
        drain_map(map)?;
        Ok(Tasks::Other("an object"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tasks, A::Error> {
        let mut collector = TaskCollector::default();
        while let Some(item) = seq.next_element::<Value>()? {
            collector.item(&item);
        }
        Ok(Tasks::Items(collector))
    }
}
