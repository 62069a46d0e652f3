//! The OCI Distribution error body, `{"errors":[{"code","message","detail"}]}`: one writer for
//! every server, so that clients parse the same shape from every binary.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// The JSON body (newline-terminated); `detail` is left out when `None`.
pub fn oci_error_body(code: &str, message: &str, detail: Option<&Value>) -> Vec<u8> {
    let mut err = json!({"code": code, "message": message});
    if let Some(d) = detail {
        err["detail"] = d.clone();
    }
    let mut body = serde_json::to_vec(&json!({ "errors": [err] })).unwrap_or_default();
    body.push(b'\n');
    body
}

/// A complete error response: `status`, `Content-Type: application/json` and the body.
pub fn oci_error(
    status: StatusCode,
    code: &str,
    message: &str,
    detail: Option<&Value>,
) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        oci_error_body(code, message, detail),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        assert_eq!(
            oci_error_body("BLOB_UNKNOWN", "no", None),
            b"{\"errors\":[{\"code\":\"BLOB_UNKNOWN\",\"message\":\"no\"}]}\n"
        );
        let v: Value =
            serde_json::from_slice(&oci_error_body("X", "m", Some(&json!({"a": 1})))).unwrap();
        assert_eq!(v["errors"][0]["detail"]["a"], 1);
    }
}
