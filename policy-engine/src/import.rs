//! Bulk import files as a city's administrators produce them: CSV from a personnel or
//! asset system (UTF-8, or Shift_JIS, which Japanese municipal systems still export),
//! and TOML written by hand.
//!
//! Everything here checks a whole file before anything is written, and names every
//! problem by row and column, so an administrator fixes the file in one pass instead
//! of one error per run. Rows are numbered as a spreadsheet shows them: the header is
//! row 1, the first record row 2.
//!
//! [`devices`] turns a device file into [`DeviceRecord`]s and compares them with the
//! engine's store; the users import of a standalone tier builds on [`decode`] and
//! [`read_table`] in the gateway crate.

use std::collections::BTreeMap;

use crate::entities::DeviceRecord;
use crate::{Capabilities, DeviceKind, Tier};

/// How the bytes of an import file are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextEncoding {
    /// UTF-8 (with or without a byte order mark) when the bytes are valid UTF-8,
    /// Shift_JIS otherwise.
    #[default]
    Auto,
    Utf8,
    ShiftJis,
}

impl std::str::FromStr for TextEncoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "auto" => Ok(TextEncoding::Auto),
            "utf8" | "utf_8" => Ok(TextEncoding::Utf8),
            "shift_jis" | "sjis" | "cp932" | "windows_31j" => Ok(TextEncoding::ShiftJis),
            _ => Err(format!(
                "unknown encoding '{s}': expected auto, utf-8 or shift_jis"
            )),
        }
    }
}

/// One thing wrong with an import file. `row` 0 means the file as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub row: usize,
    /// The column's header name (or `TOML` key); empty when the problem is the row.
    pub column: String,
    pub reason: String,
    /// How the row is named when the file has entries rather than rows: a TOML
    /// file's `device 2 (id 'lg-1')`, since its line numbers say nothing about which
    /// table is meant. `None` for CSV, whose rows a spreadsheet numbers.
    pub entry: Option<String>,
}

impl Problem {
    pub fn new(row: usize, column: impl Into<String>, reason: impl Into<String>) -> Problem {
        Problem {
            row,
            column: column.into(),
            reason: reason.into(),
            entry: None,
        }
    }

    /// This problem, with `entry` naming its row.
    pub fn in_entry(mut self, entry: &str) -> Problem {
        self.entry = Some(entry.to_string());
        self
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.entry, self.row, self.column.is_empty()) {
            (Some(e), _, true) => write!(f, "{e}: {}", self.reason),
            (Some(e), _, false) => write!(f, "{e}, key {}: {}", self.column, self.reason),
            (None, 0, _) => write!(f, "{}", self.reason),
            (None, r, true) => write!(f, "row {r}: {}", self.reason),
            (None, r, false) => write!(f, "row {r}, column {}: {}", self.column, self.reason),
        }
    }
}

/// Decodes an import file's bytes to text, naming which encoding was used.
///
/// Auto-detection is safe in one direction only: Shift_JIS text with kanji is almost
/// never valid UTF-8, so valid UTF-8 is taken as UTF-8 and anything else is decoded
/// as Shift_JIS. A byte sequence that is valid in neither is reported with its row.
pub fn decode(bytes: &[u8], encoding: TextEncoding) -> Result<(String, &'static str), Problem> {
    let without_bom = bytes.strip_prefix(b"\xEF\xBB\xBF");
    let utf8 = || match std::str::from_utf8(without_bom.unwrap_or(bytes)) {
        Ok(s) => Ok(s.to_string()),
        Err(e) => {
            let row = row_of_offset(bytes, e.valid_up_to());
            Err(Problem::new(
                row,
                "",
                "invalid UTF-8 (if the file is Shift_JIS, use --encoding shift_jis or auto)",
            ))
        }
    };
    match encoding {
        TextEncoding::Utf8 => utf8().map(|s| (s, "UTF-8")),
        TextEncoding::Auto if without_bom.is_some() => utf8().map(|s| (s, "UTF-8")),
        TextEncoding::Auto if std::str::from_utf8(bytes).is_ok() => utf8().map(|s| (s, "UTF-8")),
        TextEncoding::Auto | TextEncoding::ShiftJis => {
            let (text, had_errors) = encoding_rs::SHIFT_JIS.decode_without_bom_handling(bytes);
            if had_errors {
                // The replacement character marks where decoding failed; its row is
                // the row of the bad bytes (Shift_JIS never hides a newline inside a
                // two-byte character).
                let row = text
                    .find('\u{FFFD}')
                    .map_or(0, |i| 1 + text[..i].matches('\n').count());
                let why = if encoding == TextEncoding::Auto {
                    "neither valid UTF-8 nor valid Shift_JIS"
                } else {
                    "invalid Shift_JIS byte sequence"
                };
                return Err(Problem::new(row, "", why));
            }
            Ok((text.into_owned(), "Shift_JIS"))
        }
    }
}

