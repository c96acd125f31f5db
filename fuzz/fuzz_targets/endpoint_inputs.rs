//! What an endpoint or an enrolling administrator hands over as text or bytes:
//! feature vectors and template files, TOTP seeds, emergency codes, capture-device
//! public keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sekisho_gateway::agent::{parse_templates, parse_vector};
use sekisho_gateway::factors::biometric::DeviceKey;
use sekisho_gateway::factors::emergency_otp;
use sekisho_gateway::import::decode_seed;

fuzz_target!(|data: &[u8]| {
    let _ = DeviceKey::from_spki_der(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = parse_vector(text) {
        assert!(v.iter().all(|x| x.is_finite()), "a parsed vector is finite");
    }
    let _ = parse_templates(text);
    let _ = decode_seed(text);
    if let Some(code) = emergency_otp::normalize(text) {
        let _ = emergency_otp::hash_code(&code);
    }
    let _ = DeviceKey::from_pem(text);
});
