//! The web console (`/ui`) in a real browser: Debian's headless Chromium, driven over
//! WebDriver (chromedriver) by fantoccini, against real `driftkv` processes on loopback. Every
//! wait is a poll of a DOM condition with a deadline. Each page is saved as a screenshot
//! (1280×800 and phone width, light and dark) under `target/console-screenshots/`.
//!
//! Without chromium and chromedriver the browser tests print why and pass, unless
//! `DRIFTKV_REQUIRE_BROWSER=1` (set by `.ci/run`) makes them fail instead. The experiment
//! endpoint's own checks need no browser.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, send_err, send_ok, DevCluster, Server};
use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// The testbed admin token of the test clusters.
const ADMIN: &str = "console-admin-token";
/// The account the console opens on (the CLI's default).
const ACCOUNT: &str = "dev";
/// Longest wait for any one condition in the page.
const DEADLINE: Duration = Duration::from_secs(30);

/// `.../accounts/dev/storage/kv/namespaces` at an edge.
fn api(edge: &str) -> String {
    format!("{edge}/client/v4/accounts/{ACCOUNT}/storage/kv/namespaces")
}

/// An executable on the PATH.
fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// A chromedriver process and a headless Chromium session through it.
struct Browser {
    client: Client,
    driver: Child,
    /// chromedriver's port and the session's id, to end the session if the test fails.
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

/// A Chrome DevTools command sent through chromedriver (`/session/{id}/goog/cdp/execute`):
/// media and device emulation for the screenshots.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/goog/cdp/execute",
            session.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({ "cmd": self.cmd, "params": self.params });
        (http::Method::POST, Some(body.to_string()))
    }
}

/// The browser's console messages since the last call (chromedriver's `se/log`): CSP
/// violations and script errors show there.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "type": "browser" }).to_string()),
        )
    }
}

impl Browser {
    /// Starts chromedriver and a browser session, or says why it cannot and returns `None`
    /// (a failure when `DRIFTKV_REQUIRE_BROWSER=1`).
    async fn start() -> Option<Browser> {
        let driver = which(&["chromedriver"]);
        let chromium = which(&["chromium", "chromium-browser", "google-chrome"]);
        let (Some(driver), Some(chromium)) = (driver, chromium) else {
            let message = "chromium and chromedriver are not installed \
                           (apt-get install chromium chromium-driver)";
            if std::env::var("DRIFTKV_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
                panic!("DRIFTKV_REQUIRE_BROWSER=1 but {message}");
            }
            eprintln!("skipping the console's browser test: {message}");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}/");
        let http = client();
        let deadline = Instant::now() + DEADLINE;
        while !http
            .get(format!("{url}status"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromedriver never answered");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().expect("tempdir");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--hide-scrollbars",
                    "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client =
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities)
                .connect(&url)
                .await
            {
                Ok(client) => client,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("no Chromium session: {e}");
                }
            };
        let session = client
            .session_id()
            .await
            .expect("session id")
            .expect("a session");
        Some(Browser {
            client,
            driver: child,
            port,
            session,
            _profile: profile,
        })
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigation");
    }

