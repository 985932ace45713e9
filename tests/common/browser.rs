//! A real headless browser for a test: Debian's `chromium`, driven through `chromedriver`'s
//! WebDriver HTTP API (both installed by `.ci/run`). The driver starts on a free 127.0.0.1
//! port and is stopped by process id when dropped, with the browser session it opened.
//!
//! Outside CI, a machine without them skips the tests that need them and says why; with
//! `RIFFLE_REQUIRE_SERVICES=1` a missing one is a failure.

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The W3C WebDriver key under which an element reference comes.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session (closed, and its driver stopped, on drop).
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; `None` (with the reason
    /// printed) if either is missing and services are not required.
    ///
    /// # Panics
    /// If they are required and missing, or do not start within 30 s.
    pub fn start() -> Option<Browser> {
        let found = |names: &[&str]| names.iter().find_map(|n| super::prometheus::which(n));
        let (Some(chromium), Some(driver)) = (
            found(&["chromium", "chromium-browser"]),
            found(&["chromedriver"]),
        ) else {
            let required = std::env::var("RIFFLE_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "chromium and chromedriver are required (RIFFLE_REQUIRE_SERVICES=1): \
                 apt-get install chromium chromium-driver"
            );
            println!("SKIPPED: no chromium/chromedriver here (install Debian's chromium and chromium-driver)");
            return None;
        };
        let port = super::free_port();
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {driver}: {e}"));
        let base = format!("http://127.0.0.1:{port}");
        let mut b = Browser {
            driver: child,
            base,
            session: String::new(),
        };
        let until = Instant::now() + Duration::from_secs(30);
        while ureq::get(&format!("{}/status", b.base)).call().is_err() {
            assert!(Instant::now() < until, "chromedriver not ready in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                         "--disable-background-networking", "--window-size=1280,1000"],
            },
        }}});
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Some(b)
    }

    /// A WebDriver command; its `value`. Panics on an error answer.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let req = ureq::request(method, &url).timeout(Duration::from_secs(60));
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let v: Value = match res {
            Ok(r) => r.into_json().expect("WebDriver JSON"),
            Err(ureq::Error::Status(code, r)) => {
                panic!(
                    "{method} {path}: {code} {}",
                    r.into_string().unwrap_or_default()
                )
            }
            Err(e) => panic!("{method} {path}: {e}"),
        };
        v["value"].clone()
    }

    fn session(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    /// Loads `url`.
    pub fn goto(&self, url: &str) {
        self.call("POST", &self.session("/url"), Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `return` gives the answer) in the page.
    pub fn eval(&self, script: &str) -> Value {
        let body = json!({ "script": script, "args": [] });
        self.call("POST", &self.session("/execute/sync"), Some(body))
    }

    /// The element `css` selects (the first).
    fn element(&self, css: &str) -> String {
        let body = json!({ "using": "css selector", "value": css });
        let v = self.call("POST", &self.session("/element"), Some(body));
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    /// Clicks the element `css` selects.
    pub fn click(&self, css: &str) {
        let e = self.element(css);
        self.call(
            "POST",
            &self.session(&format!("/element/{e}/click")),
            Some(json!({})),
        );
    }

    /// Clears the input `css` selects and types `text` into it.
    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.call(
            "POST",
            &self.session(&format!("/element/{e}/clear")),
            Some(json!({})),
        );
        self.call(
            "POST",
            &self.session(&format!("/element/{e}/value")),
            Some(json!({ "text": text })),
        );
    }

    /// A PNG screenshot of the page.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let v = self.call("GET", &self.session("/screenshot"), None);
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 PNG"))
            .expect("a PNG")
    }

    /// Asks `f` every 100 ms until it answers or `limit` passes (the page redraws on its
    /// own timer; there is no event to wait for from outside).
    pub fn wait_for<T>(
        &self,
        limit: Duration,
        mut f: impl FnMut(&Browser) -> Option<T>,
    ) -> Option<T> {
        let until = Instant::now() + limit;
        loop {
            if let Some(v) = f(self) {
                return Some(v);
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
