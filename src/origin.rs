//! Who may call the HTTP API from a browser: the Host and Origin checks run on every
//! request before it is routed. Pure functions, called on the loop.
//!
//! # Why
//! The API can register tokens and send as anyone. WuKongIM answers every request with
//! `Access-Control-Allow-Origin: *`; with that, any web page open in a browser on the
//! server's host could drive a loopback API: read answers, register a token, and (as a
//! CORS "simple request", a `text/plain` POST with no preflight) send messages. Ruyi
//! differs from WuKongIM here, on purpose:
//! - **Origin.** Browsers send `Origin` on every cross-site POST and on every CORS
//!   request; curl and app servers send none. A request with an `Origin` is served only
//!   when that origin is listed in `cors_origins`, or is the API's own origin (a page the
//!   API itself serves). Anything else gets 403 before it runs.
//! - **CORS headers** are sent only to listed origins (echoing the origin, with `Vary:
//!   Origin`), never `*` unless `*` is what the operator listed.
//! - **Host.** On an API bound to loopback, only loopback host names (`localhost`,
//!   `127.x.x.x`, `[::1]`) and `allowed_hosts` are served: a DNS-rebinding page, whose
//!   requests carry its own host name, gets 403. A request without `Host` (HTTP/1.0
//!   tools) passes: browsers always send one.

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it; answer with CORS headers for this origin when `Some`.
    Allow(Option<String>),
    /// Answer 403 with this reason and run nothing.
    Refuse(&'static str),
}

/// The host part of a `Host` header value, without the port, lower-cased.
fn host_name(host: &str) -> String {
    let host = host.trim().trim_end_matches('.');
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn is_loopback_name(name: &str) -> bool {
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Judges one request (module docs). `host` and `origin` are the raw header values;
/// `loopback_api` says the API listens on a loopback address.
pub fn check(
    host: Option<&[u8]>,
    origin: Option<&[u8]>,
    loopback_api: bool,
    cors_origins: &[String],
    allowed_hosts: &[String],
) -> Verdict {
    let host = host.map(String::from_utf8_lossy);
    if loopback_api {
        if let Some(host) = &host {
            let name = host_name(host);
            let allowed = is_loopback_name(&name)
                || allowed_hosts
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(&name) || a.eq_ignore_ascii_case(host));
            if !allowed {
                return Verdict::Refuse("this API serves loopback host names only");
            }
        }
    }
    let Some(origin) = origin else {
        return Verdict::Allow(None);
    };
    let origin = String::from_utf8_lossy(origin).trim().to_owned();
    if cors_origins.iter().any(|o| o == "*") {
        return Verdict::Allow(Some("*".into()));
    }
    if cors_origins.iter().any(|o| o.eq_ignore_ascii_case(&origin)) {
        return Verdict::Allow(Some(origin));
    }
    // The API's own origin: a page it served itself, or through a TLS proxy in front (same
    // host and port; the Host check above already vouched for the host).
    let own = host.is_some_and(|h| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(h.trim()))
    });
    if own {
        return Verdict::Allow(None);
    }
    Verdict::Refuse("cross-origin requests are not allowed (see cors_origins)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(host: &str, origin: Option<&str>, cors: &[&str]) -> Verdict {
        let cors: Vec<String> = cors.iter().map(|s| s.to_string()).collect();
        check(
            Some(host.as_bytes()),
            origin.map(str::as_bytes),
            true,
            &cors,
            &["api.internal".to_owned()],
        )
    }

    #[test]
    fn tools_pass_and_foreign_pages_do_not() {
        assert_eq!(judge("127.0.0.1:5001", None, &[]), Verdict::Allow(None));
        assert_eq!(judge("localhost", None, &[]), Verdict::Allow(None));
        assert_eq!(judge("[::1]:5001", None, &[]), Verdict::Allow(None));
        assert_eq!(judge("API.internal:5001", None, &[]), Verdict::Allow(None));
        assert!(matches!(
            judge("127.0.0.1:5001", Some("https://evil.example"), &[]),
            Verdict::Refuse(_)
        ));
        // DNS rebinding: the page's own host name reaches a loopback API.
        assert!(matches!(
            judge("evil.example:5001", Some("http://evil.example:5001"), &[]),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            judge("127.0.0.1:5001", Some("null"), &[]),
            Verdict::Refuse(_)
        ));
        assert_eq!(
            judge("127.0.0.1:5001", Some("http://127.0.0.1:5001"), &[]),
            Verdict::Allow(None),
            "the API's own pages"
        );
        assert_eq!(
            judge("localhost.:5001", Some("https://localhost.:5001"), &[]),
            Verdict::Allow(None),
            "a trailing dot, served through TLS"
        );
        assert_eq!(
            judge(
                "localhost:5001",
                Some("https://app.example"),
                &["https://app.example"]
            ),
            Verdict::Allow(Some("https://app.example".into()))
        );
        assert_eq!(
            check(Some(b"chat.example"), None, false, &[], &[]),
            Verdict::Allow(None),
            "no host check beyond loopback (the manager token guards it)"
        );
    }
}
