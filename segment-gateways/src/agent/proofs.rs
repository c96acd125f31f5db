//! Turning what was presented into proofs for one challenge: which option to answer,
//! and signing the card and biometric nonces.

use sekisho_policy_engine::{Factor, FactorSet};
use sekisho_proto::v1 as pb;

use super::presented::Presented;
use super::AgentError;
use crate::factors::biometric::{sign_capture, BiometricFactor};
use crate::factors::card::sign_nonce;

/// The nonce key a factor's proof signs, if it signs one: `card` for both card
/// factors, `face`, `vein`.
fn nonce_key(factor: Factor) -> Option<&'static str> {
    match factor {
        Factor::Card | Factor::MynumberCard => Some("card"),
        Factor::Face => Some("face"),
        Factor::Vein => Some("vein"),
        _ => None,
    }
}

/// An option of a challenge as a factor set; `None` when it names a factor this
/// agent does not know (a newer gateway), which the agent therefore cannot cover.
fn option_set(option: &pb::FactorSet) -> Option<FactorSet> {
    FactorSet::parse_names(&option.factors).ok()
}

/// The first option of `challenge` (they come in the order to offer them) whose
/// factors are all in `covered`.
pub fn choose_option(challenge: &pb::Challenge, covered: FactorSet) -> Option<FactorSet> {
    challenge
        .options
        .iter()
        .filter_map(option_set)
        .find(|set| !set.is_empty() && set.is_subset(covered))
}

/// The factors to prove when no option is covered: everything presented that can
/// be proven against this challenge (a card or capture needs its nonce), so that
/// the gateway answers with its own specific denial instead of the agent guessing.
pub fn fallback_factors(presented: &Presented, challenge: &pb::Challenge) -> FactorSet {
    presented
        .covered()
        .iter()
        .filter(|f| nonce_key(*f).is_none_or(|k| challenge.nonces.contains_key(k)))
        .collect()
}

/// What to send for `challenge`: the chosen option (or `None` for the fallback of
/// [`fallback_factors`]) and its proofs.
pub fn select_proofs(
    presented: &Presented,
    challenge: &pb::Challenge,
) -> Result<(Option<FactorSet>, Vec<pb::Proof>), AgentError> {
    match choose_option(challenge, presented.covered()) {
        Some(set) => Ok((
            Some(set),
            proofs_for(presented, challenge, &set.iter().collect::<Vec<_>>())?,
        )),
        None => {
            let set = fallback_factors(presented, challenge);
            Ok((
                None,
                proofs_for(presented, challenge, &set.iter().collect::<Vec<_>>())?,
            ))
        }
    }
}

fn absent(factor: Factor) -> AgentError {
    AgentError::NotPresented {
        factor: factor.name(),
    }
}

