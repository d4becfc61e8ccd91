//! Python `repr()` of JSON values, for the `argsrepr` and `kwargsrepr` headers that Celery
//! shows in logs, events and Flower. Only the JSON subset of Python values is covered.

use super::pyjson::float_repr;
use serde_json::Value;
use std::fmt::Write;

/// `repr(v)` of the Python value that `json.loads` would give for `v`.
#[must_use]
pub fn pyrepr(v: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, v);
    out
}

fn write_repr(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => {
                let _ = write!(out, "{i}");
            }
            (None, Some(u), _) => {
                let _ = write!(out, "{u}");
            }
            (None, None, Some(f)) => out.push_str(&float_repr(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(out, k);
                out.push_str(": ");
                write_repr(out, item);
            }
            out.push('}');
        }
    }
}

/// Python's `str.__repr__`: single quotes unless the text has `'` and no `"`; backslash
/// escapes for the quote, `\\`, `\t`, `\n`, `\r` and non-printable characters.
fn write_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if is_printable(c) => out.push(c),
            c => {
                let cp = u32::from(c);
                let _ = if cp < 0x100 {
                    write!(out, "\\x{cp:02x}")
                } else if cp < 0x1_0000 {
                    write!(out, "\\u{cp:04x}")
                } else {
                    write!(out, "\\U{cp:08x}")
                };
            }
        }
    }
    out.push(quote);
}

/// An approximation of `str.isprintable()` per character: controls, the common format and
/// separator characters, private use and non-characters are escaped. Exact for ASCII and
/// Latin-1, which is where log readers meet them; exotic code points may differ from
/// CPython, which only changes how a log line looks.
fn is_printable(c: char) -> bool {
    let cp = u32::from(c);
    !matches!(cp,
        0x00..=0x1f | 0x7f..=0xa0 | 0xad
        | 0x0600..=0x0605 | 0x061c | 0x06dd | 0x070f | 0x180e
        | 0x1680 | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x206f
        | 0x3000 | 0xd800..=0xf8ff | 0xfeff | 0xfff9..=0xfffb
        | 0xfdd0..=0xfdef | 0xe0000..=0xe007f | 0xf0000..=0x10ffff)
        && (cp & 0xfffe) != 0xfffe
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars() {
        assert_eq!(pyrepr(&json!(null)), "None");
        assert_eq!(pyrepr(&json!(true)), "True");
        assert_eq!(pyrepr(&json!(false)), "False");
        assert_eq!(pyrepr(&json!(-7)), "-7");
        assert_eq!(
            pyrepr(&json!(18_446_744_073_709_551_615_u64)),
            "18446744073709551615"
        );
        assert_eq!(pyrepr(&json!(2.0)), "2.0");
        assert_eq!(pyrepr(&json!(1e-7)), "1e-07");
    }

    #[test]
    fn strings_quote_and_escape_like_python() {
        assert_eq!(pyrepr(&json!("abc")), "'abc'");
        assert_eq!(pyrepr(&json!("it's")), "\"it's\"");
        assert_eq!(pyrepr(&json!("a'b\"c")), "'a\\'b\"c'");
        assert_eq!(pyrepr(&json!("tab\there\nnl\\")), "'tab\\there\\nnl\\\\'");
        assert_eq!(pyrepr(&json!("\u{1}\u{7f}\u{a0}")), "'\\x01\\x7f\\xa0'");
        assert_eq!(pyrepr(&json!("café ✓")), "'café ✓'");
        assert_eq!(pyrepr(&json!("\u{200b}")), "'\\u200b'");
    }

    #[test]
    fn containers_like_the_fixtures() {
        assert_eq!(pyrepr(&json!([2, 3])), "[2, 3]");
        assert_eq!(pyrepr(&json!({"x": 1})), "{'x': 1}");
        assert_eq!(
            pyrepr(&json!({"tag": "crash-demo"})),
            "{'tag': 'crash-demo'}"
        );
        assert_eq!(
            pyrepr(&json!({"recipients": ["ops@example.com"], "n": [null, {}], "e": []})),
            "{'recipients': ['ops@example.com'], 'n': [None, {}], 'e': []}"
        );
    }
}