fn row_of_offset(bytes: &[u8], offset: usize) -> usize {
    1 + bytes[..offset.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// One CSV record and the row it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRecord {
    pub row: usize,
    pub fields: Vec<String>,
}

/// Splits CSV text (RFC 4180: `,` separated, `"` quoted, `""` an escaped quote,
/// CRLF or LF) into records. A quoted field may span lines; the record's row is the
/// line it starts on. Lines that are entirely empty are skipped (spreadsheets add
/// them at the end).
pub fn parse_csv(text: &str) -> Result<Vec<CsvRecord>, Problem> {
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1usize;
    let mut start = 1usize;
    let mut chars = text.chars().peekable();
    let mut in_quotes = false;
    // Whether the current field was quoted (then it is not trimmed and may be "").
    let mut quoted = false;
    let end_record = |fields: &mut Vec<String>, start: usize, records: &mut Vec<CsvRecord>| {
        let f = std::mem::take(fields);
        if !(f.len() == 1 && f[0].is_empty()) {
            records.push(CsvRecord {
                row: start,
                fields: f,
            });
        }
    };
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.trim().is_empty() && !quoted => {
                field.clear();
                in_quotes = true;
                quoted = true;
            }
            '"' => {
                return Err(Problem::new(
                    line,
                    "",
                    "a quote inside an unquoted field (quote the whole field and double the quote: \"a \"\"b\"\"\")",
                ))
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                quoted = false;
                end_record(&mut fields, start, &mut records);
                line += 1;
                start = line;
            }
            c if quoted && !c.is_whitespace() => {
                return Err(Problem::new(
                    line,
                    "",
                    "text after the closing quote of a field",
                ))
            }
            c => field.push(c),
        }
    }
    if in_quotes {
        return Err(Problem::new(
            start,
            "",
            "a quoted field is not closed before the end of the file",
        ));
    }
    fields.push(field);
    end_record(&mut fields, start, &mut records);
    Ok(records)
}

/// A CSV file with a header: each record as a map from column name to its (trimmed)
/// value.
#[derive(Debug, Clone)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<(usize, BTreeMap<String, String>)>,
}

/// Reads a CSV table whose header names columns from `known` (case-insensitive,
/// surrounding spaces ignored), requiring those in `required`. Every problem of the
/// header and of the column counts is reported, not just the first.
pub fn read_table(text: &str, known: &[&str], required: &[&str]) -> Result<Table, Vec<Problem>> {
    let (table, _, problems) = read_known_columns(text, known, required)?;
    if problems.is_empty() {
        Ok(table)
    } else {
        Err(problems)
    }
}

