//! The admin UI over real HTTP, without a browser (`keel/tests/ui.rs` drives one): sessions,
//! cookie attributes, CSRF, role-aware pages, bad form input, escaping. Every action goes through
//! the API's handler, so its audit entry names the session's token.

use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::json;

use crate::helpers::{TestServer, job};

struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: String,
}

impl Browser {
    fn anonymous(s: &TestServer) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .unwrap(),
            base: format!("http://{}", s.addr),
            cookie: String::new(),
        }
    }

    async fn log_in(s: &TestServer, token: &str) -> Browser {
        let mut b = Browser::anonymous(s);
        let res = b.post("/ui/login", &format!("token={token}")).await;
        assert_eq!(res.status(), 303);
        let set = res.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        b.cookie = set.split(';').next().unwrap().to_owned();
        b
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    async fn post(&self, path: &str, form: &str) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form.to_owned())
            .send()
            .await
            .unwrap()
    }

    /// The CSRF token of this session, as its pages carry it.
    async fn csrf(&self) -> String {
        let (_, html) = self.get("/ui").await;
        let at = html.find("name=\"_csrf\" value=\"").unwrap() + 20;
        html[at..at + 64].to_owned()
    }
}

#[tokio::test]
async fn sessions_need_a_known_token_and_their_cookie_is_locked_down() {
    let s = TestServer::start().await;
    let anon = Browser::anonymous(&s);
    let res = anon
        .http
        .get(format!("{}/ui", anon.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()[LOCATION], "/ui/login");
    let csp = res.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );

    for bad in ["keel_0000", "", "x%3By%3DHttpOnly"] {
        let res = anon.post("/ui/login", &format!("token={bad}")).await;
        assert_eq!(res.status(), 401, "{bad:?}");
        assert!(res.headers().get(SET_COOKIE).is_none(), "{bad:?}");
    }
    let admin = s.admin_token.clone().unwrap();
    let res = anon.post("/ui/login", &format!("token={admin}")).await;
    assert_eq!(res.status(), 303);
    let cookie = res.headers()[SET_COOKIE].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "no Secure without TLS: {cookie}"
    );

    // A revoked token's session ends at once.
    let (id, secret) = s.token("viewer", None).await;
    let viewer = Browser::log_in(&s, &secret).await;
    assert_eq!(viewer.get("/ui").await.0, 200);
    s.call("DELETE", &format!("/v1/tokens/{id}"), None, 204)
        .await;
    assert_eq!(viewer.get("/ui").await.0, 303);
}

#[tokio::test]
async fn actions_need_the_sessions_csrf_token_and_are_the_apis() {
    let s = TestServer::start().await;
    s.enqueue(job("mail")).await;
    let b = Browser::log_in(&s, s.admin_token.as_deref().unwrap()).await;
    let csrf = b.csrf().await;
    for form in [
        String::new(),
        format!("_csrf={}", "0".repeat(64)),
        "_csrf=".into(),
    ] {
        let res = b.post("/ui/queues/mail/pause", &form).await;
        assert_eq!(res.status(), 403, "{form:?}");
    }
    assert_eq!(s.get("/v1/queues/mail", 200).await["paused"], false);
    // Another session's token does not do either.
    let (_, secret) = s.token("admin", None).await;
    let other = Browser::log_in(&s, &secret).await;
    let theirs = other.csrf().await;
    assert_ne!(theirs, csrf);
    assert_eq!(
        b.post("/ui/queues/mail/pause", &format!("_csrf={theirs}"))
            .await
            .status(),
        403
    );

    let res = b
        .post("/ui/queues/mail/pause", &format!("_csrf={csrf}"))
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(s.get("/v1/queues/mail", 200).await["paused"], true);
    let audit = s.get("/v1/audit", 200).await;
    let entry = &audit["entries"][0];
    assert_eq!(entry["action"], "queue.paused");
    assert_eq!(entry["actor"]["name"], "admin");
}

