//! The Cloudflare v4 response envelope and the error type handlers return.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use driftkv_core::KvError;
use serde::Serialize;
use serde_json::value::RawValue;

/// A handler failure, rendered as the Cloudflare error envelope with the error's status.
#[derive(Debug)]
pub struct ApiError(pub KvError);

impl From<KvError> for ApiError {
    fn from(e: KvError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %self.0, "request failed");
        } else {
            tracing::debug!(error = %self.0, code = self.0.code(), "request refused");
        }
        let errors = vec![ErrorJson {
            code: self.0.code(),
            message: self.0.to_string(),
        }];
        let body = Envelope {
            success: false,
            errors,
            messages: [],
            result: (),
            result_info: None::<()>,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = self.0.retry_after_secs() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The result type of every handler.
pub type ApiResult = Result<Response, ApiError>;

/// The success envelope. Typed rather than built with `json!` so that raw JSON pieces (stored
/// metadata) are written out as they are, without being parsed again.
#[derive(Serialize)]
struct Envelope<R, I> {
    success: bool,
    errors: Vec<ErrorJson>,
    messages: [(); 0],
    result: R,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_info: Option<I>,
}

#[derive(Serialize)]
struct ErrorJson {
    code: u32,
    message: String,
}

/// A success envelope around `result`.
pub fn ok(result: impl Serialize) -> ApiResult {
    Ok(Json(Envelope {
        success: true,
        errors: Vec::new(),
        messages: [],
        result,
        result_info: None::<()>,
    })
    .into_response())
}

/// A success envelope around `result`, with `result_info` (paginated listings).
pub fn ok_with_info(result: impl Serialize, result_info: impl Serialize) -> ApiResult {
    Ok(Json(Envelope {
        success: true,
        errors: Vec::new(),
        messages: [],
        result,
        result_info: Some(result_info),
    })
    .into_response())
}

/// Stored metadata (compact JSON text) as a raw JSON value for a response.
pub fn raw_metadata(metadata: Option<&str>) -> Result<Option<Box<RawValue>>, KvError> {
    metadata
        .map(|m| {
            RawValue::from_string(m.to_owned())
                .map_err(|e| KvError::Internal(format!("stored metadata is not JSON: {e}")))
        })
        .transpose()
}

/// The success envelope of calls that return nothing (value writes and deletes, namespace
/// deletes): `"result": null`, Cloudflare's `api-response-common-no-result`. Strict clients
/// fail on `{}` there.
pub fn ok_no_result() -> ApiResult {
    ok(())
}
