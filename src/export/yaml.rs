//! A YAML writer for the Ansible export, in the layout that ansible-lint's production
//! profile (and its yamllint rules) accepts: a `---` document start, two-space
//! indentation with sequences indented under their key, `true`/`false` only, strings
//! quoted unless plainly safe, multi-line strings as literal blocks, and no line past
//! [`MAX_LINE`] where a string can be folded.

use serde_norway::Value as Y;

/// Longest line the writer aims for (yamllint's limit in ansible-lint is 160).
pub const MAX_LINE: usize = 150;

/// `value` as a YAML document.
pub fn document(value: &Y) -> String {
    let mut out = String::from("---\n");
    block(&mut out, value, 0);
    out
}

/// Writes a mapping or sequence at `indent`; any other value on a line of its own.
fn block(out: &mut String, value: &Y, indent: usize) {
    match value {
        Y::Mapping(m) if !m.is_empty() => {
            for (k, v) in m {
                pad(out, indent);
                let key = scalar_key(k);
                out.push_str(&key);
                out.push(':');
                after_key(out, v, indent, indent + key.len() + 2);
            }
        }
        Y::Sequence(s) if !s.is_empty() => {
            for item in s {
                pad(out, indent);
                out.push_str("- ");
                match item {
                    // The first key shares the dash's line; the rest line up under it.
                    Y::Mapping(m) if !m.is_empty() => {
                        let mut first = true;
                        for (k, v) in m {
                            if !first {
                                pad(out, indent + 2);
                            }
                            first = false;
                            let key = scalar_key(k);
                            out.push_str(&key);
                            out.push(':');
                            after_key(out, v, indent + 2, indent + 2 + key.len() + 2);
                        }
                    }
                    Y::Sequence(inner) if !inner.is_empty() => {
                        out.push('\n');
                        block(out, item, indent + 2);
                    }
                    other => {
                        out.push_str(&inline(other, indent + 2, indent + 2));
                        out.push('\n');
                    }
                }
            }
        }
        other => {
            pad(out, indent);
            out.push_str(&inline(other, indent, indent));
            out.push('\n');
        }
    }
}

/// What follows `key:` at `indent`; `column` is where an inline value would start.
fn after_key(out: &mut String, v: &Y, indent: usize, column: usize) {
    match v {
        Y::Mapping(m) if !m.is_empty() => {
            out.push('\n');
            block(out, v, indent + 2);
        }
        Y::Sequence(s) if !s.is_empty() => {
            out.push('\n');
            block(out, v, indent + 2);
        }
        other => {
            out.push(' ');
            out.push_str(&inline(other, indent + 2, column));
            out.push('\n');
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// A scalar (or empty collection) written after a key or dash. `indent` is where
/// continuation lines go, `column` where the value starts.
fn inline(v: &Y, indent: usize, column: usize) -> String {
    match v {
        Y::Null => "null".into(),
        Y::Bool(b) => b.to_string(),
        Y::Number(n) => n.to_string(),
        Y::String(s) => string(s, indent, column),
        Y::Mapping(_) => "{}".into(),
        Y::Sequence(_) => "[]".into(),
        Y::Tagged(t) => {
            let tag = t.tag.to_string();
            let tag = tag.trim_start_matches('!');
            format!(
                "!{tag} {}",
                inline(&t.value, indent, column + tag.len() + 2)
            )
        }
    }
}

fn scalar_key(k: &Y) -> String {
    match k {
        Y::String(s) if is_plain(s) => s.clone(),
        Y::String(s) => quoted(s),
        other => inline(other, 0, 0),
    }
}

/// A string: plain when YAML reads it back as the same string, a literal block when it
/// has several lines, otherwise double-quoted (folded at spaces when long).
fn string(s: &str, indent: usize, column: usize) -> String {
    if is_plain(s) && column + s.len() <= MAX_LINE {
        return s.to_string();
    }
    if let Some(b) = literal_block(s, indent) {
        return b;
    }
    folded_quoted(s, indent, column)
}

/// Words YAML 1.1 (Ansible's reader) would turn into something other than a string.
fn is_special_word(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null" | "~"
    ) || s.parse::<f64>().is_ok()
        || s.starts_with(|c: char| c.is_ascii_digit())
}

fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && !is_special_word(s)
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '/')
        && !s.ends_with(' ')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '-' | '.' | '/' | ','))
}

