//! JSON into typed values, naming the field path of a shape error (`lists.tor.cidrs[3]`).
//!
//! With the `field-paths` feature (on by default) paths come from `serde_path_to_error`, which
//! instantiates every `Deserialize` impl a second time: about 116 KB of the edge component. Builds where size
//! matters more (the edge worker, whose bundles were checked with paths by `signalbox policy`
//! and the score cache before they arrive) turn it off; their errors then carry serde_json's
//! line and column instead of the path.

use serde::de::DeserializeOwned;

/// A shape error: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// The field path (`.` for the top level; a line and column without `field-paths`).
    pub path: String,
    /// What was wrong.
    pub message: String,
}

/// Deserializes `json`, naming the path of a shape error.
pub fn from_slice_with_path<T: DeserializeOwned>(json: &[u8]) -> Result<T, JsonError> {
    #[cfg(feature = "field-paths")]
    {
        let de = &mut serde_json::Deserializer::from_slice(json);
        serde_path_to_error::deserialize(de).map_err(|e| JsonError {
            path: e.path().to_string(),
            message: e.into_inner().to_string(),
        })
    }
    #[cfg(not(feature = "field-paths"))]
    {
        serde_json::from_slice(json).map_err(|e| {
            let text = e.to_string();
            // serde_json ends its message with the position, which is the path here.
            let message = match text.rsplit_once(" at line ") {
                Some((message, _)) => message.to_owned(),
                None => text,
            };
            JsonError {
                path: format!("line {} column {}", e.line(), e.column()),
                message,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    /// A shape error names where it is: the field path with `field-paths`, serde_json's
    /// position without (`cargo test -p signalbox-policy --no-default-features --lib json`).
    #[test]
    fn shape_errors_say_where() {
        let Err(e) = from_slice_with_path::<Outer>(br#"{"inner": {"count": "many"}}"#) else {
            panic!("a string is not a count");
        };
        assert!(e.message.contains("invalid type"), "{e:?}");
        if cfg!(feature = "field-paths") {
            assert_eq!(e.path, "inner.count");
        } else {
            assert_eq!(e.path, "line 1 column 26");
            assert!(!e.message.contains(" at line "), "{e:?}");
        }
        assert!(from_slice_with_path::<Outer>(br#"{"inner": {"count": 3}}"#).is_ok());
    }
}