/// [`read_table`] that goes on past header and column-count problems: the table of
/// the known columns (a repeated column's first occurrence) and of the rows as long
/// as the header, the header's row, and every problem found. Only a file that has no
/// table at all (bad CSV syntax, nothing in it) is an error.
fn read_known_columns(
    text: &str,
    known: &[&str],
    required: &[&str],
) -> Result<(Table, usize, Vec<Problem>), Vec<Problem>> {
    let records = parse_csv(text).map_err(|p| vec![p])?;
    let Some((header, body)) = records.split_first() else {
        return Err(vec![Problem::new(
            0,
            "",
            format!(
                "the file is empty: the first row must name the columns ({})",
                known.join(",")
            ),
        )]);
    };
    let mut problems = Vec::new();
    // The column each header cell feeds, or None for one that is skipped.
    let mut slots: Vec<Option<String>> = Vec::with_capacity(header.fields.len());
    for (i, name) in header.fields.iter().enumerate() {
        let name = name.trim().trim_start_matches('\u{FEFF}').to_lowercase();
        if !known.contains(&name.as_str()) {
            problems.push(Problem::new(
                header.row,
                name.clone(),
                format!(
                    "unknown column '{name}' (column {}); known columns: {}",
                    i + 1,
                    known.join(", ")
                ),
            ));
            slots.push(None);
        } else if slots.iter().flatten().any(|c| *c == name) {
            problems.push(Problem::new(
                header.row,
                name.clone(),
                "the column appears twice in the header",
            ));
            slots.push(None);
        } else {
            slots.push(Some(name));
        }
    }
    let columns: Vec<String> = slots.iter().flatten().cloned().collect();
    for r in required {
        if !columns.iter().any(|c| c == r) {
            problems.push(Problem::new(
                header.row,
                *r,
                format!("the required column '{r}' is missing from the header"),
            ));
        }
    }
    let mut rows = Vec::with_capacity(body.len());
    for rec in body {
        if rec.fields.len() != slots.len() {
            problems.push(Problem::new(
                rec.row,
                "",
                format!(
                    "{} columns, but the header has {}",
                    rec.fields.len(),
                    slots.len()
                ),
            ));
            continue;
        }
        let map = slots
            .iter()
            .zip(&rec.fields)
            .filter_map(|(slot, f)| Some((slot.clone()?, f.trim().to_string())))
            .collect();
        rows.push((rec.row, map));
    }
    Ok((Table { columns, rows }, header.row, problems))
}

/// `table` written back as CSV with each record on the row it was read from (blank
/// lines, which [`parse_csv`] skips, fill the gaps), so that reading it again names
/// the same rows.
fn csv_on_rows(table: &Table, header_row: usize) -> String {
    fn quoted(cell: &str) -> String {
        format!("\"{}\"", cell.replace('"', "\"\""))
    }
    let mut out = String::new();
    let mut line = 1;
    let mut record = |out: &mut String, row: usize, cells: Vec<String>| {
        while line < row {
            out.push('\n');
            line += 1;
        }
        let text = cells.join(",");
        line += text.matches('\n').count() + 1;
        out.push_str(&text);
        out.push('\n');
    };
    let header = table.columns.iter().map(|c| quoted(c)).collect();
    record(&mut out, header_row, header);
    for (row, cells) in &table.rows {
        let cells = table
            .columns
            .iter()
            .map(|c| quoted(cells.get(c).map_or("", String::as_str)))
            .collect();
        record(&mut out, *row, cells);
    }
    out
}

/// Runs `parse`, a reader of a table with the `known` columns built on
/// [`read_table`], so that a file's problems are all found in one pass: when the
/// header names an unknown or repeated column, or a row has the wrong number of
/// cells, `parse` still checks the other rows on the known columns, and reports
/// them with those of the header. Any problem refuses the whole file.
pub fn parse_table<T>(
    text: &str,
    known: &[&str],
    parse: impl FnOnce(&str) -> Result<T, Vec<Problem>>,
) -> Result<T, Vec<Problem>> {
    // Required columns are left to `parse`, which names them either way.
    let (table, header_row, mut problems) = read_known_columns(text, known, &[])?;
    if problems.is_empty() {
        return parse(text);
    }
    if let Err(more) = parse(&csv_on_rows(&table, header_row)) {
        for p in more {
            if !problems.contains(&p) {
                problems.push(p);
            }
        }
    }
    // In file order; a row's problems keep the order they were found in.
    problems.sort_by_key(|p| p.row);
    Err(problems)
}

