//! Config diagnostics: one problem in one file, located by byte span and rendered as
//! `path:line:column: error: message`, the source line, a caret line and an optional help, in
//! the style of rustc and casey/just. Owns locating spans (line, column) and rendering; does
//! not decide what is a problem (that is `raw` and `validate`).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// How bad a diagnostic is. Errors stop a load; warnings are reported and the load goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The file is rejected.
    Error,
    /// Suspicious but accepted (e.g. a one-off `at` in the past).
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem in a config or schedule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file the problem is in.
    pub path: PathBuf,
    /// 1-based line of the span's start; 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based column (in characters) of the span's start; 0 when there is no span.
    pub column: usize,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
    /// How to fix it, when we can tell.
    pub help: Option<String>,
    /// The text of `line` (without its newline), shown under the message.
    pub source_line: Option<String>,
    /// Byte range in the file the problem points at.
    pub span: Option<Range<usize>>,
    /// Other places that explain this one (e.g. where a duplicate name was first defined).
    pub notes: Vec<Note>,
}

/// A secondary place attached to a [`Diagnostic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The file of the other place.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column in characters.
    pub column: usize,
    /// What this place is, e.g. `first defined here`.
    pub message: String,
    /// The text of `line`.
    pub source_line: Option<String>,
    /// Byte range in that file.
    pub span: Option<Range<usize>>,
}

/// Every problem found while loading; the `Err` of the loaders. Warnings may be mixed in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

/// A file's text and name, able to turn byte spans into located diagnostics.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    pub(crate) path: PathBuf,
    pub(crate) text: String,
    /// Byte offsets of the newlines, built on first use: validation asks for the line of every
    /// entry, and counting newlines from the start each time made 100,000 entries take minutes.
    newlines: std::sync::OnceLock<Vec<usize>>,
}

/// Line, column and line text of a byte offset.
struct Located {
    line: usize,
    column: usize,
    source_line: String,
}

impl SourceFile {
    pub(crate) fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            text: text.into(),
            newlines: std::sync::OnceLock::new(),
        }
    }

    fn locate(&self, offset: usize) -> Located {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        let source_line = self.text[line_start..line_end]
            .trim_end_matches('\r')
            .to_owned();
        Located {
            line: self.line_of(offset),
            column: self.text[line_start..offset].chars().count() + 1,
            source_line,
        }
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        let newlines = self
            .newlines
            .get_or_init(|| self.text.match_indices('\n').map(|(i, _)| i).collect());
        newlines.partition_point(|&nl| nl < offset) + 1
    }

    /// A diagnostic pointing at `span` of this file.
    pub(crate) fn at(
        &self,
        severity: Severity,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Diagnostic {
        let at = self.locate(span.start);
        Diagnostic {
            severity,
            path: self.path.clone(),
            line: at.line,
            column: at.column,
            message: message.into(),
            help: None,
            source_line: Some(at.source_line),
            span: Some(span),
            notes: Vec::new(),
        }
    }

    pub(crate) fn error(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        self.at(Severity::Error, span, message)
    }

    pub(crate) fn warning(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        self.at(Severity::Warning, span, message)
    }

    /// A note pointing at `span` of this file, to attach to a diagnostic about another place.
    pub(crate) fn note(&self, span: Range<usize>, message: impl Into<String>) -> Note {
        let at = self.locate(span.start);
        Note {
            path: self.path.clone(),
            line: at.line,
            column: at.column,
            message: message.into(),
            source_line: Some(at.source_line),
            span: Some(span),
        }
    }
}

impl Diagnostic {
    /// A problem with a whole file (missing, unreadable, not UTF-8), with no position.
    pub(crate) fn whole_file(
        severity: Severity,
        path: impl Into<PathBuf>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity,
            path: path.into(),
            line: 0,
            column: 0,
            message: message.into(),
            help: None,
            source_line: None,
            span: None,
            notes: Vec::new(),
        }
    }

    #[must_use]
    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    #[must_use]
    pub(crate) fn with_note(mut self, note: Note) -> Self {
        self.notes.push(note);
        self
    }

    /// True for [`Severity::Error`].
    #[must_use]
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Writes `path:line:column: label: message` (or `path: label: message` without a position).
fn header(
    f: &mut fmt::Formatter<'_>,
    path: &Path,
    line: usize,
    col: usize,
    label: &str,
    msg: &str,
) -> fmt::Result {
    if line == 0 {
        writeln!(f, "{}: {label}: {msg}", path.display())
    } else {
        writeln!(f, "{}:{line}:{col}: {label}: {msg}", path.display())
    }
}

