//! One self-contained HTML page per report: inline CSS and SVG charts, no scripts,
//! fonts or images from anywhere, so it opens on an isolated tier's PC and can be
//! attached to an e-mail as it is.

use std::fmt::Write as _;

use sekisho_gateway::messages::Locale;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page being written: sections of headings, paragraphs, tables and charts.
pub struct Page {
    body: String,
    title: String,
    locale: Locale,
}

impl Page {
    pub fn new(title: &str, locale: Locale) -> Page {
        Page {
            body: String::new(),
            title: title.to_string(),
            locale,
        }
    }

    pub fn heading(&mut self, text: &str) -> &mut Self {
        let _ = writeln!(self.body, "<h2>{}</h2>", escape(text));
        self
    }

    pub fn paragraph(&mut self, text: &str) -> &mut Self {
        let _ = writeln!(self.body, "<p>{}</p>", escape(text));
        self
    }

    pub fn table<S: AsRef<str>>(&mut self, header: &[&str], rows: &[Vec<S>]) -> &mut Self {
        self.body.push_str("<table><thead><tr>");
        for h in header {
            let _ = write!(self.body, "<th>{}</th>", escape(h));
        }
        self.body.push_str("</tr></thead><tbody>\n");
        for row in rows {
            self.body.push_str("<tr>");
            for cell in row {
                let _ = write!(self.body, "<td>{}</td>", escape(cell.as_ref()));
            }
            self.body.push_str("</tr>\n");
        }
        self.body.push_str("</tbody></table>\n");
        self
    }

    /// Horizontal bars, one per label, longest first as given.
    pub fn bar_chart(&mut self, title: &str, bars: &[(String, u64)]) -> &mut Self {
        self.body.push_str(&horizontal_bars(title, bars));
        self
    }

    /// Vertical bars for a fixed series such as the 24 hours of a day.
    pub fn column_chart(&mut self, title: &str, columns: &[(String, u64)]) -> &mut Self {
        self.body.push_str(&columns_svg(title, columns));
        self
    }

    pub fn finish(&self) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title>\
<style>{STYLE}</style></head><body><h1>{title}</h1>\n{body}\
<footer>sekisho {version} — {generated}</footer></body></html>\n",
            lang = self.locale.tag(),
            title = escape(&self.title),
            body = self.body,
            version = env!("CARGO_PKG_VERSION"),
            generated = escape(&chrono::Local::now().format("%Y-%m-%d %H:%M").to_string()),
        )
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222;max-width:70em}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}\
th{background:#f0f0f0}td:not(:first-child){font-variant-numeric:tabular-nums}\
svg{display:block;margin:1em 0}svg text{font-family:sans-serif;font-size:12px}\
footer{margin-top:3em;color:#888;font-size:.8em}";

const BAR_COLOUR: &str = "#3b6ea8";
/// At most this many bars in one chart; the rest are summed into the last one.
const MAX_BARS: usize = 40;

fn capped(bars: &[(String, u64)]) -> Vec<(String, u64)> {
    if bars.len() <= MAX_BARS {
        return bars.to_vec();
    }
    let mut out = bars[..MAX_BARS - 1].to_vec();
    let rest: u64 = bars[MAX_BARS - 1..].iter().map(|(_, v)| v).sum();
    out.push((format!("(+{})", bars.len() - (MAX_BARS - 1)), rest));
    out
}

fn horizontal_bars(title: &str, bars: &[(String, u64)]) -> String {
    let bars = capped(bars);
    let max = bars.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let (label_w, bar_w, row_h) = (220u64, 420u64, 20u64);
    let height = 30 + row_h * bars.len() as u64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" role=\"img\" aria-label=\"{t}\">\
<text x=\"0\" y=\"16\" font-weight=\"bold\">{t}</text>\n",
        w = label_w + bar_w + 80,
        t = escape(title),
    );
    for (i, (label, value)) in bars.iter().enumerate() {
        let y = 28 + row_h * i as u64;
        let len = bar_w * value / max;
        let _ = writeln!(
            svg,
            "<text x=\"{lx}\" y=\"{ty}\" text-anchor=\"end\">{label}</text>\
<rect x=\"{label_w}\" y=\"{y}\" width=\"{len}\" height=\"{h}\" fill=\"{BAR_COLOUR}\"/>\
<text x=\"{vx}\" y=\"{ty}\">{value}</text>",
            lx = label_w - 6,
            ty = y + 13,
            label = escape(label),
            h = row_h - 4,
            vx = label_w + len + 4,
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn columns_svg(title: &str, columns: &[(String, u64)]) -> String {
    let max = columns.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let (col_w, plot_h) = (26u64, 160u64);
    let width = 40 + col_w * columns.len() as u64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{h}\" role=\"img\" aria-label=\"{t}\">\
<text x=\"0\" y=\"16\" font-weight=\"bold\">{t}</text>\n",
        h = plot_h + 70,
        t = escape(title),
    );
    let base = 30 + plot_h;
    for (i, (label, value)) in columns.iter().enumerate() {
        let x = 20 + col_w * i as u64;
        let len = plot_h * value / max;
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{len}\" fill=\"{BAR_COLOUR}\"><title>{label}: {value}</title></rect>\
<text x=\"{cx}\" y=\"{ly}\" text-anchor=\"middle\">{label}</text>",
            y = base - len,
            w = col_w - 4,
            cx = x + (col_w - 4) / 2,
            ly = base + 16,
            label = escape(label),
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_self_contained_and_escaped() {
        let mut p = Page::new("Report <1>", Locale::Ja);
        p.heading("a&b")
            .table(&["x"], &[vec!["<script>"]])
            .bar_chart("bars", &[("pc1".into(), 3), ("pc2".into(), 0)])
            .column_chart("hours", &[("0".into(), 1), ("1".into(), 5)]);
        let html = p.finish();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("lang=\"ja\""));
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
        assert!(html.contains("Report &lt;1&gt;"));
        for external in ["src=", "href=", "@import", "url("] {
            assert!(!html.contains(external), "{external} in {html}");
        }
        assert_eq!(html.matches("<svg").count(), 2);
    }

    #[test]
    fn long_charts_are_capped() {
        let bars: Vec<(String, u64)> = (0..100).map(|i| (format!("pc{i}"), 1)).collect();
        let c = capped(&bars);
        assert_eq!(c.len(), MAX_BARS);
        assert_eq!(c.last().unwrap(), &("(+61)".to_string(), 61));
    }
}
