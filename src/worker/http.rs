//! The `http` task kind: POSTs `{id, task, args, kwargs, scheduled_at}` as JSON to a
//! configured URL, plus `progress_url` and `progress_token` when the worker serves its
//! progress endpoint (where to POST interim states while the request runs). 2xx is SUCCESS (the body, as JSON when it parses), 4xx a FAILURE that a
//! retry would not fix, 5xx and transport errors retryable. Header values may come from the
//! environment: checked when the task is registered (a missing secret fails at startup) and
//! re-read on every request (a rotated secret needs no restart).

use super::spec::HeaderValue;
use super::task::{Handler, TaskError, TaskRequest, TaskResult};
use super::Error;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest response excerpt put in an error message.
const EXCERPT: usize = 512;

/// Posts each task to one URL.
#[derive(Debug, Clone)]
pub(crate) struct HttpHandler {
    /// Shared connection pool.
    client: reqwest::Client,
    /// Target.
    url: String,
    /// Request headers as resolved at registration.
    headers: reqwest::header::HeaderMap,
    /// Headers read from the environment: re-read on every request so a rotated secret
    /// applies without a restart (the registration value stays when the variable vanished).
    from_env: Vec<(reqwest::header::HeaderName, String)>,
}

impl HttpHandler {
    pub(crate) fn new(
        task: &str,
        url: &str,
        headers: &BTreeMap<String, HeaderValue>,
        timeout: Option<Duration>,
    ) -> Result<Self, Error> {
        let mut map = reqwest::header::HeaderMap::new();
        let mut from_env = Vec::new();
        for (name, value) in headers {
            let env_var = match value {
                HeaderValue::Env(var) => Some(var.clone()),
                HeaderValue::Literal(_) => None,
            };
            let value = match value {
                HeaderValue::Literal(v) => v.clone(),
                HeaderValue::Env(var) => std::env::var(var).map_err(|_| Error::MissingEnv {
                    task: task.into(),
                    var: var.clone(),
                })?,
            };
            let bad = || Error::BadHeader {
                task: task.into(),
                header: name.clone(),
            };
            let name =
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
            let value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| bad())?;
            if let Some(var) = env_var {
                from_env.push((name.clone(), var));
            }
            map.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .timeout(timeout.unwrap_or(Duration::from_secs(30)))
            .build()
            .map_err(|e| Error::HttpClient(e.to_string()))?;
        Ok(Self {
            client,
            url: url.into(),
            headers: map,
            from_env,
        })
    }
}

impl HttpHandler {
    fn current_headers(&self) -> reqwest::header::HeaderMap {
        let mut headers = self.headers.clone();
        for (name, var) in &self.from_env {
            let fresh = std::env::var(var).ok();
            if let Some(v) = fresh.and_then(|v| reqwest::header::HeaderValue::from_str(&v).ok()) {
                headers.insert(name.clone(), v);
            }
        }
        headers
    }
}

#[async_trait::async_trait]
impl Handler for HttpHandler {
    async fn call(&self, req: TaskRequest) -> TaskResult {
        let mut payload = json!({
            "id": req.id, "task": req.task, "args": req.args, "kwargs": req.kwargs,
            "scheduled_at": req.scheduled_at,
        });
        if let (Some(url), Some(token), Some(p)) = (
            &req.progress_url,
            &req.progress_token,
            payload.as_object_mut(),
        ) {
            p.insert("progress_url".into(), url.clone().into());
            p.insert("progress_token".into(), token.clone().into());
        }
        let resp = self
            .client
            .post(&self.url)
            .headers(self.current_headers())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(payload.to_string())
            .send()
            .await
            .map_err(|e| TaskError::retryable("HttpError", format!("POST {}: {e}", self.url)))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| TaskError::retryable("HttpError", format!("reading response: {e}")))?;
        if status.is_success() {
            let trimmed = body.trim();
            if trimmed.is_empty() {
                return Ok(Value::Null);
            }
            return Ok(serde_json::from_str(trimmed).unwrap_or_else(|_| Value::String(body)));
        }
        let excerpt: String = body.chars().take(EXCERPT).collect();
        let msg = format!("POST {} answered {status}: {}", self.url, excerpt.trim());
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            Err(TaskError::retryable("HttpError", msg))
        } else {
            Err(TaskError::fatal("HttpError", msg))
        }
    }
}
