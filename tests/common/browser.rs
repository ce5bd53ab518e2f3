//! A real headless Chromium for the dashboard tests, driven through WebDriver: Debian's `chromium`
//! and `chromium-driver` (`scripts/test` installs them when missing), `fantoccini` as the client
//! over plain HTTP to a local chromedriver.
//!
//! Each [`Browser`] starts its own chromedriver on a free port (so that tests running in parallel
//! never share a session or a port) and Chromium headless (`--no-sandbox`: the tests run as root),
//! 1280×900 unless a test asks for a phone's 375-pixel-wide viewport. Dropping it (a test that
//! panics included) kills chromedriver and every browser process it started.
//!
//! Waiting is on conditions with a deadline ([`Browser::eventually`]), never a fixed sleep.
//! Screenshots go to `target/screenshots/<name>.png` ([`Browser::screenshot`]); look at them.

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// Longest a page, an element or a condition is waited for.
pub const BROWSER_DEADLINE: Duration = Duration::from_secs(30);
/// How often a condition is checked while waiting.
const POLL: Duration = Duration::from_millis(50);

/// The Chromium binary and its WebDriver.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "chromedriver";

/// A headless Chromium session on a Kiln server.
pub struct Browser {
    pub client: Client,
    /// `http://127.0.0.1:port` of the Kiln server.
    pub base: String,
    driver: Child,
}

/// The viewport a browser opens with.
#[derive(Debug, Clone, Copy)]
pub enum Viewport {
    /// A desktop window of 1280×900.
    Desktop,
    /// A phone's 375×812 viewport (device emulation).
    Phone,
}

/// A TCP port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The processes whose parent is `pid`, and theirs, recursively.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`: the command may hold blanks and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((child, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium's processes first: they outlive a killed chromedriver otherwise.
        for pid in descendants(self.driver.id()) {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// A desktop browser (1280×900) on the server at `base`.
    pub async fn open(base: &str) -> Browser {
        Browser::open_with(base, Viewport::Desktop).await
    }

    /// A browser with `viewport` on the server at `base`.
    pub async fn open_with(base: &str, viewport: Viewport) -> Browser {
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "start chromedriver (Debian package chromium-driver; scripts/test installs it)",
            );
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-extensions",
        ];
        let mut options = json!({ "binary": CHROMIUM });
        match viewport {
            Viewport::Desktop => args.push("--window-size=1280,900"),
            Viewport::Phone => {
                args.push("--window-size=375,812");
                options["mobileEmulation"] =
                    json!({"deviceMetrics": {"width": 375, "height": 812, "pixelRatio": 2.0}});
            }
        }
        options["args"] = json!(args);
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), options);
        let url = format!("http://127.0.0.1:{port}");
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(caps);
        // The driver takes a moment to listen: retry the session until the deadline.
        let deadline = tokio::time::Instant::now() + BROWSER_DEADLINE;
        let client = loop {
            match builder.connect(&url).await {
                Ok(client) => break client,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => panic!("no WebDriver session from chromedriver on port {port}: {e}"),
            }
        };
        Browser {
            client,
            base: base.to_owned(),
            driver,
        }
    }

    /// The URL of `path` on the server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Opens `path` of the server and waits for the page to load.
    pub async fn goto(&self, path: &str) {
        self.client
            .goto(&self.url(path))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
    }

    /// The path (and query) of the page shown.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("current url");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Waits until `check` returns `Some`, polling; panics naming `what` after the deadline.
    pub async fn eventually<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + BROWSER_DEADLINE;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                let path = self.path().await;
                let shot = self.screenshot(&format!("failed-{}", slug(what))).await;
                panic!(
                    "{what}: not so within {BROWSER_DEADLINE:?} on {path} (screenshot {shot:?})"
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The element `css` selects, once the page has it.
    pub async fn find(&self, css: &str) -> Element {
        self.eventually(&format!("an element {css}"), || async {
            self.client.find(Locator::Css(css)).await.ok()
        })
        .await
    }

    /// Whether the page has an element `css` now.
    pub async fn has(&self, css: &str) -> bool {
        self.client
            .find_all(Locator::Css(css))
            .await
            .is_ok_and(|all| !all.is_empty())
    }

    /// The text of the element `css` selects (once the page has it).
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("element text")
    }

    /// Waits until the text of the element `css` contains `wanted`.
    pub async fn wait_text(&self, css: &str, wanted: &str) {
        self.eventually(&format!("{css} showing {wanted:?}"), || async {
            let element = self.client.find(Locator::Css(css)).await.ok()?;
            let text = element.text().await.ok()?;
            text.contains(wanted).then_some(())
        })
        .await
    }

    /// Scrolls the element `css` selects to the top of the viewport (for a screenshot of it).
    pub async fn scroll_to(&self, css: &str) {
        let element = self.find(css).await;
        let arg = serde_json::to_value(&element).expect("element as an argument");
        self.client
            .execute("arguments[0].scrollIntoView(true);", vec![arg])
            .await
            .expect("scroll");
    }

    /// The page's HTML as the server sent it and scripts changed it.
    pub async fn source(&self) -> String {
        self.client.source().await.expect("page source")
    }

    /// Signs in with an API token on the sign-in page and waits until it has left it.
    pub async fn sign_in(&self, token: &str) {
        self.goto("/sign-in").await;
        self.find("#token")
            .await
            .send_keys(token)
            .await
            .expect("type the token");
        self.find(".sign-in button[type=submit]")
            .await
            .click()
            .await
            .expect("submit");
        self.eventually("signed in", || async {
            let path = self.path().await;
            (!path.starts_with("/sign-in")).then_some(())
        })
        .await;
    }

    /// The value of the browser's cookie `name` for the server, if set.
    pub async fn cookie(&self, name: &str) -> Option<String> {
        self.client
            .get_named_cookie(name)
            .await
            .ok()
            .map(|c| c.value().to_owned())
    }

    /// Whether a JavaScript dialog (`alert`) is open.
    pub async fn alert_open(&self) -> bool {
        self.client.get_alert_text().await.is_ok()
    }

    /// Saves a screenshot of the viewport as `target/screenshots/<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).expect("create target/screenshots");
        let path = dir.join(format!("{name}.png"));
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Ends the WebDriver session (dropping the browser kills what is left).
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// `what` as a file name.
fn slug(what: &str) -> String {
    what.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(60)
        .collect()
}
