//! Running the `git` CLI: a cleared environment (but for the proxy and CA settings), a time limit
//! that kills the whole process group, bounded output, and errors that carry git's stderr with
//! credentials removed.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::GitError;

/// Variables of Kiln's environment that git sees besides the network's ones
/// ([`crate::domain::NETWORK_ENV_VARIABLES`]).
const GIT_HOST_ENV: &[&str] = &["GIT_SSL_CAINFO"];
/// How much of git's stderr an error keeps, in bytes.
const MAX_STDERR_BYTES: usize = 8 * 1024;
/// Default bound on what one command may print on stdout, in bytes.
pub(crate) const DEFAULT_MAX_STDOUT_BYTES: usize = 64 * 1024 * 1024;
/// `PATH` for git when the server has none.
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Configuration given to every invocation with `-c`: maintenance runs inside our time limit and lock
/// instead of detaching, and no hook of any repository runs.
const CONFIG: &[&str] = &[
    "gc.autoDetach=false",
    "maintenance.autoDetach=false",
    "core.hooksPath=/dev/null",
    "advice.detachedHead=false",
];

/// Runs git with a controlled environment.
#[derive(Debug, Clone)]
pub(crate) struct Git {
    /// `HOME` of every git process (an empty directory of ours: no user configuration applies).
    home: PathBuf,
    path: OsString,
}

/// The output of a git process that ran to its end.
#[derive(Debug)]
pub(crate) struct Output {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// One git invocation.
#[derive(Debug)]
pub(crate) struct Cmd {
    args: Vec<OsString>,
    /// Configuration passed through the environment (`GIT_CONFIG_KEY_n`), never on the command line.
    secret_config: Vec<(String, String)>,
    /// Extra environment variables (e.g. `GIT_ALLOW_PROTOCOL`).
    env: Vec<(String, String)>,
    dir: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    max_stdout: usize,
}

impl Cmd {
    /// `git <args…>` with this time limit.
    pub fn new(timeout: Duration) -> Cmd {
        Cmd {
            args: Vec::new(),
            secret_config: Vec::new(),
            env: Vec::new(),
            dir: None,
            stdin: None,
            timeout,
            max_stdout: DEFAULT_MAX_STDOUT_BYTES,
        }
    }

