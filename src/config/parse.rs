//! Stage 1 machinery: TOML text → the `raw` mirrors, reporting every syntax error, every
//! unknown key (with the closest valid key) and every ill-typed value rather than serde's
//! first. Owns the narrowing trick: when a table fails to deserialize, each of its keys is
//! deserialized alone so one bad key does not hide the next. Knows nothing of what values mean.

use super::diagnostic::{Diagnostic, SourceFile};
use super::raw::{RawDefaults, RawEntry, RawScheduleFile};
use super::values::suggest;
use serde::de::{self, DeserializeOwned, Visitor};
use std::fmt;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

/// A spanned TOML value borrowed from the file's text.
pub(crate) type Node<'i> = Spanned<DeValue<'i>>;

/// Descends into a nested table during narrowing, reporting what is wrong below `key`;
/// returns true when it handled `key`.
pub(crate) type Descend<'a> = &'a dyn Fn(&str, &Node<'_>, &mut Vec<Diagnostic>) -> bool;

/// Parses the whole document, with every syntax error the parser can recover past.
pub(crate) fn document<'i>(file: &'i SourceFile) -> Result<Node<'i>, Vec<Diagnostic>> {
    let (table, errors) = DeTable::parse_recoverable(&file.text);
    if errors.is_empty() {
        let span = table.span();
        return Ok(Spanned::new(span, DeValue::Table(table.into_inner())));
    }
    Err(errors
        .iter()
        .map(|e| {
            let span = e.span().unwrap_or(0..0);
            // toml puts its "expected ..." part on following lines; one line reads better here.
            let message = e.message().trim().replace('\n', "; ");
            file.error(span, format!("invalid TOML: {message}"))
        })
        .collect())
}

/// A table that got through stage 1, possibly without some of its keys.
pub(crate) struct Parsed<T> {
    /// What deserialized; the span is the table's.
    pub(crate) value: Spanned<T>,
    /// Keys left out because they were reported already (unknown or ill-typed), plus the keys
    /// that unknown ones were probably meant to be. Stage 2 must not call these missing: the
    /// user has just been told about them.
    pub(crate) dropped: Vec<String>,
}

/// Stage 1 of a schedule file: `[defaults]`, and the `[[entry]]` tables still as TOML.
/// Entries are deserialized one at a time by [`entry`] while stage 2 walks them: a raw entry is
/// about 1.2 KB, and holding 10,000 of them at once made a load peak at 40 MB (a peak that
/// glibc then kept as the daemon's idle footprint).
#[derive(Default)]
pub(crate) struct ScheduleFile<'d, 'i> {
    pub(crate) defaults: Option<Parsed<RawDefaults>>,
    pub(crate) entries: &'d [Node<'i>],
}

/// Stage 1 of a schedule file's top level, from its parsed `doc`: reads `[defaults]` and
/// reports unknown top-level keys and an `entry` that is not an array. `[defaults]` may come
/// after the entries in the file; it is read first all the same.
pub(crate) fn schedule_file<'d, 'i>(
    file: &SourceFile,
    doc: &'d Node<'i>,
    out: &mut Vec<Diagnostic>,
) -> ScheduleFile<'d, 'i> {
    let mut raw = ScheduleFile::default();
    let Some(top) = doc.get_ref().as_table() else {
        return raw;
    };
    for (key, value) in top.iter() {
        match key.get_ref().as_ref() {
            "defaults" => raw.defaults = table(file, "[defaults]", value, &flat, out),
            "entry" => match value.get_ref() {
                DeValue::Array(items) => raw.entries = &items[..],
                other => out.push(
                    file.error(
                        value.span(),
                        format!(
                            "`entry` must be an array of tables, found {}",
                            other.type_str()
                        ),
                    )
                    .with_help("write each entry under its own `[[entry]]` header"),
                ),
            },
            _ => {
                let what = "the top level of a schedule file";
                out.push(unknown_key(file, what, key, fields_of::<RawScheduleFile>()).0);
            }
        }
    }
    raw
}

/// Stage 1 of one `[[entry]]` table; `None` (reported) when not even part of it deserializes.
/// Entries are deserialized one by one so that a bad one is reported without hiding the
/// others, and the good ones still reach stage 2.
pub(crate) fn entry(
    file: &SourceFile,
    node: &Node<'_>,
    out: &mut Vec<Diagnostic>,
) -> Option<Parsed<RawEntry>> {
    table(file, "[[entry]]", node, &flat, out)
}