/// The proofs of `factors` for `challenge`, one per thing presented (`card` and
/// `mynumber_card` share one card proof), in factor-name order.
///
/// The card signs the challenge's `card` nonce with the card key; a face or vein
/// capture signs (nonce, vector) with the capture device key. A factor that was not
/// presented (or presented empty), or whose nonce the challenge lacks, is an error
/// naming it.
pub fn proofs_for(
    presented: &Presented,
    challenge: &pb::Challenge,
    factors: &[Factor],
) -> Result<Vec<pb::Proof>, AgentError> {
    let wanted: FactorSet = factors.iter().copied().collect();
    let nonce = |factor: Factor| -> Result<&[u8], AgentError> {
        let key = nonce_key(factor).unwrap_or(factor.name());
        challenge
            .nonces
            .get(key)
            .map(Vec::as_slice)
            .ok_or(AgentError::MissingNonce { factor: key })
    };
    let biometric = |factor: Factor, which: BiometricFactor, capture: Option<&super::Capture>| {
        let capture = capture.ok_or_else(|| absent(factor))?;
        let signature = sign_capture(
            &capture.capture_key_pem,
            which,
            nonce(factor)?,
            &capture.vector,
        )
        .map_err(|e| AgentError::Sign {
            factor: factor.name(),
            why: e.to_string(),
        })?;
        Ok::<_, AgentError>(pb::BiometricProof {
            vector: capture.vector.clone(),
            signature,
        })
    };
    // An empty secret is none at all: the gateway refuses an empty proof as a bad
    // request, so say so here, before the challenge is spent on it.
    let secret = |factor: Factor, value: &Option<String>| {
        value
            .clone()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| absent(factor))
    };
    use pb::proof::Proof as P;
    let mut proofs = Vec::with_capacity(wanted.presented_count() as usize);
    let mut card_done = false;
    for factor in wanted.iter() {
        let proof = match factor {
            Factor::Card | Factor::MynumberCard => {
                if card_done {
                    continue;
                }
                card_done = true;
                let card = presented.card.as_ref().ok_or_else(|| absent(factor))?;
                let signature =
                    sign_nonce(&card.key_pem, nonce(factor)?).map_err(|e| AgentError::Sign {
                        factor: "card",
                        why: e.to_string(),
                    })?;
                P::Card(pb::CardProof {
                    certificate: card.certificate_der.clone(),
                    signature,
                })
            }
            Factor::Face => P::Face(biometric(
                factor,
                BiometricFactor::Face,
                presented.face.as_ref(),
            )?),
            Factor::Vein => P::Vein(biometric(
                factor,
                BiometricFactor::Vein,
                presented.vein.as_ref(),
            )?),
            Factor::Password => P::Password(secret(factor, &presented.password)?),
            Factor::Pin => P::Pin(secret(factor, &presented.pin)?),
            Factor::Totp => P::Totp(secret(factor, &presented.totp)?),
            Factor::EmergencyOtp => P::EmergencyOtp(secret(factor, &presented.emergency_otp)?),
        };
        proofs.push(pb::Proof { proof: Some(proof) });
    }
    Ok(proofs)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::agent::{Capture, CardKey};
    use crate::factors::biometric::{verify_capture, DeviceKey};

    fn challenge(options: &[&[&str]], nonces: &[&str]) -> pb::Challenge {
        pb::Challenge {
            challenge_id: "c1".into(),
            options: options
                .iter()
                .map(|o| pb::FactorSet {
                    factors: o.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
            nonces: nonces
                .iter()
                .map(|k| (k.to_string(), format!("nonce-{k}").into_bytes()))
                .collect::<HashMap<_, _>>(),
            action: "logon".into(),
            ..pb::Challenge::default()
        }
    }

    fn set(names: &[&str]) -> FactorSet {
        FactorSet::parse_names(names).unwrap()
    }

    fn card() -> CardKey {
        CardKey {
            certificate_der: b"cert".to_vec(),
            key_pem: crate::factors::card::testing::RSA_KEY_PEM.to_string(),
        }
    }

    fn kinds(proofs: &[pb::Proof]) -> Vec<&'static str> {
        use pb::proof::Proof as P;
        proofs
            .iter()
            .map(|p| match p.proof.as_ref().unwrap() {
                P::Password(_) => "password",
                P::Pin(_) => "pin",
                P::Totp(_) => "totp",
                P::EmergencyOtp(_) => "emergency_otp",
                P::Card(_) => "card",
                P::Face(_) => "face",
                P::Vein(_) => "vein",
            })
            .collect()
    }

    #[test]
    fn first_covered_option_wins() {
        let c = challenge(
            &[&["totp"], &["card", "password"], &["face", "password"]],
            &["card", "face"],
        );
        assert_eq!(
            choose_option(&c, set(&["password", "card", "mynumber_card"])),
            Some(set(&["card", "password"]))
        );
        assert_eq!(
            choose_option(&c, set(&["password", "face", "totp"])),
            Some(set(&["totp"]))
        );
        assert_eq!(choose_option(&c, set(&["password"])), None);
        assert_eq!(choose_option(&c, FactorSet::EMPTY), None);
    }

    #[test]
    fn a_card_covers_a_mynumber_option_and_unknown_factors_never_match() {
        let c = challenge(
            &[&["fingerprint"], &["card", "mynumber_card", "password"]],
            &["card"],
        );
        let p = Presented {
            password: Some("pw".into()),
            card: Some(card()),
            ..Presented::default()
        };
        let (chosen, proofs) = select_proofs(&p, &c).unwrap();
        assert_eq!(chosen, Some(set(&["card", "mynumber_card", "password"])));
        // One card proof for the two card factors.
        assert_eq!(kinds(&proofs), ["card", "password"]);
    }

    #[test]
    fn exactly_the_chosen_option_is_sent() {
        let c = challenge(&[&["card", "password"], &["password", "totp"]], &["card"]);
        let p = Presented {
            password: Some("pw".into()),
            totp: Some("123456".into()),
            pin: Some("1234".into()),
            ..Presented::default()
        };
        let (chosen, proofs) = select_proofs(&p, &c).unwrap();
        assert_eq!(chosen, Some(set(&["password", "totp"])));
        assert_eq!(kinds(&proofs), ["password", "totp"]);
    }

    #[test]
    fn nothing_covered_sends_everything_provable() {
        let c = challenge(&[&["card", "vein"]], &["card", "vein"]);
        let p = Presented {
            password: Some("pw".into()),
            face: Some(Capture {
                vector: vec![1.0, 0.0],
                capture_key_pem: "unused".into(),
            }),
            card: Some(card()),
            ..Presented::default()
        };
        let (chosen, proofs) = select_proofs(&p, &c).unwrap();
        assert_eq!(chosen, None);
        // No face nonce was issued, so no face proof can be made.
        assert_eq!(kinds(&proofs), ["card", "password"]);
        // Nothing presented at all: an empty answer the gateway will refuse.
        let (chosen, proofs) = select_proofs(&Presented::default(), &c).unwrap();
        assert_eq!((chosen, proofs.len()), (None, 0));
    }

    #[test]
    fn missing_nonce_and_missing_factor_are_named() {
        let c = challenge(&[&["card", "password"]], &[]);
        let p = Presented {
            password: Some("pw".into()),
            card: Some(card()),
            ..Presented::default()
        };
        let err = proofs_for(&p, &c, &[Factor::MynumberCard]).unwrap_err();
        assert!(
            matches!(err, AgentError::MissingNonce { factor: "card" }),
            "{err}"
        );
        assert!(err.to_string().contains("card"));
        let err = proofs_for(&p, &c, &[Factor::Totp]).unwrap_err();
        assert!(
            matches!(err, AgentError::NotPresented { factor: "totp" }),
            "{err}"
        );
        // An empty PIN (enter pressed at the prompt) is not sent as a proof.
        let p = Presented {
            pin: Some(String::new()),
            ..p
        };
        let err = proofs_for(&p, &c, &[Factor::Pin]).unwrap_err();
        assert!(
            matches!(err, AgentError::NotPresented { factor: "pin" }),
            "{err}"
        );
    }

    #[test]
    fn signatures_verify_against_the_challenge_nonces() {
        let c = challenge(&[&["face", "vein"]], &["face", "vein"]);
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key_pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            data_encoding::BASE64.encode(pkcs8.as_ref())
        );
        let public = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(ring::signature::KeyPair::public_key(&public).as_ref());
        let device = DeviceKey::from_spki_der(&spki).unwrap();
        let capture = |v: Vec<f32>| Capture {
            vector: v,
            capture_key_pem: key_pem.clone(),
        };
        let p = Presented {
            face: Some(capture(vec![0.6, 0.8])),
            vein: Some(capture(vec![1.0, 0.0, 0.0])),
            ..Presented::default()
        };
        let (_, proofs) = select_proofs(&p, &c).unwrap();
        use pb::proof::Proof as P;
        for proof in &proofs {
            let (which, b) = match proof.proof.as_ref().unwrap() {
                P::Face(b) => (BiometricFactor::Face, b),
                P::Vein(b) => (BiometricFactor::Vein, b),
                other => panic!("unexpected {other:?}"),
            };
            let nonce = &c.nonces[which.name()];
            verify_capture(&device, which, nonce, &b.vector, &b.signature).unwrap();
            // A face capture is never valid as a vein capture.
            let other = match which {
                BiometricFactor::Face => BiometricFactor::Vein,
                BiometricFactor::Vein => BiometricFactor::Face,
            };
            assert!(verify_capture(&device, other, nonce, &b.vector, &b.signature).is_err());
        }
        assert_eq!(kinds(&proofs), ["face", "vein"]);
    }
}
