//! Finding the Worker version id that wrangler prints after a deploy or a version upload.

/// Labels wrangler puts before the version id (`wrangler deploy`, `wrangler versions upload`).
const VERSION_LABELS: [&str; 2] = ["Current Version ID:", "Worker Version ID:"];

/// Length of a hyphenated UUID, in characters.
const UUID_LEN: usize = 36;

/// The version id announced by a log line (`Current Version ID: <uuid>` or `Worker Version ID: <uuid>`,
/// ANSI colour codes allowed anywhere), lower-case and hyphenated.
pub fn version_id_in_line(line: &str) -> Option<String> {
    // Cheap filter first: nearly every line fails it.
    if !line.contains("Version") {
        return None;
    }
    let plain = strip_ansi(line);
    VERSION_LABELS.iter().find_map(|label| {
        let (_, after) = plain.split_once(label)?;
        let candidate = after.trim_start().get(..UUID_LEN)?;
        let uuid = uuid::Uuid::try_parse(candidate).ok()?;
        // `try_parse` also takes the simple and braced forms; only the hyphenated one is a match.
        let text = uuid.hyphenated().to_string();
        text.eq_ignore_ascii_case(candidate).then_some(text)
    })
}

/// `line` without ANSI escape sequences (CSI such as colours, and OSC such as hyperlinks).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('[') => {
                chars.next();
                // Parameters and intermediates, then one final byte in `@`..=`~`.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                chars.next();
                // Ends with BEL or ST (`ESC \`).
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            _ => {
                // A two-character escape.
                chars.next();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

    #[test]
    fn finds_both_labels() {
        assert_eq!(
            version_id_in_line(&format!("Current Version ID: {ID}")).as_deref(),
            Some(ID)
        );
        assert_eq!(
            version_id_in_line(&format!("  Worker Version ID:   {ID}  ")).as_deref(),
            Some(ID)
        );
    }

    #[test]
    fn ignores_ansi_codes_and_upper_case() {
        let line = format!(
            "\u{1b}[32m\u{1b}[1mCurrent\u{1b}[0m Version ID:\u{1b}[0m \u{1b}[36m{}\u{1b}[39m",
            ID.to_uppercase()
        );
        assert_eq!(version_id_in_line(&line).as_deref(), Some(ID));
        let link = format!("Worker Version ID: \u{1b}]8;;https://x\u{1b}\\{ID}\u{1b}]8;;\u{7}");
        assert_eq!(version_id_in_line(&link).as_deref(), Some(ID));
    }

    #[test]
    fn rejects_other_lines() {
        for line in [
            "Uploaded my-worker (1.2 sec)".to_owned(),
            "Current Version ID: not-a-uuid".to_owned(),
            format!("Current Version ID: {}", ID.replace('-', "")),
            format!("Version ID: {ID}"),
            "Current Version ID: 0a1b2c3d-4e5f".to_owned(),
            "Current Version ID: ".to_owned(),
        ] {
            assert_eq!(version_id_in_line(&line), None, "{line}");
        }
    }
}
