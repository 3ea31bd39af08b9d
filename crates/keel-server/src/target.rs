//! Push targets: validating a queue's `target`, the address policy that keeps deliveries away
//! from internal networks (SSRF), and Standard Webhooks signatures.
//!
//! Invariant: a delivery never connects to a forbidden address. Link-local (which holds the
//! cloud metadata services), unspecified, multicast and broadcast addresses are always refused;
//! loopback and private ranges unless the server runs with `--allow-private-targets`. The check
//! runs at configuration time (IP-literal hosts) and again at connect time: every address a host
//! name resolves to is checked by the HTTP client's resolver, so a name that later resolves to
//! 169.254.169.254 (DNS rebinding) is refused too.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit, Mac};
use keel_core::validate::check_range;
use keel_core::{BreakerConfig, FieldError, Target};
use reqwest::Url;
use serde::Deserialize;

/// Headers keel sets itself on every delivery; a target may not override them.
const RESERVED: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "idempotency-key",
    "traceparent",
    "keel-job-id",
    "keel-queue",
    "keel-kind",
    "keel-attempt",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

const MAX_TARGET_TIMEOUT_MS: i64 = 300_000;

/// Why an address may not be a target, if it may not.
pub(crate) fn forbidden(ip: IpAddr, allow_private: bool) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_link_local() {
                Some("link-local (cloud metadata) addresses are never targets")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || o[0] == 0 {
                Some("unspecified, broadcast and multicast addresses are never targets")
            } else if allow_private {
                None
            } else if v4.is_loopback() {
                Some("loopback addresses need --allow-private-targets")
            } else if v4.is_private() || (o[0] == 100 && (o[1] & 0xC0) == 64) {
                Some("private addresses need --allow-private-targets")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            if (seg[0] & 0xFFC0) == 0xFE80 {
                Some("link-local addresses are never targets")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("unspecified and multicast addresses are never targets")
            } else if allow_private {
                None
            } else if v6.is_loopback() {
                Some("loopback addresses need --allow-private-targets")
            } else if (seg[0] & 0xFE00) == 0xFC00 {
                Some("private (unique local) addresses need --allow-private-targets")
            } else {
                None
            }
        }
    }
}

