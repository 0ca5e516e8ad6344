//! Request bodies read the same way on every route: JSON that must be an object (serde would
//! otherwise fill a struct from an array, field by field in order), then the route's fields,
//! with a refusal that names the field at fault (`details.field`, OpenAI's `param`) in the
//! client's terms rather than serde's type names — also for fields that a route's struct takes
//! from a shared, flattened part, where serde itself loses the field's name.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::error_code::ErrorCode;

/// The body of a request as `T`, or the error that refuses it.
pub fn parse_body<T: DeserializeOwned>(
    body: Result<Json<Value>, JsonRejection>,
) -> Result<T, ApiError> {
    let Json(value) = body.map_err(ApiError::from)?;
    let Some(object) = value.as_object() else {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            format!(
                "the body must be a JSON object of the route's fields, not {}",
                kind_of(&value)
            ),
        ));
    };
    let error = match serde_path_to_error::deserialize::<_, T>(&value) {
        Ok(parsed) => return Ok(parsed),
        Err(error) => error,
    };
    let path = error.path().to_string();
    let message = error.into_inner().to_string();
    // serde's own words start the message; what follows may quote the client's value.
    let named = |quote: &str| {
        message
            .strip_prefix(quote)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string)
    };
    let inner_field = |field: String| match path.as_str() {
        "." | "" => field,
        parent => format!("{parent}.{field}"),
    };
    let (code, field, why) = if let Some(missing) = named("missing field `") {
        let field = inner_field(missing);
        (
            ErrorCode::MissingField,
            field.clone(),
            format!("`{field}` is required"),
        )
    } else if let Some(unknown) = named("unknown field `") {
        // Here the path already ends at the unknown field.
        let field = if path.ends_with(&unknown) {
            path.clone()
        } else {
            inner_field(unknown)
        };
        (
            ErrorCode::InvalidInput,
            field.clone(),
            format!("`{field}` is not a field of this route"),
        )
    } else {
        let field = match path.as_str() {
            "." | "" => culprit::<T>(object, &message).unwrap_or_default(),
            path => path.to_string(),
        };
        let why = client_terms(&message);
        if field.is_empty() {
            return Err(ApiError::new(ErrorCode::InvalidInput, why));
        }
        (
            ErrorCode::InvalidInput,
            field.clone(),
            format!("`{field}`: {why}"),
        )
    };
    Err(ApiError::new(code, why).for_field(&field))
}

/// The top-level field whose value makes `object` fail as `T` with `message`: the first whose
/// removal makes it parse, or fail for another reason than a missing field. Used only when
/// serde gave no path (a flattened part); a request is refused once, so trying each field
/// again costs nothing that matters.
fn culprit<T: DeserializeOwned>(object: &Map<String, Value>, message: &str) -> Option<String> {
    // Each try parses the body again: past a body's usual size, the field goes unnamed rather
    // than a request with thousands of keys costing their square.
    const MOST_KEYS: usize = 64;
    if object.len() > MOST_KEYS {
        return None;
    }
    object.keys().find_map(|key| {
        let mut without = object.clone();
        without.remove(key);
        match serde_json::from_value::<T>(Value::Object(without)) {
            Ok(_) => Some(key.clone()),
            Err(e) => {
                let other = e.to_string();
                (!other.starts_with("missing field") && !other.starts_with(message))
                    .then(|| key.clone())
            }
        }
    })
}

/// serde's message without Rust's names for the types (`untagged enum Stop`, `struct Body`).
fn client_terms(message: &str) -> String {
    if message.starts_with("data did not match any variant of untagged enum") {
        return "a value of the wrong type".to_string();
    }
    match message.split_once("expected struct ") {
        Some((head, _)) => format!("{head}expected an object"),
        None => message.to_string(),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Native {
        message: String,
        max_tokens: Option<u32>,
        parts: Option<Vec<Part>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Part {
        role: String,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Shared {
        max_tokens: Option<u32>,
        stop: Option<Stop>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    #[allow(dead_code)]
    enum Stop {
        One(String),
        Many(Vec<String>),
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Flattened {
        messages: Vec<String>,
        #[serde(flatten)]
        shared: Shared,
    }

    fn refusal<T: DeserializeOwned + std::fmt::Debug>(
        body: Value,
    ) -> (String, Option<Value>, String) {
        let err = parse_body::<T>(Ok(Json(body))).expect_err("refused");
        let field = err.details.as_ref().map(|d| d["field"].clone());
        (err.code.to_string(), field, err.message)
    }

    #[test]
    fn an_array_is_not_read_as_the_fields_in_order() {
        let (code, field, message) = refusal::<Native>(json!(["hi", 2, null]));
        assert_eq!((code.as_str(), field), ("VAL_001", None));
        assert_eq!(
            message,
            "the body must be a JSON object of the route's fields, not an array"
        );
        let (code, _, message) = refusal::<Native>(json!(null));
        assert_eq!(code, "VAL_001");
        assert!(message.ends_with("not null"), "{message}");
    }

    #[test]
    fn each_refusal_names_its_field() {
        let (code, field, message) = refusal::<Native>(json!({"message": "hi", "max_tokens": "3"}));
        assert_eq!(
            (code.as_str(), field),
            ("VAL_002", Some(json!("max_tokens")))
        );
        assert!(
            message.starts_with("`max_tokens`: invalid type: string"),
            "{message}"
        );
        let (code, field, _) = refusal::<Native>(json!({"max_tokens": 3}));
        assert_eq!((code.as_str(), field), ("VAL_003", Some(json!("message"))));
        let (code, field, _) = refusal::<Native>(json!({"message": "hi", "colour": 1}));
        assert_eq!((code.as_str(), field), ("VAL_002", Some(json!("colour"))));
        let (_, field, _) =
            refusal::<Native>(json!({"message": "hi", "parts": [{"role": "a"}, {"role": 5}]}));
        assert_eq!(field, Some(json!("parts[1].role")));
        let (code, field, _) = refusal::<Native>(json!({"message": "hi", "parts": [{}]}));
        assert_eq!(
            (code.as_str(), field),
            ("VAL_003", Some(json!("parts[0].role")))
        );
    }

    #[test]
    fn fields_of_a_flattened_part_are_named_too_without_rust_type_names() {
        let (code, field, message) =
            refusal::<Flattened>(json!({"messages": ["a"], "max_tokens": "3"}));
        assert_eq!(
            (code.as_str(), field),
            ("VAL_002", Some(json!("max_tokens")))
        );
        assert!(message.contains("expected u32"), "{message}");
        let (_, field, message) = refusal::<Flattened>(json!({"messages": ["a"], "stop": 5}));
        assert_eq!(field, Some(json!("stop")));
        assert_eq!(message, "`stop`: a value of the wrong type");
        // A required field of the route itself keeps its own refusal.
        let (code, field, _) = refusal::<Flattened>(json!({"max_tokens": 3}));
        assert_eq!((code.as_str(), field), ("VAL_003", Some(json!("messages"))));
    }
}