/// Checks an identifier (user or device id): 1 to 256 bytes, no control characters,
/// no surrounding white space.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("empty".into());
    }
    if id.len() > 256 {
        return Err(format!("{} bytes long, at most 256", id.len()));
    }
    if id.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    if id.trim() != id {
        return Err("has leading or trailing white space".into());
    }
    Ok(())
}

/// Splits a list cell into its trimmed, non-empty items. Lists use `;` so that a
/// cell never needs quoting for its separator.
pub fn split_list(cell: &str) -> Vec<String> {
    cell.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// The device file's columns, in the order a template file would have them.
pub const DEVICE_COLUMNS: &[&str] = &["id", "tier", "kind", "capabilities", "location"];

/// How one imported device compares with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Changed,
    Unchanged,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Changed => "changed",
            Change::Unchanged => "unchanged",
        }
    }
}

/// A validated device row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub row: usize,
    pub device: DeviceRecord,
}

/// One device as read from a file, before its values are checked. A field is `None`
/// when reading it already failed (a TOML value of the wrong type), so that it is
/// not reported twice.
struct RawDevice {
    row: usize,
    /// How a TOML file's entry is named in problems (`device 2 (id 'lg-1')`).
    entry: Option<String>,
    id: Option<String>,
    tier: Option<String>,
    kind: Option<String>,
    capabilities: Option<Vec<String>>,
    location: Option<String>,
}

/// Reads a device file: TOML when `toml` (an array of `[[device]]` tables, "row" N
/// being the N-th device), otherwise CSV with the [`DEVICE_COLUMNS`] (capabilities
/// `;`-separated). Every row is checked; any problem refuses the whole file.
pub fn parse_devices(text: &str, toml: bool) -> Result<Vec<DeviceRow>, Vec<Problem>> {
    if toml {
        let (raw, problems) = toml_devices(text)?;
        return check_devices(raw, problems);
    }
    parse_table(text, DEVICE_COLUMNS, |text| {
        let table = read_table(text, DEVICE_COLUMNS, &["id", "tier", "kind"])?;
        let raw = table
            .rows
            .into_iter()
            .map(|(row, mut m)| {
                let mut take = |k: &str| Some(m.remove(k).unwrap_or_default());
                RawDevice {
                    row,
                    entry: None,
                    id: take("id"),
                    tier: take("tier"),
                    kind: take("kind"),
                    capabilities: take("capabilities").map(|c| split_list(&c)),
                    location: take("location"),
                }
            })
            .collect();
        check_devices(raw, Vec::new())
    })
}