    /// Runs `script` (a function body) until it returns something other than null, false or
    /// an error; fails the test after the deadline.
    async fn until(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let last = match self.client.execute(script, Vec::new()).await {
                Ok(Value::Null | Value::Bool(false)) => "nothing yet".to_owned(),
                Ok(value) => return value,
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                let body = self
                    .js("return document.body.innerText")
                    .await
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(2000)
                    .collect::<String>();
                panic!("timed out waiting for {what} ({last}); the page shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .expect("script runs")
    }

    /// The element `css` once it is there and shown.
    async fn el(&self, css: &str) -> Element {
        let check = format!(
            "const e = document.querySelector({css:?}); return !!e && e.getClientRects().length > 0;"
        );
        self.until(&format!("{css} to show"), &check).await;
        self.client
            .find(Locator::Css(css))
            .await
            .expect("element found")
    }

    /// The text of `css` once it contains `needle`.
    async fn text(&self, css: &str, needle: &str) -> String {
        let script = format!(
            "const e = document.querySelector({css:?}); \
             return e && e.textContent.includes({needle:?}) ? e.textContent : null;"
        );
        let what = format!("{css} to say {needle:?}");
        self.until(&what, &script)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn click(&self, css: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            // A freshly rendered element may not take clicks yet (covered, or replaced).
            match self.el(css).await.click().await {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("cannot click {css}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn fill(&self, css: &str, text: &str) {
        let field = self.el(css).await;
        field.clear().await.expect("cleared");
        field.send_keys(text).await.expect("typed");
    }

    /// The names of the keys the list shows.
    async fn listed(&self) -> Vec<String> {
        let names = self
            .js("return [...document.querySelectorAll('#key-table tr[data-key]')].map(r => r.dataset.key)")
            .await;
        serde_json::from_value(names).expect("names")
    }

    async fn cdp(&self, cmd: &'static str, params: Value) {
        self.client
            .issue_cmd(Cdp { cmd, params })
            .await
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    }

    /// Saves the page at 1280×800 and at a phone's width, light and dark, as
    /// `target/console-screenshots/{name}-{size}-{scheme}.png`.
    async fn screenshots(&self, name: &str) {
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        // The page itself, without the notices that happen to be showing.
        self.js("document.getElementById('toasts').replaceChildren()")
            .await;
        for (width, height, mobile, size) in
            [(1280, 800, false, "1280x800"), (390, 844, true, "phone")]
        {
            self.cdp(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
            )
            .await;
            for scheme in ["light", "dark"] {
                self.cdp(
                    "Emulation.setEmulatedMedia",
                    json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
                )
                .await;
                let settled = format!(
                    "return window.innerWidth === {width} && matchMedia('(prefers-color-scheme: {scheme})').matches"
                );
                self.until(&format!("a {size} {scheme} page"), &settled)
                    .await;
                let png = self.client.screenshot().await.expect("screenshot");
                let path = dir.join(format!("{name}-{size}-{scheme}.png"));
                std::fs::write(&path, png).expect("screenshot saved");
            }
        }
        self.cdp("Emulation.clearDeviceMetricsOverride", json!({}))
            .await;
        self.cdp("Emulation.setEmulatedMedia", json!({ "features": [] }))
            .await;
    }

    /// Fails the test if the page logged an error: a resource the Content-Security-Policy
    /// refused, or a script that threw. (API calls the test made fail on purpose are logged as
    /// failed loads with their status; those are allowed.)
    async fn assert_no_page_errors(&self) {
        let log = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("browser log");
        let errors: Vec<String> = log
            .as_array()
            .expect("log entries")
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .filter(|message| !message.contains("the server responded with a status of"))
            .collect();
        assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    }

    async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that failed never closed its session. Killing chromedriver alone would leave
        // its Chromium running, so first ask it to end the session (which quits Chromium),
        // in a plain blocking request: a failing test may be unwinding outside the runtime.
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session, self.port
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `target/console-screenshots`, in the target directory cargo builds into.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("console-screenshots")
}

/// Every key of a namespace at an edge, through the API, following cursors.
async fn all_keys(http: &reqwest::Client, edge: &str, ns: &str, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = send_ok(
            http.get(format!("{}/{ns}/keys", api(edge)))
                .query(&[("prefix", prefix), ("cursor", &cursor)]),
        )
        .await;
        names.extend(
            page["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["name"].as_str().unwrap().to_owned()),
        );
        cursor = page["result_info"]["cursor"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if cursor.is_empty() {
            return names;
        }
    }
}

/// A value's bytes through the API; `None` on 404.
async fn value(http: &reqwest::Client, edge: &str, ns: &str, key: &str) -> Option<Vec<u8>> {
    let response = http
        .get(format!(
            "{}/{ns}/values/{}",
            api(edge),
            common::encode_key(key)
        ))
        .send()
        .await
        .unwrap();
    match response.status().as_u16() {
        200 => Some(response.bytes().await.unwrap().to_vec()),
        404 => None,
        other => panic!("GET {key}: HTTP {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_manages_namespaces_and_keys_and_shows_the_cluster() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let dev = DevCluster::start(
        2,
        &[
            ("DRIFTKV_TESTBED__ENABLED", "true"),
            ("DRIFTKV_TESTBED__ADMIN_TOKEN", ADMIN),
        ],
    )
    .await;
    let edge = dev.edges[0].clone();
    let http = client();

    // It opens on account "dev", with no namespace yet; no token is needed on loopback.
    browser.goto(&format!("{edge}/ui")).await;
    browser.text("#ns-list", "No namespaces").await;
    let account = browser
        .js("return document.getElementById('account-input').value")
        .await;
    assert_eq!(account, ACCOUNT);

    // Create a namespace, and see a Cloudflare error (a duplicate title) shown readably.
    browser.fill("#ns-title", "console-test").await;
    browser.click("#ns-create button[type=submit]").await;
    browser.el("tr[data-title='console-test']").await;
    browser.fill("#ns-title", "console-test").await;
    browser.click("#ns-create button[type=submit]").await;
    browser.text("#toasts", "code 10014, HTTP 409").await;
    browser.click(".toast.error .close").await;

    // Its keys: a text value, a JSON value with metadata and an expiration, a binary file.
    browser
        .click("tr[data-title='console-test'] a.ns-open")
        .await;
    browser.text("#ns-heading", "console-test").await;
    let url = browser.client.current_url().await.unwrap();
    let ns = url.path().rsplit('/').next().unwrap().to_owned();
    assert_eq!(url.query(), Some("account=dev"), "{url}");
    browser.text("#key-list", "No keys yet").await;

    browser.click("#new-key").await;
    browser.fill("#edit-name", "greeting").await;
    browser.fill("#edit-value", "hello, console").await;
    browser.click("#edit-save").await;
    browser.text("#value-view", "hello, console").await;
    assert_eq!(
        value(&http, &edge, &ns, "greeting").await.as_deref(),
        Some(&b"hello, console"[..])
    );

    browser.click("#new-key").await;
    browser.fill("#edit-name", "user:1").await;
    browser
        .fill("#edit-value", r#"{"name":"ana","roles":["admin","dev"]}"#)
        .await;
    browser.fill("#edit-metadata", r#"{"owner":"ana"}"#).await;
    browser
        .el("#edit-expiry-kind")
        .await
        .select_by_value("ttl")
        .await
        .unwrap();
    browser.fill("#edit-expiry", "3600").await;
    browser.click("#edit-save").await;
    // Pretty-printed, two spaces deep.
    browser.text("#value-view", "\n  \"name\": \"ana\",").await;
    browser.text("#value-metadata", "\"owner\": \"ana\"").await;
    browser.text("#value-expiration", "in 60 min").await;
    let metadata = send_ok(http.get(format!("{}/{ns}/metadata/user:1", api(&edge)))).await;
    assert_eq!(metadata["result"], json!({ "owner": "ana" }));
    browser.screenshots("keys").await;

    let bytes: Vec<u8> = (0..300u32).map(|i| (i % 256) as u8).collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &bytes).unwrap();
    browser.click("#new-key").await;
    browser.fill("#edit-name", "blob.bin").await;
    browser.click("#source-file").await;
    browser
        .el("#edit-file")
        .await
        .send_keys(file.path().to_str().unwrap())
        .await
        .unwrap();
    browser.click("#edit-save").await;
    browser.text("#value-size", "300 bytes").await;
    browser.text("#value-size", "binary").await;
    browser
        .text("#value-view", "00000000  0001 0203 0405 0607")
        .await;
    assert_eq!(
        value(&http, &edge, &ns, "blob.bin").await.as_deref(),
        Some(&bytes[..])
    );
    let downloads = tempfile::tempdir().unwrap();
    browser
        .cdp(
            "Browser.setDownloadBehavior",
            json!({ "behavior": "allow", "downloadPath": downloads.path() }),
        )
        .await;
    browser.click("#value-download").await;
    let saved = downloads.path().join("blob.bin");
    common::wait_for(DEADLINE, "the download", || {
        let saved = saved.clone();
        async move { std::fs::read(&saved).ok().filter(|b| b.len() == 300) }
    })
    .await;
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        bytes,
        "downloaded as stored"
    );
    browser.screenshots("key-binary").await;
    assert_eq!(
        browser.listed().await,
        ["blob.bin", "greeting", "user:1"],
        "listed in byte order"
    );

    // Edit a key, then delete one (Escape first cancels the confirmation: nothing goes).
    browser.click("tr[data-key='greeting'] .key-open").await;
    browser.text("#key-title", "greeting").await;
    browser.click("#value-edit").await;
    browser.fill("#edit-value", "hello again").await;
    browser.screenshots("key-editor").await;
    browser.click("#edit-save").await;
    browser.text("#value-view", "hello again").await;
    assert_eq!(
        value(&http, &edge, &ns, "greeting").await.as_deref(),
        Some(&b"hello again"[..])
    );
    browser.click("tr[data-key='user:1'] .key-open").await;
    browser.text("#key-title", "user:1").await;
    browser.click("#value-delete").await;
    browser.el("#confirm-dialog[open]").await;
    browser
        .el("#confirm-cancel")
        .await
        .send_keys(&fantoccini::key::Key::Escape)
        .await
        .unwrap();
    browser
        .until(
            "the dialog to close",
            "return !document.getElementById('confirm-dialog').open",
        )
        .await;
    assert!(value(&http, &edge, &ns, "user:1").await.is_some());
    browser.click("#value-delete").await;
    browser.click("#confirm-ok").await;
    browser
        .until(
            "user:1 to leave the list",
            "return !document.querySelector(\"tr[data-key='user:1']\")",
        )
        .await;
    assert_eq!(value(&http, &edge, &ns, "user:1").await, None);

    // 2,500 keys by prefix, loaded with the bulk API, paged through 500 at a time.
    let items: Vec<Value> = (0..2500)
        .map(|i| json!({ "key": format!("bulk-{i:05}"), "value": format!("v{i}") }))
        .collect();
    send_ok(http.put(format!("{}/{ns}/bulk", api(&edge))).json(&items)).await;
    let expected: Vec<String> = (0..2500).map(|i| format!("bulk-{i:05}")).collect();
    // "/" jumps to the prefix search from anywhere on the page.
    browser.el("body").await.send_keys("/").await.unwrap();
    browser
        .until(
            "the search field to have focus",
            "return document.activeElement.id === 'key-prefix'",
        )
        .await;
    browser.fill("#key-prefix", "bulk-").await;
    browser
        .el("#page-size")
        .await
        .select_by_value("500")
        .await
        .unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut pages = Vec::new();
    loop {
        let page = pages.len() + 1;
        browser.text("#keys-page", &format!("Page {page} ·")).await;
        let first = if page == 1 { "bulk-00000" } else { "bulk-" };
        browser
            .until(
                &format!("page {page} of the bulk keys"),
                &format!(
                    "const rows = document.querySelectorAll('#key-table tr[data-key]'); \
                     return rows.length > 0 && rows[0].dataset.key.startsWith({first:?}) \
                     && !rows[0].dataset.key.startsWith('blob');"
                ),
            )
            .await;
        let names = browser.listed().await;
        assert!(names.iter().all(|n| n.starts_with("bulk-")), "{names:?}");
        seen.extend(names.iter().cloned());
        pages.push(names);
        let last = browser
            .js("return document.getElementById('keys-next').disabled")
            .await;
        if last == true {
            break;
        }
        assert!(pages.len() < 10, "more pages than 2,500 keys fill");
        browser.click("#keys-next").await;
        browser
            .until(
                "the next page",
                &format!(
                    "const r = document.querySelector('#key-table tr[data-key]'); \
                     return !!r && r.dataset.key !== {:?};",
                    pages.last().unwrap()[0]
                ),
            )
            .await;
    }
    assert_eq!(seen, expected, "every key once, in order");
    assert_eq!(pages.len(), 5);
    browser.click("#keys-prev").await;
    browser.text("#keys-page", "Page 4 ·").await;
    browser
        .until(
            "page 4 again",
            &format!(
                "const r = document.querySelector('#key-table tr[data-key]'); return !!r && r.dataset.key === {:?};",
                pages[3][0]
            ),
        )
        .await;
    assert_eq!(browser.listed().await, pages[3]);

    // Bulk delete a selection: three keys of page 4.
    let chosen = &pages[3][..3];
    for name in chosen {
        browser
            .click(&format!("tr[data-key='{name}'] input.key-select"))
            .await;
    }
    browser
        .text("#delete-selected", "Delete selected (3)")
        .await;
    browser.click("#delete-selected").await;
    browser.text("#confirm-message", &chosen[0]).await;
    browser.click("#confirm-ok").await;
    browser
        .until(
            "the deleted keys to leave the list",
            &format!(
                "return !document.querySelector(\"tr[data-key='{}']\")",
                chosen[0]
            ),
        )
        .await;
    let left = all_keys(&http, &edge, &ns, "bulk-").await;
    assert_eq!(left.len(), 2497);
    assert!(chosen.iter().all(|c| !left.contains(c)));

    // Rename the namespace and delete it, from the namespaces page.
    browser.click(".crumbs a").await;
    browser.el("tr[data-title='console-test']").await;
    browser.screenshots("namespaces").await;
    browser
        .click("tr[data-title='console-test'] .ns-rename")
        .await;
    browser.fill("#prompt-input", "console-renamed").await;
    browser.click("#prompt-ok").await;
    browser.el("tr[data-title='console-renamed']").await;
    let renamed = send_ok(http.get(format!("{}/{ns}", api(&edge)))).await;
    assert_eq!(renamed["result"]["title"], "console-renamed");
    browser
        .click("tr[data-title='console-renamed'] .ns-delete")
        .await;
    browser.text("#confirm-message", "console-renamed").await;
    browser.click("#confirm-ok").await;
    browser.text("#ns-list", "No namespaces").await;
    send_err(http.get(format!("{}/{ns}", api(&edge))), 404, 10013).await;

    // The account switcher.
    browser.fill("#account-input", "someone-else").await;
    browser.click("#account-form button[type=submit]").await;
    browser.text("#ns-list", "No namespaces").await;
    let url = browser.client.current_url().await.unwrap();
    assert_eq!(url.query(), Some("account=someone-else"));

    // The cluster: central and both edges, live, each edge with its lag chart.
    browser.click("nav.pages a[data-nav=cluster]").await;
    browser
        .until(
            "both edges live, with a line in their charts",
            "const rows = [...document.querySelectorAll('#cluster-table tr[data-role=edge]')]; \
             return rows.length === 2 && rows.every(r => r.textContent.includes('live') && r.querySelector('svg.spark path'));",
        )
        .await;
    browser
        .el("#cluster-table tr[data-role=central] .status.live")
        .await;
    for url in &dev.edges {
        browser.text("#cluster-table", url).await;
    }
    assert_eq!(
        browser
            .js("return document.getElementById('central-banner').hidden")
            .await,
        true
    );
    browser.screenshots("cluster").await;

    // A visibility experiment from the page, behind the testbed admin token.
    browser.click("nav.pages a[data-nav=testbed]").await;
    browser.el("#testbed-token-needed").await;
    browser.fill("#admin-token", ADMIN).await;
    browser.click("#admin-token-form button[type=submit]").await;
    browser.fill("#exp-keys", "20").await;
    browser.fill("#exp-offset", "500").await;
    browser.click("#exp-run").await;
    browser
        .until(
            "the experiment to finish and show its plot",
            "const run = document.querySelector('article.run[data-state=done]'); \
             const img = run && run.querySelector('img.plot-image'); \
             return !!img && img.complete && img.naturalWidth > 0;",
        )
        .await;
    browser.text("article.run .run-summary", "all edges").await;
    browser.screenshots("testbed").await;

    // No cookie was needed; nothing the policy refused, no script error, all along.
    assert_eq!(browser.js("return document.cookie").await, "");
    browser.assert_no_page_errors().await;
    browser.close().await;
}

/// Starts a real `driftkv central` (with its HTTP port) and one `driftkv edge`, both requiring
/// API token `token`; returns them and central's HTTP URL.
async fn central_and_edge(dir: &Path, token: &str) -> (Server, Server, String) {
    let gossip = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .to_string();
    let shared = [
        ("DRIFTKV_API_TOKENS", token),
        ("DRIFTKV_GOSSIP__INTERVAL_MS", "100"),
    ];
    let mut env = vec![
        ("DRIFTKV_GRPC__LISTEN", "127.0.0.1:0"),
        ("DRIFTKV_LISTEN", "127.0.0.1:0"),
        ("DRIFTKV_GOSSIP__LISTEN", gossip.as_str()),
        ("DRIFTKV_REPLICATION__HEARTBEAT_MS", "100"),
    ];
    env.extend(shared);
    let args = |role: &str, sub: &str| {
        vec![
            role.to_owned(),
            "--data-dir".into(),
            dir.join(sub).display().to_string(),
        ]
    };
    let central = Server::launch(
        &args("central", "central"),
        dir,
        &env,
        "driftkv central listening on ",
    )
    .expect("central starts");
    let seeds = format!("[\"{gossip}\"]");
    let mut env = vec![
        ("DRIFTKV_NODE_ID", "2"),
        ("DRIFTKV_LISTEN", "127.0.0.1:0"),
        ("DRIFTKV_CENTRAL__ADDRESS", central.base.as_str()),
        ("DRIFTKV_CENTRAL__REQUEST_TIMEOUT_MS", "1000"),
        ("DRIFTKV_CENTRAL__CONNECT_TIMEOUT_MS", "500"),
        ("DRIFTKV_REPLICATION__STREAM_SILENCE_MS", "1000"),
        ("DRIFTKV_GOSSIP__LISTEN", "127.0.0.1:0"),
        ("DRIFTKV_GOSSIP__SEEDS", seeds.as_str()),
    ];
    env.extend(shared);
    let edge = Server::launch(
        &args("edge", "edge"),
        dir,
        &env,
        "driftkv edge listening on ",
    )
    .expect("edge starts");
    let http = client();
    let central_http = common::wait_for(DEADLINE, "central's HTTP address in gossip", || {
        let request = http
            .get(format!("{}/cluster", edge.base))
            .bearer_auth(token);
        async move {
            let view: Value = request.send().await.ok()?.json().await.ok()?;
            view["members"]
                .as_array()?
                .iter()
                .find(|m| m["role"] == "central" && m["status"] == "live")?["http"]
                .as_str()
                .map(str::to_owned)
        }
    })
    .await;
    (central, edge, central_http)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_central_raises_the_banner_and_writes_show_10050() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    const TOKEN: &str = "console-api-token-7d2f9b4e1a6c8e0f2b4d6a8c";
    let dir = tempfile::tempdir().unwrap();
    let (central, edge, central_http) = central_and_edge(dir.path(), TOKEN).await;
    let edge = edge.base.clone();

    // Central's own console: the cluster view, after the token it asks for.
    browser.goto(&format!("{central_http}/ui")).await;
    browser.el("#token-dialog[open]").await;
    browser.fill("#token-input", TOKEN).await;
    browser.click("#token-save").await;
    browser
        .until(
            "central's view of the cluster",
            "return document.querySelectorAll('#cluster-table tr[data-role=edge]').length === 1 \
             && !!document.querySelector('#cluster-table tr[data-role=central] .status.live');",
        )
        .await;
    assert_eq!(
        browser
            .js("return document.querySelector('nav.pages a[data-nav=namespaces]').hidden")
            .await,
        true,
        "central has no KV API to browse"
    );
    browser.screenshots("central-cluster").await;

    // The edge asks for the token too (its own origin), keeps it in session storage only.
    browser.goto(&format!("{edge}/ui")).await;
    browser.el("#token-dialog[open]").await;
    browser.fill("#token-input", "wrong-token").await;
    browser.click("#token-save").await;
    browser.text("#token-reason", "code 10000, HTTP 403").await;
    browser.fill("#token-input", TOKEN).await;
    browser.click("#token-save").await;
    browser.text("#ns-list", "No namespaces").await;
    assert_eq!(
        browser
            .js("return sessionStorage.getItem('driftkv.token')")
            .await,
        TOKEN
    );
    assert_eq!(browser.js("return document.cookie").await, "");
    browser.fill("#ns-title", "outage").await;
    browser.click("#ns-create button[type=submit]").await;
    browser.click("tr[data-title='outage'] a.ns-open").await;
    browser.text("#ns-heading", "outage").await;
    let keys_page = browser.client.current_url().await.unwrap().to_string();
    assert_eq!(
        browser
            .js("return document.getElementById('central-banner').hidden")
            .await,
        true
    );

    // With central stopped the banner comes up from what the edge knows, and a write shows
    // the API's 503 with code 10050. (Killed: a central asked to stop with SIGTERM waits for
    // its replication streams to end, which an edge that stays up never does.)
    let mut central = central;
    central.kill9();
    browser.click("nav.pages a[data-nav=cluster]").await;
    browser
        .until(
            "the central banner",
            "return !document.getElementById('central-banner').hidden",
        )
        .await;
    browser
        .text("#central-banner", "Central is out of reach")
        .await;
    browser.screenshots("central-down").await;
    browser.goto(&keys_page).await;
    browser.text("#ns-heading", "outage").await;
    browser.click("#new-key").await;
    browser.fill("#edit-name", "during-outage").await;
    browser.fill("#edit-value", "v").await;
    browser.click("#edit-save").await;
    browser.text("#edit-status", "code 10050, HTTP 503").await;
    browser.text("#central-banner", "10050").await;
    browser.assert_no_page_errors().await;
    browser.close().await;
}

/// The experiment endpoint on its own: guarded, bounded, one run at a time, saved and
/// served; and absent where the testbed is off.
#[tokio::test(flavor = "multi_thread")]
async fn the_experiment_endpoint_is_guarded_bounded_and_saves_its_runs() {
    let dev = DevCluster::start(
        2,
        &[
            ("DRIFTKV_TESTBED__ENABLED", "true"),
            ("DRIFTKV_TESTBED__ADMIN_TOKEN", ADMIN),
        ],
    )
    .await;
    let http = client();
    let base = format!("{}/admin/testbed/experiments", dev.edges[0]);
    assert_eq!(http.get(&base).send().await.unwrap().status(), 401);
    let wrong = http.get(&base).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 403);

    let post = |body: Value| http.post(&base).bearer_auth(ADMIN).json(&body);
    send_err(post(json!({ "keys": 201 })), 400, 10038).await;
    send_err(post(json!({ "max_offset_ms": 60_000 })), 400, 10038).await;
    send_err(post(json!({ "keys": 5, "extra": 1 })), 400, 10001).await;

    // One run at a time: a second request while the first runs is a 409.
    let started = post(json!({ "keys": 30, "max_offset_ms": 3000 }))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let run: Value = started.json().await.unwrap();
    assert_eq!(run["state"], "running");
    assert_eq!(run["readers"], json!([dev.edges[1]]));
    let id = run["id"].as_str().unwrap().to_owned();
    send_err(post(json!({ "keys": 5 })), 409, 10051).await;

    let one = format!("{base}/{id}");
    let done = common::wait_for(DEADLINE, "the experiment to finish", || {
        let request = http.get(&one).bearer_auth(ADMIN);
        async move {
            let run: Value = request.send().await.ok()?.json().await.ok()?;
            (run["state"] != "running").then_some(run)
        }
    })
    .await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["keys_done"], 30);
    let rows = done["rows"].as_array().unwrap();
    assert_eq!(rows.last().unwrap()["label"], "all edges");
    assert_eq!(rows.last().unwrap()["samples"], 30, "one read per key");
    assert_eq!(done["violations"], 0);

    let listed: Value = http
        .get(&base)
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    let svg = http
        .get(format!("{one}/visibility.svg"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    assert!(svg.text().await.unwrap().starts_with("<svg"));
    let csv = http
        .get(format!("{one}/visibility.csv"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv.lines().next(), Some("key,edge,offset_ms,visible"));
    assert_eq!(csv.lines().count(), 31);
    send_err(
        http.get(format!("{one}/secrets.txt")).bearer_auth(ADMIN),
        404,
        7000,
    )
    .await;
    send_err(
        http.get(format!("{base}/999/visibility.svg"))
            .bearer_auth(ADMIN),
        404,
        7000,
    )
    .await;
    // The run's namespace is gone; its files stay in the edge's data directory.
    let namespaces = send_ok(http.get(format!(
        "{}/client/v4/accounts/testbed/storage/kv/namespaces",
        dev.edges[0]
    )))
    .await;
    assert_eq!(namespaces["result"], json!([]));
    let saved = dev
        .server
        .data_dir
        .join("edge-0/experiments")
        .join(&id)
        .join("run.json");
    assert!(saved.is_file(), "{} saved", saved.display());

    // Where the testbed is off, the endpoint does not exist.
    let plain = Server::start();
    let off = http
        .get(format!("{}/admin/testbed/experiments", plain.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), 404);
}