#[tokio::test]
async fn bad_form_input_is_refused_by_name_and_changes_nothing() {
    let s = TestServer::start().await;
    s.enqueue(job("mail")).await;
    let b = Browser::log_in(&s, s.admin_token.as_deref().unwrap()).await;
    let csrf = b.csrf().await;
    let before = s.get("/v1/queues/mail", 200).await["config"].clone();
    for (form, says) in [
        ("concurrency=abc", "must be a whole number"),
        ("concurrency=0", "/concurrency"),
        (
            "max_attempts=99999999999999999999",
            "must be a whole number",
        ),
        (
            "backoff_initial_ms=100&backoff_max_ms=",
            "give all of these",
        ),
        (
            "backoff_initial_ms=500&backoff_max_ms=100",
            "/backoff/max_ms",
        ),
        (
            "retention_completed_ms=-1&retention_dead_ms=5",
            "/retention/completed_ms",
        ),
        ("rate_per_second=abc", "must be a number"),
        ("rate_per_second=NaN", "must be a number"),
        ("rate_per_second=5&rate_burst=0", "/rate_limit/burst"),
    ] {
        let res = b
            .post("/ui/queues/mail/config", &format!("_csrf={csrf}&{form}"))
            .await;
        assert_eq!(res.status(), 422, "{form}");
        let page = res.text().await.unwrap();
        assert!(page.contains(says), "{form}: {page}");
    }
    assert_eq!(s.get("/v1/queues/mail", 200).await["config"], before);
    let res = b
        .post(
            "/ui/queues/mail/config",
            &format!("_csrf={csrf}&concurrency=5&max_attempts=&timeout_ms="),
        )
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(
        s.get("/v1/queues/mail", 200).await["config"]["concurrency"],
        5
    );
    let all = "backoff_initial_ms=200&backoff_max_ms=9000&backoff_jitter=0.5\
               &retention_completed_ms=60000&retention_dead_ms=120000&rate_per_second=2.5&rate_burst=";
    let res = b
        .post("/ui/queues/mail/config", &format!("_csrf={csrf}&{all}"))
        .await;
    assert_eq!(res.status(), 303);
    let config = s.get("/v1/queues/mail", 200).await["config"].clone();
    assert_eq!(
        config["backoff"],
        json!({"initial_ms": 200, "max_ms": 9000, "jitter": 0.5})
    );
    assert_eq!(
        config["retention"],
        json!({"completed_ms": 60000, "dead_ms": 120000})
    );
    assert_eq!(config["rate_limit"], json!({"per_second": 2.5, "burst": 3}));
    let (_, page) = b.get("/ui/queues/mail").await;
    assert!(
        page.contains("value=\"9000\""),
        "the form shows the overrides"
    );
    let reset = "concurrency=&backoff_initial_ms=&backoff_max_ms=&retention_completed_ms=&retention_dead_ms=&rate_per_second=";
    let res = b
        .post("/ui/queues/mail/config", &format!("_csrf={csrf}&{reset}"))
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(
        s.get("/v1/queues/mail", 200).await["config"],
        before,
        "empty fields reset to the defaults"
    );
    for path in [
        "/ui/queues/no%20such",
        "/ui/jobs/not-an-id",
        "/ui/queues/mail?state=nope",
        "/ui/queues/mail?before=yesterday",
    ] {
        let (status, page) = b.get(path).await;
        assert!(status == 404 || status == 422, "{path}: {status}");
        assert!(page.contains("<h1>"), "{path}: a page, not a bare error");
    }
    // "Created before" takes what a datetime-local field sends, with or without seconds.
    for before in ["2999-01-01T00:00", "2999-01-01T00:00:30"] {
        let (status, page) = b.get(&format!("/ui/queues/mail?before={before}")).await;
        assert_eq!(status, 200, "{before}");
        assert!(
            page.contains("/ui/jobs/"),
            "{before}: the job created before then is listed"
        );
    }
    let (_, page) = b.get("/ui/queues/mail?before=2000-01-01T00:00").await;
    assert!(
        page.contains("No jobs match."),
        "nothing was created before 2000"
    );
    let res = b
        .post("/ui/queues/mail/explode", &format!("_csrf={csrf}"))
        .await;
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn a_viewer_is_offered_nothing_and_payloads_are_escaped() {
    let s = TestServer::start().await;
    let j = s
        .enqueue(json!({"queue": "mail", "kind": "send", "payload": {"html": "<script>alert(1)</script>"}}))
        .await;
    let id = j["id"].as_str().unwrap();
    let (_, secret) = s.token("viewer", None).await;
    let viewer = Browser::log_in(&s, &secret).await;
    for path in [
        "/ui".to_owned(),
        "/ui/queues/mail".into(),
        format!("/ui/jobs/{id}"),
        "/ui/targets".into(),
    ] {
        let (status, page) = viewer.get(&path).await;
        assert_eq!(status, 200, "{path}");
        let main = &page[page.find("<main").unwrap()..];
        assert!(
            !main.contains("method=\"post\""),
            "{path} offers an action to a viewer"
        );
    }
    let (_, page) = viewer.get(&format!("/ui/jobs/{id}")).await;
    assert!(!page.contains("<script>alert"), "the payload is escaped");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;") || page.contains("&#60;script&#62;"),
        "{page}"
    );
    let admin = Browser::log_in(&s, s.admin_token.as_deref().unwrap()).await;
    let (_, page) = admin.get(&format!("/ui/jobs/{id}")).await;
    assert!(
        page.contains("Cancel job"),
        "an admin is offered the cancel"
    );
    // The banner after an action says only what keel wrote: a crafted link shows none.
    let (_, page) = admin.get(&format!("/ui/jobs/{id}?done=cancelled")).await;
    assert!(
        page.contains("role=\"status\">Cancelled."),
        "a known code shows its text"
    );
    for crafted in [
        "Call%20this%20number",
        "%3Cb%3Ehi%3C%2Fb%3E",
        "replayed&n=abc",
    ] {
        let (status, page) = admin.get(&format!("/ui/jobs/{id}?done={crafted}")).await;
        assert!(status == 200 || status == 400, "{crafted}: {status}");
        assert!(!page.contains("role=\"status\""), "{crafted}: no banner");
    }
}