/// The resolver of the push HTTP client: resolves with the system resolver, then drops every
/// forbidden address; a name with none left fails to resolve.
pub(crate) struct GuardedResolver {
    pub(crate) allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| forbidden(a.ip(), allow_private).is_none())
                .collect();
            if allowed.is_empty() {
                let why = addrs
                    .first()
                    .and_then(|a| forbidden(a.ip(), allow_private))
                    .unwrap_or("it has no addresses");
                return Err(Box::new(Forbidden(format!(
                    "{host} resolves to a forbidden address: {why}"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A target address the policy refuses (found in a delivery error's source chain).
#[derive(Debug)]
pub(crate) struct Forbidden(pub(crate) String);

impl std::fmt::Display for Forbidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Forbidden {}

/// Checks a URL's scheme and, for an IP-literal host, its address.
pub(crate) fn check_url(url: &Url, allow_private: bool) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("must be http or https, not {}", url.scheme()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; use headers".to_owned());
    }
    match url.host() {
        None => Err("has no host".to_owned()),
        Some(url::Host::Ipv4(ip)) => {
            forbidden(IpAddr::V4(ip), allow_private).map_or(Ok(()), |why| Err(why.to_owned()))
        }
        Some(url::Host::Ipv6(ip)) => {
            forbidden(IpAddr::V6(ip), allow_private).map_or(Ok(()), |why| Err(why.to_owned()))
        }
        Some(url::Host::Domain(d)) => {
            if !allow_private && (d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost"))
            {
                Err("loopback addresses need --allow-private-targets".to_owned())
            } else {
                Ok(())
            }
        }
    }
}

/// `scheme://host:port`: what a breaker is kept per.
pub(crate) fn origin(url: &Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// The key bytes of a `whsec_` secret.
fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let key = BASE64.decode(secret.strip_prefix("whsec_")?).ok()?;
    (!key.is_empty() && key.len() <= 64).then_some(key)
}

/// The Standard Webhooks `webhook-signature` value for one message.
pub(crate) fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = secret_key(secret)?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Some(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())))
}

/// Push mode: keel POSTs each job's payload to `url`. Loopback and private addresses need
/// `--allow-private-targets`; link-local never.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetBody {
    #[schema(format = "uri", max_length = 2048)]
    url: String,
    /// At most 32.
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[schema(minimum = 1, maximum = 300_000)]
    timeout_ms: Option<i64>,
    /// `whsec_` + base64 (Standard Webhooks); `"***"` keeps the current one.
    signing_secret: Option<String>,
    breaker: Option<BreakerBody>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BreakerBody {
    #[schema(minimum = 1, maximum = 1000)]
    failure_threshold: Option<i64>,
    #[schema(minimum = 100, maximum = 600_000)]
    open_ms: Option<i64>,
}

impl TargetBody {
    /// Validates into a target. `current` is the queue's target before the change: a
    /// `signing_secret` of `"***"` (what reads show) keeps its secret, so a read-modify-write
    /// does not erase it.
    pub fn validate(
        self,
        current: Option<&Target>,
        allow_private: bool,
        errors: &mut Vec<FieldError>,
    ) -> Target {
        match Url::parse(&self.url) {
            Ok(url) => {
                if let Err(m) = check_url(&url, allow_private) {
                    errors.push(FieldError::new("/target/url", m));
                }
            }
            Err(e) => errors.push(FieldError::new(
                "/target/url",
                format!("is not an absolute URL: {e}"),
            )),
        }
        if self.url.len() > 2048 {
            errors.push(FieldError::new(
                "/target/url",
                "must be at most 2048 characters",
            ));
        }
        if self.headers.len() > 32 {
            errors.push(FieldError::new("/target/headers", "at most 32 headers"));
        }
        for (name, value) in &self.headers {
            let at = format!(
                "/target/headers/{}",
                name.replace('~', "~0").replace('/', "~1")
            );
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.push(FieldError::new(at, "is not a valid header name"));
            } else if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
                errors.push(FieldError::new(at, "is set by keel on every delivery"));
            } else if reqwest::header::HeaderValue::from_str(value).is_err() || value.len() > 4096 {
                errors.push(FieldError::new(
                    at,
                    "must be visible ASCII, at most 4096 characters",
                ));
            }
        }
        let timeout_ms = self
            .timeout_ms
            .unwrap_or_else(keel_core::queue::default_target_timeout_ms);
        check_range(
            errors,
            "/target/timeout_ms",
            timeout_ms,
            1,
            MAX_TARGET_TIMEOUT_MS,
        );
        let signing_secret = match self.signing_secret {
            Some(s) if s == keel_core::queue::REDACTED => {
                current.and_then(|t| t.signing_secret.clone()).or_else(|| {
                    errors.push(FieldError::new(
                        "/target/signing_secret",
                        "\"***\" keeps the current secret, but this queue has none",
                    ));
                    None
                })
            }
            Some(s) => {
                if secret_key(&s).is_none() {
                    errors.push(FieldError::new(
                        "/target/signing_secret",
                        "must be whsec_ followed by base64 of 1 to 64 bytes",
                    ));
                }
                Some(s)
            }
            None => None,
        };
        let defaults = BreakerConfig::default();
        let breaker = match self.breaker {
            None => defaults,
            Some(b) => {
                let failure_threshold = b
                    .failure_threshold
                    .unwrap_or(defaults.failure_threshold as i64);
                let open_ms = b.open_ms.unwrap_or(defaults.open_ms);
                check_range(
                    errors,
                    "/target/breaker/failure_threshold",
                    failure_threshold,
                    1,
                    1000,
                );
                check_range(
                    errors,
                    "/target/breaker/open_ms",
                    open_ms,
                    100,
                    keel_core::breaker::MAX_OPEN_MS,
                );
                BreakerConfig {
                    failure_threshold: failure_threshold.clamp(1, 1000) as u32,
                    open_ms,
                }
            }
        };
        Target {
            url: self.url,
            headers: self.headers,
            timeout_ms,
            signing_secret,
            breaker,
        }
    }
}

/// The shared HTTP client of push delivery: no redirects (a 3xx is an answer, and following
/// one could leave the checked origin), connect limit 5 s, the address policy in its resolver.
pub(crate) fn http_client(allow_private: bool) -> Result<reqwest::Client, reqwest::Error> {
    // reqwest is built without a crypto provider (ring instead of aws-lc, see STACK.md) and
    // panics without one; keep any the process installed first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(5))
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_policy_refuses_internal_ranges() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        for always in [
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "fe80::1",
            "::",
            "::ffff:169.254.169.254",
        ] {
            assert!(forbidden(ip(always), true).is_some(), "{always}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(forbidden(ip(private), false).is_some(), "{private}");
            assert!(forbidden(ip(private), true).is_none(), "{private}");
        }
        for public in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "172.32.0.1",
            "100.128.0.1",
        ] {
            assert!(forbidden(ip(public), false).is_none(), "{public}");
        }
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(sign("nope", "id", 1, b""), None);
    }
}