/// The `[[device]]` tables of a TOML file, with a problem for each key that is
/// unknown, missing or of the wrong type, named by its device (index and id) and key.
/// Only a file that is not TOML at all is an error by itself.
fn toml_devices(text: &str) -> Result<(Vec<RawDevice>, Vec<Problem>), Vec<Problem>> {
    let doc: ::toml::Table = text.parse().map_err(|e: ::toml::de::Error| {
        let before = e.span().and_then(|span| text.get(..span.start));
        let at = before.map_or(String::new(), |before| {
            let line = 1 + before.matches('\n').count();
            let column = 1 + before.chars().rev().take_while(|c| *c != '\n').count();
            format!(" at line {line}, column {column}")
        });
        // One line, as every problem is printed: the parser's message may have several.
        let lines: Vec<&str> = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let message = lines.join("; ");
        vec![Problem::new(
            0,
            "",
            format!("not a valid TOML file{at}: {message}"),
        )]
    })?;
    let mut problems = Vec::new();
    for key in doc.keys().filter(|k| k.as_str() != "device") {
        problems.push(Problem::new(
            0,
            "",
            format!("unknown top-level key '{key}': a device file holds [[device]] tables only"),
        ));
    }
    let entries: &[::toml::Value] = match doc.get("device") {
        None => &[],
        Some(::toml::Value::Array(entries)) => entries,
        Some(other) => {
            problems.push(Problem::new(
                0,
                "",
                format!(
                    "'device' is {}: write each device as a [[device]] table",
                    a_type(other)
                ),
            ));
            &[]
        }
    };
    let mut raw = Vec::with_capacity(entries.len());
    for (i, value) in entries.iter().enumerate() {
        let row = i + 1;
        let Some(table) = value.as_table() else {
            problems.push(
                Problem::new(row, "", format!("{}, not a table", a_type(value)))
                    .in_entry(&format!("device {row}")),
            );
            continue;
        };
        let entry = match table
            .get("id")
            .and_then(::toml::Value::as_str)
            .filter(|id| !id.trim().is_empty())
        {
            Some(id) => format!("device {row} (id '{id}')"),
            None => format!("device {row}"),
        };
        let mut bad = |key: &str, reason: String| {
            problems.push(Problem::new(row, key, reason).in_entry(&entry));
        };
        for key in table.keys() {
            if !DEVICE_COLUMNS.contains(&key.as_str()) {
                bad(
                    key,
                    format!("unknown key; known keys: {}", DEVICE_COLUMNS.join(", ")),
                );
            }
        }
        let mut string = |key: &str, required: bool| match table.get(key) {
            None if required => {
                bad(key, "missing (required)".into());
                None
            }
            None => Some(String::new()),
            Some(::toml::Value::String(s)) => Some(s.clone()),
            Some(other) => {
                bad(key, format!("must be a string, not {}", a_type(other)));
                None
            }
        };
        let (id, tier, kind) = (
            string("id", true),
            string("tier", true),
            string("kind", true),
        );
        let location = string("location", false);
        let capabilities = match table.get("capabilities") {
            None => Some(Vec::new()),
            Some(::toml::Value::Array(items)) if items.iter().all(|v| v.is_str()) => Some(
                items
                    .iter()
                    .filter_map(::toml::Value::as_str)
                    .map(String::from)
                    .collect(),
            ),
            Some(other) => {
                bad(
                    "capabilities",
                    format!(
                        "must be an array of strings such as [\"card\", \"face\"], not {}",
                        other
                    ),
                );
                None
            }
        };
        raw.push(RawDevice {
            row,
            entry: Some(entry),
            id,
            tier,
            kind,
            capabilities,
            location,
        });
    }
    Ok((raw, problems))
}

/// A TOML value's type with its article, for problems: "an integer", "a string".
fn a_type(value: &::toml::Value) -> String {
    let t = value.type_str();
    let article = if t.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {t}")
}

/// Checks the values of every device read, adding to the problems already found;
/// any problem refuses the whole file.
fn check_devices(
    raw: Vec<RawDevice>,
    mut problems: Vec<Problem>,
) -> Result<Vec<DeviceRow>, Vec<Problem>> {
    // The first row or entry each id was seen in, as problems name it.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut rows = Vec::with_capacity(raw.len());
    for d in raw {
        let before = problems.len();
        let row = d.row;
        let mut bad = |column: &str, reason: String| {
            let p = Problem::new(row, column, reason);
            problems.push(match &d.entry {
                Some(e) => p.in_entry(e),
                None => p,
            });
        };
        let id = d.id.map(|id| id.trim().to_string());
        if let Some(id) = &id {
            let here = match d.entry {
                Some(_) => format!("device {row}"),
                None => format!("row {row}"),
            };
            if let Err(why) = check_id(id) {
                bad("id", format!("device id {why}"));
            } else if let Some(first) = seen.get(id) {
                bad("id", format!("device '{id}' is already in {first}"));
            } else {
                seen.insert(id.clone(), here);
            }
        }
        let tier: Option<Tier> = d.tier.and_then(|t| {
            t.trim()
                .parse()
                .map_err(|e: crate::model::UnknownName| bad("tier", e.to_string()))
                .ok()
        });
        let kind: Option<DeviceKind> = d.kind.and_then(|k| {
            k.trim()
                .parse()
                .map_err(|e: crate::model::UnknownName| bad("kind", e.to_string()))
                .ok()
        });
        let capabilities = d.capabilities.and_then(|caps| {
            Capabilities::parse_names(caps.iter().map(|c| c.trim()))
                .map_err(|e| bad("capabilities", e.to_string()))
                .ok()
        });
        if let Some(location) = &d.location {
            if location.chars().any(|c| c.is_control() && c != '\t') {
                bad(
                    "location",
                    "contains a line break or control character".into(),
                );
            }
        }
        if problems.len() != before {
            continue;
        }
        if let (Some(id), Some(tier), Some(kind), Some(capabilities), Some(location)) =
            (id, tier, kind, capabilities, d.location)
        {
            rows.push(DeviceRow {
                row,
                device: DeviceRecord {
                    id,
                    tier,
                    kind,
                    capabilities,
                    location: location.trim().to_string(),
                },
            });
        }
    }
    if problems.is_empty() {
        Ok(rows)
    } else {
        Err(problems)
    }
}

