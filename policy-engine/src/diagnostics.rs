//! Diagnostics for policy sources and lints: one type, printed as
//! `file:line:col: error: message` so editors and CI logs can jump to the spot.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// A position in a source file, 1-based.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Location {
    pub file: String,
    pub line: u32,
    pub col: u32,
}

impl Location {
    /// The line and column of byte `offset` in `text` (columns count characters, so
    /// Japanese comments do not shift them).
    pub fn at(file: &str, text: &str, offset: usize) -> Location {
        let offset = offset.min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        Location {
            file: file.to_string(),
            line: line as u32,
            col: col as u32,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable identifier: `parse`, `schema`, `validation`, `duplicate-id`, `template`,
    /// or a lint name such as `no-permit`.
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy_ids: Vec<String>,
}

impl Diagnostic {
    pub fn error(
        code: &'static str,
        location: Option<Location>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            location,
            message: message.into(),
            policy_ids: Vec::new(),
        }
    }
    pub fn warning(
        code: &'static str,
        location: Option<Location>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            code,
            location,
            message: message.into(),
            policy_ids: Vec::new(),
        }
    }
    pub fn with_policies(mut self, ids: impl IntoIterator<Item = String>) -> Self {
        self.policy_ids.extend(ids);
        self
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.location {
            write!(f, "{l}: ")?;
        }
        write!(
            f,
            "{}[{}]: {}",
            self.severity.name(),
            self.code,
            self.message
        )
    }
}

/// Diagnostics that made a policy set unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.0))]
pub struct InvalidPolicies(pub Vec<Diagnostic>);

/// One diagnostic per line.
pub fn render(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let text = "// 住民記録\npermit(\n  principal,";
        let off = text.find("principal").unwrap();
        assert_eq!(
            Location::at("a.cedar", text, off).to_string(),
            "a.cedar:3:3"
        );
        assert_eq!(Location::at("a.cedar", text, 1).to_string(), "a.cedar:1:2");
        // Columns count characters: 住 is three bytes but one column.
        assert_eq!(Location::at("a.cedar", text, 6).to_string(), "a.cedar:1:5");
        assert_eq!(Location::at("a.cedar", text, 0).to_string(), "a.cedar:1:1");
    }
}