    /// Runs in the repository (or work tree) at `dir` (`git -C dir`).
    pub fn dir(mut self, dir: &Path) -> Cmd {
        self.dir = Some(dir.to_path_buf());
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// `git -c key=value`, but through the environment, so that the value (a credential) is not in
    /// any process's command line.
    pub fn secret_config(mut self, key: &str, value: String) -> Cmd {
        self.secret_config.push((key.to_owned(), value));
        self
    }

    /// Sets an environment variable of the git process (the environment is otherwise cleared).
    pub fn env(mut self, key: &str, value: &str) -> Cmd {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Bytes written to git's standard input (closed afterwards).
    pub fn stdin(mut self, input: Vec<u8>) -> Cmd {
        self.stdin = Some(input);
        self
    }

    /// The command line for messages, with credentials removed.
    fn display(&self) -> String {
        let joined = self
            .args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        redact_url(&joined)
    }
}

impl Git {
    /// A runner whose processes get `home` as `HOME`.
    pub fn new(home: PathBuf) -> Git {
        let path = std::env::var_os("PATH")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| FALLBACK_PATH.into());
        Git { home, path }
    }

    /// Runs the command and fails (with [`GitError::Command`]) unless it exits with status 0.
    pub async fn ok(&self, cmd: Cmd) -> anyhow::Result<Vec<u8>> {
        let shown = cmd.display();
        let out = self.output(cmd).await?;
        if out.success {
            Ok(out.stdout)
        } else {
            Err(GitError::Command {
                args: shown,
                code: out.code,
                stderr: out.stderr,
            }
            .into())
        }
    }

    /// Runs the command to its end, whatever its exit status. Fails when git cannot be started, runs
    /// past its time limit (its whole process group is killed) or prints too much.
    pub async fn output(&self, cmd: Cmd) -> anyhow::Result<Output> {
        let shown = cmd.display();
        tokio::fs::create_dir_all(&self.home)
            .await
            .map_err(|e| anyhow::anyhow!("creating git's home {}: {e}", self.home.display()))?;
        let mut command = Command::new("git");
        command
            .env_clear()
            .env("PATH", &self.path)
            .env("HOME", &self.home)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("LC_ALL", "C")
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, so that a timeout also ends the helpers git starts.
            .process_group(0);
        // Kiln's own proxy and CA settings reach git's fetches (like the toolchain downloads); the
        // rest of Kiln's environment does not.
        for key in crate::domain::NETWORK_ENV_VARIABLES
            .iter()
            .chain(GIT_HOST_ENV)
        {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        for (key, value) in &cmd.env {
            command.env(key, value);
        }
        for c in CONFIG {
            command.arg("-c").arg(c);
        }
        if !cmd.secret_config.is_empty() {
            command.env("GIT_CONFIG_COUNT", cmd.secret_config.len().to_string());
            for (i, (key, value)) in cmd.secret_config.iter().enumerate() {
                command
                    .env(format!("GIT_CONFIG_KEY_{i}"), key)
                    .env(format!("GIT_CONFIG_VALUE_{i}"), value);
            }
        }
        if let Some(dir) = &cmd.dir {
            command.arg("-C").arg(dir);
        }
        command.args(&cmd.args);
        let mut child = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting `git {shown}`: {e}"))?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let input = cmd.stdin.unwrap_or_default();
        let max_stdout = cmd.max_stdout;
        let run = async {
            let write = async {
                if let Some(mut pipe) = stdin {
                    // git may exit before reading everything (e.g. on an error): not our failure.
                    let _ = pipe.write_all(&input).await;
                    let _ = pipe.shutdown().await;
                }
            };
            let (_, out, err) = tokio::join!(
                write,
                read_capped(stdout, max_stdout),
                read_capped(stderr, MAX_STDERR_BYTES)
            );
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, out?, err?))
        };
        tokio::pin!(run);
        let (status, (stdout, stdout_over), (stderr, _)) = tokio::select! {
            done = &mut run => done.map_err(|e| anyhow::anyhow!("running `git {shown}`: {e}"))?,
            () = tokio::time::sleep(cmd.timeout) => {
                kill_group(pid);
                return Err(GitError::Timeout { args: shown, secs: cmd.timeout.as_secs() }.into());
            }
        };
        if stdout_over {
            return Err(GitError::TooMuchOutput {
                args: shown,
                limit: max_stdout,
            }
            .into());
        }
        Ok(Output {
            success: status.success(),
            code: status.code(),
            stdout,
            stderr: redact_url(String::from_utf8_lossy(&stderr).trim()),
        })
    }
}

/// Reads at most `cap` bytes, then drains the rest so that the writer never blocks; says whether
/// there was more.
async fn read_capped<R: AsyncRead + Unpin>(
    reader: Option<R>,
    cap: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let Some(mut reader) = reader else {
        return Ok((Vec::new(), false));
    };
    let mut buf = Vec::new();
    (&mut reader)
        .take(cap as u64 + 1)
        .read_to_end(&mut buf)
        .await?;
    let over = buf.len() > cap;
    if over {
        buf.truncate(cap);
        tokio::io::copy(&mut reader, &mut tokio::io::sink()).await?;
    }
    Ok((buf, over))
}

fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions. The child is not reaped yet (its handle is
    // alive), so its id still names its own process group and cannot have been reused.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

/// Removes the user-information part (`user:password@`) of every URL in `text`, so that credentials
/// embedded in a clone URL never reach a message or a log.
///
/// `https://x-access-token:secret@github.com/o/r.git` becomes `https://github.com/o/r.git`.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first '/', whitespace, quote or end of text; its userinfo ends at
        // its last '@'.
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || matches!(c, '\'' | '"' | '<' | '>'))
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(userinfo_end) => out.push_str(&authority[userinfo_end + 1..]),
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn removes_credentials_from_urls() {
        assert_eq!(
            redact_url("https://x-access-token:ghs_SECRET@github.com/o/r.git"),
            "https://github.com/o/r.git"
        );
        assert_eq!(
            redact_url("fatal: unable to access 'https://user:p@ss@host:8443/r/': 403"),
            "fatal: unable to access 'https://host:8443/r/': 403"
        );
        assert_eq!(
            redact_url("a https://tok@h/x and ssh://git:pw@h2 end"),
            "a https://h/x and ssh://h2 end"
        );
        assert_eq!(
            redact_url("https://github.com/o/r.git"),
            "https://github.com/o/r.git"
        );
        assert_eq!(redact_url("no url here"), "no url here");
        assert_eq!(redact_url("file:///tmp/a@b/r"), "file:///tmp/a@b/r");
        assert_eq!(redact_url("https://u:p@"), "https://");
    }
}