/// Compares imported devices with those in the store: what each would become.
pub fn diff_devices<'a>(
    rows: &'a [DeviceRow],
    current: &[DeviceRecord],
) -> Vec<(&'a DeviceRow, Change)> {
    let current: BTreeMap<&str, &DeviceRecord> =
        current.iter().map(|d| (d.id.as_str(), d)).collect();
    rows.iter()
        .map(|r| {
            let change = match current.get(r.device.id.as_str()) {
                None => Change::Added,
                Some(d) if **d == r.device => Change::Unchanged,
                Some(_) => Change::Changed,
            };
            (r, change)
        })
        .collect()
}

/// Names the fields in which `new` differs from `old`.
pub fn device_changes(old: &DeviceRecord, new: &DeviceRecord) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.tier != new.tier {
        v.push("tier");
    }
    if old.kind != new.kind {
        v.push("kind");
    }
    if old.capabilities != new.capabilities {
        v.push("capabilities");
    }
    if old.location != new.location {
        v.push("location");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting_and_rows() {
        let recs = parse_csv("a,b\r\n\"x, y\",\"say \"\"hi\"\"\"\n\"multi\nline\",z\n\n").unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].row, 2);
        assert_eq!(recs[1].fields, ["x, y", "say \"hi\""]);
        assert_eq!(recs[2].row, 3);
        assert_eq!(recs[2].fields, ["multi\nline", "z"]);
        let e = parse_csv("a\n\"open\n").unwrap_err();
        assert_eq!(e.row, 2);
        assert!(e.reason.contains("not closed"));
        let e = parse_csv("a\nb\"c\n").unwrap_err();
        assert_eq!(e.row, 2);
        let e = parse_csv("a\n\"b\"c\n").unwrap_err();
        assert!(e.reason.contains("after the closing quote"), "{e}");
    }

    #[test]
    fn header_and_column_count_problems_are_all_reported() {
        let err =
            read_table("id,tier,colour\nx,lgwan\n", DEVICE_COLUMNS, &["id", "kind"]).unwrap_err();
        let shown: Vec<String> = err.iter().map(Problem::to_string).collect();
        assert!(
            shown[0].starts_with("row 1, column colour: unknown column"),
            "{shown:?}"
        );
        assert!(shown[1].contains("required column 'kind'"), "{shown:?}");
        assert_eq!(shown[2], "row 2: 2 columns, but the header has 3");
        assert!(read_table("", DEVICE_COLUMNS, &[]).unwrap_err()[0]
            .reason
            .contains("empty"));
    }

    #[test]
    fn encodings() {
        let kanji = "user,name\nu001,山田太郎\n";
        let (t, enc) = decode(kanji.as_bytes(), TextEncoding::Auto).unwrap();
        assert_eq!((t.as_str(), enc), (kanji, "UTF-8"));
        let bom = [b"\xEF\xBB\xBF".as_slice(), kanji.as_bytes()].concat();
        assert_eq!(decode(&bom, TextEncoding::Auto).unwrap().0, kanji);
        let (sjis, _, _) = encoding_rs::SHIFT_JIS.encode(kanji);
        assert!(std::str::from_utf8(&sjis).is_err());
        let (t, enc) = decode(&sjis, TextEncoding::Auto).unwrap();
        assert_eq!((t.as_str(), enc), (kanji, "Shift_JIS"));
        assert_eq!(decode(&sjis, TextEncoding::ShiftJis).unwrap().0, kanji);
        let e = decode(&sjis, TextEncoding::Utf8).unwrap_err();
        assert_eq!(e.row, 2);
        // 0x81 0x20 is not a Shift_JIS character: reported on its row.
        let e = decode(b"a\nb\n\x81\x20\n", TextEncoding::Auto).unwrap_err();
        assert_eq!(e.row, 3, "{e}");
        assert!("cp932".parse::<TextEncoding>().is_ok());
        assert!("latin1".parse::<TextEncoding>().is_err());
    }

    #[test]
    fn device_rows_are_checked_completely() {
        let csv = "id,tier,kind,capabilities,location\n\
                   lg-1,lgwan,desktop,card;face,2F 市民課\n\
                   lg-1,lgwan,desktop,,\n\
                   ,moon,tablet,laser,x\n";
        let err = parse_devices(csv, false).unwrap_err();
        let shown: Vec<String> = err.iter().map(Problem::to_string).collect();
        assert_eq!(
            shown[0],
            "row 3, column id: device 'lg-1' is already in row 2"
        );
        assert_eq!(shown[1], "row 4, column id: device id empty");
        assert!(shown[2].starts_with("row 4, column tier:"), "{shown:?}");
        assert!(shown[3].starts_with("row 4, column kind:"), "{shown:?}");
        assert!(
            shown[4].starts_with("row 4, column capabilities:"),
            "{shown:?}"
        );
        let ok = parse_devices(
            "ID, Tier ,kind,capabilities,location\nlg-1,lgwan,desktop,card; face,2F 市民課\n",
            false,
        )
        .unwrap();
        assert_eq!(ok[0].row, 2);
        assert_eq!(ok[0].device.location, "2F 市民課");
        assert!(ok[0].device.capabilities.face && ok[0].device.capabilities.card);
    }

    #[test]
    fn device_toml() {
        let text = r#"
[[device]]
id = "mn-desk-01"
tier = "mynumber"
kind = "desktop"
capabilities = ["card", "vein"]
location = "1F 戸籍"

[[device]]
id = "x"
tier = "lgwan"
kind = "toaster"
"#;
        let err = parse_devices(text, true).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!((err[0].row, err[0].column.as_str()), (2, "kind"));
        assert_eq!(
            err[0].to_string(),
            "device 2 (id 'x'), key kind: unknown device kind 'toaster' (expected one of: desktop, shared, mobile, telework, vdi)"
        );
        let err = parse_devices("[[device]]\nid = 'a'\ncolour = 1\n", true).unwrap_err();
        assert_eq!(
            err[0].to_string(),
            "device 1 (id 'a'), key colour: unknown key; known keys: id, tier, kind, capabilities, location"
        );
        let ok = parse_devices(&text.replace("toaster", "vdi"), true).unwrap();
        assert_eq!(ok.len(), 2);
        let mut changed = ok[1].device.clone();
        changed.location = "B1".into();
        let d = diff_devices(&ok, &[ok[0].device.clone(), changed.clone()]);
        assert_eq!(d[0].1, Change::Unchanged);
        assert_eq!(d[1].1, Change::Changed);
        assert_eq!(device_changes(&changed, &ok[1].device), ["location"]);
        assert_eq!(diff_devices(&ok, &[])[0].1, Change::Added);
    }

    #[test]
    fn every_toml_problem_names_its_device_and_key() {
        let text = r#"
[[device]]
id = "lg-1"
tier = "lgwan"
kind = "desktop"
capabilities = "card"
colour = "red"

[[device]]
tier = 3
kind = "vdi"

[[device]]
id = "lg-1"
tier = "moon"
kind = "desktop"
location = "1F"
"#;
        let shown: Vec<String> = parse_devices(text, true)
            .unwrap_err()
            .iter()
            .map(Problem::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "device 1 (id 'lg-1'), key colour: unknown key; known keys: id, tier, kind, capabilities, location",
                "device 1 (id 'lg-1'), key capabilities: must be an array of strings such as [\"card\", \"face\"], not \"card\"",
                "device 2, key id: missing (required)",
                "device 2, key tier: must be a string, not an integer",
                "device 3 (id 'lg-1'), key id: device 'lg-1' is already in device 1",
                "device 3 (id 'lg-1'), key tier: unknown tier 'moon' (expected one of: mynumber, lgwan, internet, telework)",
            ]
        );
        // Not TOML at all: where the parser stopped.
        let err = parse_devices("[[device]]\nid = \"a\"\ntier = lgwan\n", true).unwrap_err();
        assert_eq!(err.len(), 1);
        let shown = err[0].to_string();
        assert!(
            shown.starts_with("not a valid TOML file at line 3, column 8:")
                && !shown.contains('\n'),
            "{shown}"
        );
        let err = parse_devices("device = 1\nextra = true\n", true).unwrap_err();
        let shown: Vec<String> = err.iter().map(Problem::to_string).collect();
        assert!(
            shown.iter().any(|s| s.contains("top-level key 'extra'")),
            "{shown:?}"
        );
        assert!(
            shown.iter().any(|s| s.contains("'device' is an integer")),
            "{shown:?}"
        );
    }

    #[test]
    fn an_unknown_column_does_not_hide_the_rows_problems() {
        // A quoted cell spanning two lines before the bad rows: their numbers hold.
        let csv = "id,tier,colour,kind,location\n\
                   lg-1,lgwan,red,desktop,\"2F\n east\"\n\
                   lg-2,moon,blue,desktop,\n\
                   lg-3,lgwan,green\n\
                   lg-1,lgwan,red,toaster,\n";
        let shown: Vec<String> = parse_devices(csv, false)
            .unwrap_err()
            .iter()
            .map(Problem::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "row 1, column colour: unknown column 'colour' (column 3); known columns: id, tier, kind, capabilities, location",
                "row 2, column location: contains a line break or control character",
                "row 4, column tier: unknown tier 'moon' (expected one of: mynumber, lgwan, internet, telework)",
                "row 5: 3 columns, but the header has 5",
                "row 6, column id: device 'lg-1' is already in row 2",
                "row 6, column kind: unknown device kind 'toaster' (expected one of: desktop, shared, mobile, telework, vdi)",
            ]
        );
        // A repeated column: the rows are checked on its first occurrence.
        let shown: Vec<String> = parse_devices("id,tier,tier,kind\n,lgwan,x,desktop\n", false)
            .unwrap_err()
            .iter()
            .map(Problem::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "row 1, column tier: the column appears twice in the header",
                "row 2, column id: device id empty"
            ]
        );
        // A missing required column is named once; rows without it are not checked.
        let err = parse_devices("id,tier,colour\nlg-1,lgwan,red\n", false).unwrap_err();
        let shown: Vec<String> = err.iter().map(Problem::to_string).collect();
        assert_eq!(shown.len(), 2, "{shown:#?}");
        assert!(shown[1].contains("required column 'kind'"), "{shown:#?}");
        // The header's problems alone: the other rows are valid.
        let err =
            parse_devices("id,tier,kind,colour\nlg-1,lgwan,desktop,red\n", false).unwrap_err();
        assert_eq!(err.len(), 1, "{err:?}");
    }
}
