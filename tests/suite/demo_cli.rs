//! `sekisho demo` as a newcomer runs it: the binary, a small town, `--out` files that
//! stand on their own (the report as text, JSON and an offline HTML page, the audit
//! trail that `sekisho audit verify` accepts, and the city to replay the day).

use crate::common;

use common::sekisho;

#[test]
fn demo_writes_its_report_trail_and_city() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("day");
    let out_s = out.display().to_string();
    let (code, stdout, stderr) = sekisho(
        &["demo", "--profile", "small", "--seed", "5", "--out", &out_s],
        "",
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    for f in [
        "report.txt",
        "report.json",
        "report.html",
        "audit.jsonl",
        "city.json",
    ] {
        let p = out.join(f);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(
            len > 0,
            "{} missing or empty\n{stdout}\n{stderr}",
            p.display()
        );
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("read"))
            .expect("report.json is JSON");
    assert!(report.is_object());
    let html = std::fs::read_to_string(out.join("report.html")).expect("read");
    assert!(html.contains("<svg") && !html.contains("<script"));
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    let text = std::fs::read_to_string(out.join("report.txt")).expect("read");
    assert!(
        stdout.contains(text.lines().next().unwrap_or("?")),
        "{stdout}"
    );

    let trail = out.join("audit.jsonl").display().to_string();
    let (code, o, e) = sekisho(&["audit", "verify", "--journal", &trail], "");
    assert_eq!(code, 0, "{o}{e}");
}
