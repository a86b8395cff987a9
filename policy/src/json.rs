//! JSON into typed values, naming the field path of a shape error (`lists.tor.cidrs[3]`).
//!
//! With the `field-paths` feature (on by default) paths come from `serde_path_to_error`, which
//! instantiates every `Deserialize` impl a second time: about 270 KB of wasm. Builds where size
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
