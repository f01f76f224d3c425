//! What an evaluation or compile error says: one readable line with the file and
//! line, never an input value (arguments may be secrets).

use super::*;

/// An evaluation error as one readable line. regorus formats an error as
/// `\n--> file:line:col\n |\nN | source line\n | ^\nerror: message` (possibly
/// nested); this keeps the location, the last message and the policy source line.
pub(crate) fn error_text(msg: &str) -> String {
    let lines: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let location = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("--> "))
        .map(str::trim);
    let message = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .or_else(|| {
            lines
                .iter()
                .rev()
                .find(|l| !l.starts_with('|') && !l.starts_with("-->"))
                .copied()
        })
        .unwrap_or("evaluation failed");
    let source = lines.iter().rev().find_map(|l| {
        let (num, rest) = l.split_once('|')?;
        (!num.trim().is_empty() && num.trim().chars().all(|c| c.is_ascii_digit()))
            .then(|| rest.trim())
    });
    let mut out = match location {
        Some(loc) => format!("{loc}: {message}"),
        None => message.to_string(),
    };
    if let Some(src) = source.filter(|s| !s.is_empty()) {
        out.push_str(&format!(" (in `{src}`)"));
    }
    first_lines(&out)
}

/// Error messages from regorus can be long (source excerpts); keep them log-sized.
pub(super) fn first_lines(msg: &str) -> String {
    let mut out: String = msg.lines().take(12).collect::<Vec<_>>().join("\n");
    if out.len() > 1200 {
        let mut cut = 1200;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Evaluation errors go to logs and to the agent; they must not carry input values
/// (arguments may be secrets). Replace every input string of 3+ characters.
pub(super) fn scrub(msg: &str, input: &serde_json::Value) -> String {
    let mut strings = Vec::new();
    collect_strings(input, &mut strings, 0);
    strings.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = first_lines(msg);
    for s in strings {
        if s.len() >= 3 && out.contains(s) {
            out = out.replace(s, "<redacted>");
        }
    }
    out
}

pub(super) fn collect_strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>, depth: usize) {
    if depth > 64 || out.len() > 4096 {
        return;
    }
    match v {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out, depth + 1)),
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                out.push(k);
                collect_strings(x, out, depth + 1);
            }
        }
        _ => {}
    }
}

/// Best-effort: which file an error message points at (regorus prints `file:line:col`).
pub(super) fn locate(msg: &str, set: &FileSet) -> String {
    set.files
        .iter()
        .find(|f| msg.contains(&f.name))
        .map(|f| f.name.clone())
        .unwrap_or_else(|| set.dir.display().to_string())
}