/// `|` / `|-` for multi-line text that a literal block keeps byte for byte.
fn literal_block(s: &str, indent: usize) -> Option<String> {
    if !s.contains('\n') {
        return None;
    }
    let body = s.strip_suffix('\n').unwrap_or(s);
    let keepable = !body.starts_with([' ', '\n'])
        && !body.ends_with('\n')
        && !s.ends_with("\n\n")
        && body.lines().all(|l| !l.ends_with([' ', '\t']))
        && body
            .chars()
            .all(|c| c == '\n' || c == '\t' || !c.is_control());
    if !keepable {
        return None;
    }
    let mut out = String::from(if s.ends_with('\n') { "|" } else { "|-" });
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            pad(&mut out, indent);
            out.push_str(line);
        }
    }
    Some(out)
}

/// A double-quoted scalar; a long one is folded at single spaces (a line break in a
/// double-quoted scalar reads back as one space), and a long run without spaces (JSON,
/// say) is broken with an escaped line break (`\` at the line's end reads back as
/// nothing; the next line's indentation is dropped).
fn folded_quoted(s: &str, indent: usize, column: usize) -> String {
    let q = quoted(s);
    if column + q.len() <= MAX_LINE {
        return q;
    }
    let mut out = String::new();
    let mut line_len = column;
    let bytes: Vec<char> = q.chars().collect();
    // Characters left of the escape sequence being written (never broken).
    let mut escape = 0;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let in_escape = escape > 0;
        escape = match (escape, c) {
            (0, '\\') => 1,
            (1, 'u') => 4,
            (0, _) => 0,
            (n, _) => n - 1,
        };
        let breakable = !in_escape
            && i > 1
            && i + 1 < bytes.len()
            && !matches!(c, ' ' | '\t')
            && !matches!(bytes[i - 1], ' ' | '\t');
        if breakable && line_len + 1 >= MAX_LINE {
            out.push_str("\\\n");
            pad(&mut out, indent);
            line_len = indent;
        }
        // Fold at a single space between two non-spaces, outside an escape.
        let foldable = c == ' '
            && i > 0
            && bytes[i - 1] != ' '
            && bytes[i - 1] != '\\'
            && bytes.get(i + 1).is_some_and(|n| *n != ' ' && *n != '"');
        if foldable && line_len >= MAX_LINE.saturating_sub(40) {
            out.push('\n');
            pad(&mut out, indent);
            line_len = indent;
        } else {
            out.push(c);
            line_len += 1;
        }
        i += 1;
    }
    out
}

/// A YAML double-quoted scalar (escapes valid in YAML 1.1 and 1.2).
pub fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: &Y) {
        let text = document(v);
        let back: Y = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(&back, v, "{text}");
        for line in text.lines() {
            assert!(line.chars().count() <= MAX_LINE + 10, "long line: {line}");
        }
    }

    #[test]
    fn long_strings_without_spaces_break_outside_escapes() {
        for shift in 0..12 {
            let unit = format!("{}\u{1}\"\\é{{x}}", "a".repeat(shift));
            let text = unit.repeat(40);
            let mut m = serde_norway::Mapping::new();
            m.insert(Y::String("key".into()), Y::String(text));
            round_trip(&Y::Sequence(vec![Y::Mapping(m)]));
        }
    }

    #[test]
    fn values_read_back_unchanged() {
        let long = "word ".repeat(60) + "end";
        let json = r#"{"k":"v\"q\\u00e9",""#.repeat(30) + "é\"}";
        let doc: Y = serde_norway::from_str(&format!(
            r#"
- name: a play
  hosts: all
  vars: {{}}
  tasks:
    - name: "yes"
      ansible.builtin.copy:
        content: "line one\nline two\n"
        dest: "/etc/x"
        mode: "0644"
      when: ["a", "b"]
    - name: "{{{{ jinja }}}}"
      shell: "set -e\n  indented\nlast"
      args: {{ text: {long:?}, json: {json:?}, n: 3, t: true, e: [], q: "a: b # c", s: "trailing ", u: "é\u0001" }}
"#
        ))
        .unwrap();
        round_trip(&doc);
        let text = document(&doc);
        assert!(
            text.starts_with("---\n- name: a play\n  hosts: all\n"),
            "{text}"
        );
        assert!(text.contains("  tasks:\n    - name: \"yes\"\n"), "{text}");
        assert!(text.contains("content: |\n          line one\n"), "{text}");
    }
}
