//! Reading `/proc`: which processes exist, their parent, process group and PID namespace.

use std::ffi::OsString;

/// What `/proc/<pid>/stat` says about one process.
#[derive(Debug, Clone, Copy)]
pub(super) struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    /// `Z` for a zombie: dead, waiting to be reaped.
    pub state: char,
}

/// Every process visible in `/proc`; processes that vanish while we read are skipped.
pub(super) fn processes() -> std::io::Result<Vec<ProcInfo>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        if let Some(info) = read_stat(pid) {
            found.push(info);
        }
    }
    Ok(found)
}

/// The scheduler state of a process (`T` when stopped), `None` when it is gone.
pub(super) fn state(pid: i32) -> Option<char> {
    read_stat(pid).map(|info| info.state)
}

fn read_stat(pid: i32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &stat)
}

/// When the process started, in clock ticks after boot (field 22 of `/proc/<pid>/stat`): with the
/// pid, it names one process for good (a pid alone is reused). `None` when it is gone.
pub(super) fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After `comm`: state is field 3, so start time is the 20th field from there.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Parses `pid (comm) state ppid pgrp …`; `comm` may contain spaces and parentheses.
fn parse_stat(pid: i32, stat: &str) -> Option<ProcInfo> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcInfo {
        pid,
        ppid,
        pgrp,
        state,
    })
}

/// The PID namespace of a process, as the `pid:[inode]` text of `/proc/<pid>/ns/pid`.
pub(super) fn pid_namespace(pid: &str) -> Option<OsString> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|link| link.into_os_string())
}

/// The pids of the processes in the PID namespace `namespace` (as from [`pid_namespace`]).
pub(super) fn pids_in_namespace(namespace: &OsString) -> std::io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.parse::<i32>().ok()) else {
            continue;
        };
        if pid_namespace(&pid.to_string()).as_ref() == Some(namespace) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Whether a process that is not a zombie is left in the PID namespace `namespace`.
pub(super) fn live_in_namespace(namespace: &OsString) -> std::io::Result<bool> {
    Ok(pids_in_namespace(namespace)?
        .into_iter()
        .any(|pid| !matches!(state(pid), None | Some('Z' | 'X'))))
}

/// The init process of the PID namespace bwrap (`monitor`) created: its child in another PID namespace.
pub(super) fn sandbox_init(monitor: i32) -> std::io::Result<Option<(i32, OsString)>> {
    let ours = pid_namespace("self");
    for process in processes()? {
        if process.ppid != monitor {
            continue;
        }
        if let Some(namespace) = pid_namespace(&process.pid.to_string())
            && Some(&namespace) != ours.as_ref()
        {
            return Ok(Some((process.pid, namespace)));
        }
    }
    Ok(None)
}

/// Whether a process that is not a zombie is left in process group `pgid`.
pub(super) fn group_alive(pgid: i32) -> std::io::Result<bool> {
    Ok(processes()?
        .iter()
        .any(|process| process.pgrp == pgid && process.state != 'Z'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_an_awkward_command_name() {
        let info = parse_stat(42, "42 (a (b) c) S 7 42 42 0 -1 4194560 0").expect("parses");
        assert_eq!((info.state, info.ppid, info.pgrp), ('S', 7, 42));
    }
}