/// Writes the source line and a caret line under the span (first line of it only), with a
/// gutter `width` digits wide so the main snippet and its notes line up.
fn snippet(
    f: &mut fmt::Formatter<'_>,
    width: usize,
    line: usize,
    column: usize,
    source_line: &str,
    span: Option<&Range<usize>>,
) -> fmt::Result {
    let start: usize = source_line
        .chars()
        .take(column.saturating_sub(1))
        .map(char::len_utf8)
        .sum();
    let len = span.map_or(1, |s| s.end.saturating_sub(s.start));
    let rest = source_line.get(start..).unwrap_or("");
    let carets = rest
        .char_indices()
        .take_while(|(i, _)| *i < len)
        .count()
        .max(1);
    // Keep tabs as tabs so the carets stay under the text whatever the tab width.
    let pad: String = source_line[..start]
        .chars()
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    writeln!(f, "{:width$} |", "")?;
    writeln!(f, "{line:>width$} | {source_line}")?;
    writeln!(f, "{:width$} | {pad}{}", "", "^".repeat(carets))
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = std::iter::once(self.line)
            .chain(self.notes.iter().map(|n| n.line))
            .max()
            .unwrap_or(0)
            .to_string()
            .len();
        let label = self.severity.to_string();
        header(f, &self.path, self.line, self.column, &label, &self.message)?;
        if let (Some(src), true) = (&self.source_line, self.line > 0) {
            snippet(f, width, self.line, self.column, src, self.span.as_ref())?;
        }
        for note in &self.notes {
            header(f, &note.path, note.line, note.column, "note", &note.message)?;
            if let (Some(src), true) = (&note.source_line, note.line > 0) {
                snippet(f, width, note.line, note.column, src, note.span.as_ref())?;
            }
        }
        if let Some(help) = &self.help {
            writeln!(f, "{:width$} = help: {help}", "")?;
        }
        Ok(())
    }
}

impl Diagnostics {
    /// True if at least one diagnostic is an error.
    #[must_use]
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    /// The warnings only.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }

    /// `2 errors, 1 warning`: a closing line for the CLI.
    #[must_use]
    pub fn summary(&self) -> String {
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let errors = self.errors().count();
        let warnings = self.0.len() - errors;
        match (errors, warnings) {
            (e, 0) => plural(e, "error"),
            (0, w) => plural(w, "warning"),
            (e, w) => format!("{}, {}", plural(e, "error"), plural(w, "warning")),
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl From<Vec<Diagnostic>> for Diagnostics {
    fn from(v: Vec<Diagnostic>) -> Self {
        Diagnostics(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> SourceFile {
        SourceFile::new("s.toml", "[[entry]]\nname = \"héllo\"\n\tqueue = 5\n")
    }

    #[test]
    fn locates_line_and_character_column() {
        let f = file();
        let start = f.text.find("5").unwrap();
        let d = f.error(start..start + 1, "bad");
        assert_eq!((d.line, d.column), (3, 10));
        assert_eq!(d.source_line.as_deref(), Some("\tqueue = 5"));
        let start = f.text.find('"').unwrap();
        let d = f.error(start..start + "\"héllo\"".len(), "bad");
        assert_eq!((d.line, d.column), (2, 8));
    }

    #[test]
    fn renders_header_source_caret_and_help() {
        let f = file();
        let start = f.text.find('"').unwrap();
        let d = f
            .error(start..start + "\"héllo\"".len(), "bad name")
            .with_help("rename it");
        let want = "s.toml:2:8: error: bad name\n  |\n2 | name = \"héllo\"\n  |        \
                    ^^^^^^^\n  = help: rename it\n";
        assert_eq!(d.to_string(), want);
    }

    #[test]
    fn keeps_tabs_in_the_caret_line_and_renders_notes() {
        let f = file();
        let start = f.text.find("5").unwrap();
        let first = f.note(0..9, "first here");
        let d = f.warning(start..start + 1, "odd").with_note(first);
        let want = "s.toml:3:10: warning: odd\n  |\n3 | \tqueue = 5\n  | \t        ^\n\
                    s.toml:1:1: note: first here\n  |\n1 | [[entry]]\n  | ^^^^^^^^^\n";
        assert_eq!(d.to_string(), want);
    }

    #[test]
    fn whole_file_problems_have_no_position() {
        let d = Diagnostic::whole_file(Severity::Error, "x.toml", "no such file");
        assert_eq!(d.to_string(), "x.toml: error: no such file\n");
        let all = Diagnostics(vec![d.clone(), d]);
        assert_eq!(all.summary(), "2 errors");
        assert!(all.has_errors());
    }
}
