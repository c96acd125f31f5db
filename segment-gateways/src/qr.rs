//! QR codes drawn with Unicode half blocks, for showing a TOTP enrolment URI in a
//! terminal so that a phone's authenticator app can scan it.

use qrcode::render::unicode::Dense1x2;
use qrcode::{EcLevel, QrCode};

/// Renders `text` as a QR code of Unicode half blocks (two modules per character
/// cell vertically), with the standard four-module quiet zone.
///
/// Light modules are drawn as blocks and dark ones as spaces, so the code reads
/// correctly on a terminal with a dark background (the usual case, and what
/// `qrencode -t UTF8` assumes); `invert` draws it for a light background.
pub fn render_qr(text: &str, invert: bool) -> Result<String, qrcode::types::QrError> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)?;
    let (dark, light) = if invert {
        (Dense1x2::Dark, Dense1x2::Light)
    } else {
        (Dense1x2::Light, Dense1x2::Dark)
    };
    Ok(code
        .render::<Dense1x2>()
        .dark_color(dark)
        .light_color(light)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_square_of_half_blocks() {
        let uri = "otpauth://totp/sekisho:u042?secret=JBSWY3DPEHPK3PXP&issuer=sekisho";
        let qr = render_qr(uri, false).unwrap();
        let lines: Vec<&str> = qr.lines().collect();
        let width = lines[0].chars().count();
        assert!(width >= 21 + 8, "{width}");
        assert!(lines.iter().all(|l| l.chars().count() == width));
        // Two modules per line, rounded up.
        assert_eq!(lines.len(), width.div_ceil(2));
        assert!(qr.contains('\u{2588}') || qr.contains('\u{2580}'));
        assert_ne!(qr, render_qr(uri, true).unwrap());
    }
}
