//! Cross-origin requests from browsers (`--cors-origin`), so a front end served from its own
//! origin can subscribe with `EventSource` and call the API with `fetch`.
//!
//! Off unless origins are configured. For a request whose `Origin` is allowed, every answer
//! carries `Access-Control-Allow-Origin` (and `Vary: Origin`), and a preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) is answered 204 with the methods and headers the API
//! uses. Invariant: CORS only tells browsers what they may read; it authorizes nothing — a
//! request from an allowed origin still needs its token.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

/// The origins allowed (`*`: any).
#[derive(Debug, Clone, Default)]
pub struct Cors {
    origins: Vec<String>,
}

impl Cors {
    pub fn new(origins: Vec<String>) -> Self {
        Self {
            origins: origins
                .into_iter()
                .map(|o| o.trim().trim_end_matches('/').to_string())
                .filter(|o| !o.is_empty())
                .collect(),
        }
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if allowed.
    fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        let text = origin.to_str().ok()?;
        if self.origins.iter().any(|o| o == "*") {
            return Some(HeaderValue::from_static("*"));
        }
        self.origins
            .iter()
            .any(|o| o == text)
            .then(|| origin.clone())
    }

    /// The answer to a preflight from an allowed origin (`None`: not one; route it as usual).
    pub fn preflight<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        if req.method() != Method::OPTIONS
            || !req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let allow = self.allow(req.headers().get(header::ORIGIN))?;
        Some(
            Response::builder()
                .status(StatusCode::NO_CONTENT)
                .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow)
                .header(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    "GET, HEAD, POST, PUT, DELETE",
                )
                .header(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    "authorization, content-type, idempotency-key, last-event-id",
                )
                .header(header::ACCESS_CONTROL_MAX_AGE, "600")
                .header(header::VARY, "Origin")
                .body(Full::new(Bytes::new()))
                .expect("valid response"),
        )
    }

    /// Adds the CORS headers to an answer to a request from `origin`.
    pub fn decorate<B>(&self, origin: Option<&HeaderValue>, r: &mut Response<B>) {
        let Some(allow) = self.allow(origin) else {
            return;
        };
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after, idempotent-replayed, www-authenticate"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, origin: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri("/v1/modules")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .body(())
            .unwrap()
    }

    #[test]
    fn only_configured_origins_are_allowed() {
        let cors = Cors::new(vec!["http://app.example/".into()]);
        let p = cors
            .preflight(&request(Method::OPTIONS, "http://app.example"))
            .unwrap();
        assert_eq!(p.status(), 204);
        assert_eq!(
            p.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "http://app.example"
        );
        assert!(cors
            .preflight(&request(Method::OPTIONS, "http://evil.example"))
            .is_none());
        assert!(cors
            .preflight(&request(Method::GET, "http://app.example"))
            .is_none());
        assert!(Cors::default()
            .preflight(&request(Method::OPTIONS, "http://app.example"))
            .is_none());
        let mut r = Response::new(());
        cors.decorate(
            Some(&HeaderValue::from_static("http://evil.example")),
            &mut r,
        );
        assert!(!r
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        let any = Cors::new(vec!["*".into()]);
        any.decorate(Some(&HeaderValue::from_static("http://x.example")), &mut r);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}