/// Deserializes the table `node` (named `what` in messages, e.g. `[[entry]]`) as `T`,
/// reporting everything wrong with it. A table with bad keys still yields the rest of it, so
/// stage 2 can check that too; `None` only when not even that deserializes.
pub(crate) fn table<T: DeserializeOwned>(
    file: &SourceFile,
    what: &str,
    node: &Node<'_>,
    descend: Descend<'_>,
    out: &mut Vec<Diagnostic>,
) -> Option<Parsed<T>> {
    let Some(table) = node.get_ref().as_table() else {
        let found = node.get_ref().type_str();
        out.push(file.error(
            node.span(),
            format!("{what} must be a table, found {found}"),
        ));
        return None;
    };
    let fields = fields_of::<T>();
    let known = |key: &str| fields.contains(&key);
    // `bad` keys are left out of the table; `dropped` adds what unknown ones probably meant.
    let (mut bad, mut dropped) = (Vec::new(), Vec::new());
    for (key, _) in table.iter().filter(|(k, _)| !known(k.get_ref())) {
        let (d, meant) = unknown_key(file, what, key, fields);
        out.push(d);
        bad.push(key.get_ref().to_string());
        dropped.extend(meant.map(str::to_owned));
    }
    let de = |t: DeTable<'_>| {
        T::deserialize(ValueDeserializer::from(Spanned::new(
            node.span(),
            DeValue::Table(t),
        )))
    };
    if bad.is_empty() {
        if let Ok(value) = de(table.clone()) {
            return Some(Parsed {
                value: Spanned::new(node.span(), value),
                dropped,
            });
        }
    }
    // Narrowing: each known key alone, so one bad key does not hide the next.
    for (key, value) in table.iter().filter(|(k, _)| known(k.get_ref())) {
        let before = out.len();
        if !descend(key.get_ref(), value, out) {
            let mut alone = DeTable::new();
            alone.insert(key.clone(), value.clone());
            if let Err(e) = de(alone) {
                out.push(type_error(file, key.get_ref(), value.span(), &e));
            }
        }
        if out.len() > before {
            bad.push(key.get_ref().to_string());
        }
    }
    let mut rest = DeTable::new();
    for (key, value) in table
        .iter()
        .filter(|(k, _)| !bad.iter().any(|b| b == k.get_ref()))
    {
        rest.insert(key.clone(), value.clone());
    }
    dropped.extend(bad);
    match de(rest) {
        Ok(value) => Some(Parsed {
            value: Spanned::new(node.span(), value),
            dropped,
        }),
        // A failure that no key shows alone: report it as serde saw it.
        Err(e) => {
            let span = e.span().unwrap_or_else(|| node.span());
            out.push(file.error(span, format!("in {what}: {}", e.message().trim())));
            None
        }
    }
}

/// Never descends: for tables with no nested tables worth narrowing.
pub(crate) fn flat(_: &str, _: &Node<'_>, _: &mut Vec<Diagnostic>) -> bool {
    false
}

/// The diagnostic, and the key it was probably meant to be.
fn unknown_key(
    file: &SourceFile,
    what: &str,
    key: &Spanned<std::borrow::Cow<'_, str>>,
    fields: &'static [&'static str],
) -> (Diagnostic, Option<&'static str>) {
    let name = key.get_ref().as_ref();
    let d = file.error(key.span(), format!("unknown key `{name}` in {what}"));
    if let Some(best) = suggest(name, fields.iter().copied()) {
        return (d.with_help(format!("did you mean `{best}`?")), Some(best));
    }
    if what == "[defaults]" && fields_of::<RawEntry>().contains(&name) {
        let help = format!("`{name}` can only be set in an [[entry]], not in [defaults]");
        return (d.with_help(help), None);
    }
    (
        d.with_help(format!("valid keys in {what}: {}", fields.join(", "))),
        None,
    )
}

fn type_error(
    file: &SourceFile,
    key: &str,
    value: std::ops::Range<usize>,
    e: &toml::de::Error,
) -> Diagnostic {
    let span = e
        .span()
        .filter(|s| s.start >= value.start && s.end <= value.end)
        .unwrap_or(value);
    file.error(
        span,
        format!("invalid value for `{key}`: {}", e.message().trim()),
    )
}

/// The field names serde knows for a struct, asked of its derived `Deserialize` itself so that
/// unknown-key checks can never drift from the struct.
pub(crate) fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(FieldsOf) {
        Err(Captured(Some(fields))) => fields,
        _ => &[],
    }
}

struct FieldsOf;

#[derive(Debug)]
struct Captured(Option<&'static [&'static str]>);

impl fmt::Display for Captured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field names captured")
    }
}

impl std::error::Error for Captured {}

impl de::Error for Captured {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Captured(None)
    }
}

impl<'de> de::Deserializer<'de> for FieldsOf {
    type Error = Captured;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Captured> {
        Err(Captured(None))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Captured> {
        Err(Captured(Some(fields)))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::super::raw::{RawDefaults, RawEntry};
    use super::*;

    #[test]
    fn fields_come_from_the_derived_struct() {
        let fields = fields_of::<RawEntry>();
        assert!(fields.contains(&"catch_up_window") && fields.contains(&"name"));
        assert!(!fields_of::<RawDefaults>().contains(&"task"));
    }
}
