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
}

impl Problem {
    pub fn new(row: usize, column: impl Into<String>, reason: impl Into<String>) -> Problem {
        Problem {
            row,
            column: column.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.row, self.column.is_empty()) {
            (0, _) => write!(f, "{}", self.reason),
            (r, true) => write!(f, "row {r}: {}", self.reason),
            (r, false) => write!(f, "row {r}, column {}: {}", self.column, self.reason),
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
    let mut columns = Vec::with_capacity(header.fields.len());
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
        } else if columns.contains(&name) {
            problems.push(Problem::new(
                header.row,
                name.clone(),
                "the column appears twice in the header",
            ));
        }
        columns.push(name);
    }
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
        if rec.fields.len() != columns.len() {
            problems.push(Problem::new(
                rec.row,
                "",
                format!(
                    "{} columns, but the header has {}",
                    rec.fields.len(),
                    columns.len()
                ),
            ));
            continue;
        }
        let map = columns
            .iter()
            .cloned()
            .zip(rec.fields.iter().map(|f| f.trim().to_string()))
            .collect();
        rows.push((rec.row, map));
    }
    if problems.is_empty() {
        Ok(Table { columns, rows })
    } else {
        Err(problems)
    }
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

/// A device as written in a TOML file: `[[device]]` tables.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlDevices {
    #[serde(default)]
    device: Vec<TomlDevice>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlDevice {
    id: String,
    tier: String,
    kind: String,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    location: String,
}

/// Reads a device file: TOML when `toml` (an array of `[[device]]` tables, "row" N
/// being the N-th device), otherwise CSV with the [`DEVICE_COLUMNS`] (capabilities
/// `;`-separated). Every row is checked; any problem refuses the whole file.
pub fn parse_devices(text: &str, toml: bool) -> Result<Vec<DeviceRow>, Vec<Problem>> {
    let raw: Vec<(usize, String, String, String, Vec<String>, String)> = if toml {
        let parsed: TomlDevices = ::toml::from_str(text).map_err(|e| {
            vec![Problem::new(
                0,
                "",
                format!("not a valid device TOML file: {}", e.message()),
            )]
        })?;
        parsed
            .device
            .into_iter()
            .enumerate()
            .map(|(i, d)| (i + 1, d.id, d.tier, d.kind, d.capabilities, d.location))
            .collect()
    } else {
        let table = read_table(text, DEVICE_COLUMNS, &["id", "tier", "kind"])?;
        table
            .rows
            .into_iter()
            .map(|(row, mut m)| {
                let mut take = |k: &str| m.remove(k).unwrap_or_default();
                let caps = split_list(&take("capabilities"));
                (
                    row,
                    take("id"),
                    take("tier"),
                    take("kind"),
                    caps,
                    take("location"),
                )
            })
            .collect()
    };
    let mut problems = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut rows = Vec::with_capacity(raw.len());
    for (row, id, tier, kind, caps, location) in raw {
        let before = problems.len();
        let id = id.trim().to_string();
        if let Err(why) = check_id(&id) {
            problems.push(Problem::new(row, "id", format!("device id {why}")));
        } else if let Some(first) = seen.insert(id.clone(), row) {
            problems.push(Problem::new(
                row,
                "id",
                format!("device '{id}' is already in row {first}"),
            ));
        }
        let tier: Option<Tier> = match tier.trim().parse() {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(Problem::new(row, "tier", e.to_string()));
                None
            }
        };
        let kind: Option<DeviceKind> = match kind.trim().parse() {
            Ok(k) => Some(k),
            Err(e) => {
                problems.push(Problem::new(row, "kind", e.to_string()));
                None
            }
        };
        let capabilities = match Capabilities::parse_names(caps.iter().map(|c| c.trim())) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(Problem::new(row, "capabilities", e.to_string()));
                None
            }
        };
        if location.chars().any(|c| c.is_control() && c != '\t') {
            problems.push(Problem::new(
                row,
                "location",
                "contains a line break or control character",
            ));
        }
        if problems.len() != before {
            continue;
        }
        if let (Some(tier), Some(kind), Some(capabilities)) = (tier, kind, capabilities) {
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
        let err = parse_devices("[[device]]\nid = 'a'\ncolour = 1\n", true).unwrap_err();
        assert!(err[0].reason.contains("colour"), "{err:?}");
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
}
