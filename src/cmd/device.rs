//! `sekisho device register`: a terminal in the engine's entities and on its tier's
//! gateway, and optionally its client certificate from the development CA.
//! `sekisho device import` and `device list`: many terminals at once, in and from
//! the engine's store.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sekisho_gateway::factors::biometric::DeviceKey;
use sekisho_policy_engine::entities::{DeviceRecord, EntityBatch, EntityDeletion};
use sekisho_policy_engine::factor::Capabilities;
use sekisho_policy_engine::import::{
    decode, device_changes, diff_devices, parse_devices, Change, Problem, DEVICE_COLUMNS,
};
use sekisho_policy_engine::pki::{PkiFiles, Usage};
use sekisho_policy_engine::store::{redact_url, Store};
use sekisho_policy_engine::{DeviceKind, Tier};
use sekisho_proto::v1 as pb;
use sekisho_proto::v1::gateway_admin_client::GatewayAdminClient;
use sekisho_proto::v1::policy_admin_client::PolicyAdminClient;

use crate::cli::{DeviceImportArgs, DeviceListArgs, DeviceRegisterArgs, EngineStoreArgs};
use crate::client::GatewayArgs;
use crate::Outcome;

/// A device id that is also safe as a file name (it names the certificate files).
fn check_file_safe(id: &str) -> Result<()> {
    if id.is_empty()
        || id == "."
        || id == ".."
        || id.contains(['/', '\\', '\0'])
        || id.starts_with('-')
    {
        bail!("device id '{id}' cannot name a certificate file (no '/', '\\', leading '-', '.' or '..')");
    }
    Ok(())
}

/// Reads the capture device's public key (PEM) as SubjectPublicKeyInfo DER, checking
/// it is a key the gateway can verify with.
fn capture_key_der(path: &Path) -> Result<Vec<u8>> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the capture key {}", path.display()))?;
    let key = DeviceKey::from_pem(&pem).with_context(|| format!("{}", path.display()))?;
    Ok(key.to_spki_der().to_vec())
}

/// Issues (once) the device's client certificate from the development CA in
/// `pki_dir` and copies it to `dir/ID.pem` and `dir/ID-key.pem`, keeping files
/// already there. Returns the two paths and whether they were written now.
fn issue_cert(id: &str, pki_dir: &Path, dir: &Path) -> Result<(PathBuf, PathBuf, bool)> {
    let cert = dir.join(format!("{id}.pem"));
    let key = dir.join(format!("{id}-key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key, false));
    }
    let pki = PkiFiles {
        dir: pki_dir.to_path_buf(),
    };
    if !pki.ca().exists() {
        bail!(
            "no development CA in {} (start the engine once, or give --pki-dir)",
            pki_dir.display()
        );
    }
    let (issued_cert, issued_key) = pki
        .ensure_leaf(&format!("device-{id}"), id, &[], Usage::Client)
        .with_context(|| format!("cannot issue a certificate for {id}"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (from, to) in [(&issued_cert, &cert), (&issued_key, &key)] {
        if from != to {
            // fs::copy keeps the source's permissions: the key stays owner-only.
            std::fs::copy(from, to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        }
    }
    Ok((cert, key, true))
}

pub async fn deregister(device: &str, gateway: &GatewayArgs) -> Result<Outcome> {
    let r = GatewayAdminClient::new(gateway.connect().await?)
        .deregister_device(pb::DeregisterDeviceRequest {
            device: device.to_string(),
        })
        .await
        .map_err(|s| super::refused("gateway", s))?
        .into_inner();
    println!(
        "{device}: deregistered{}",
        if r.ended_session {
            "; its open session was ended"
        } else {
            ""
        }
    );
    Ok(Outcome::Ok)
}

pub async fn register(args: &DeviceRegisterArgs) -> Result<Outcome> {
    let tier: Tier = args.tier.parse()?;
    let kind: DeviceKind = args.kind.parse()?;
    let capabilities = Capabilities::parse_names(
        args.capabilities
            .iter()
            .map(|c| c.trim())
            .filter(|c| !c.is_empty()),
    )?;
    let capture_key = match &args.capture_key {
        Some(path) => capture_key_der(path)?,
        None => Vec::new(),
    };
    if !capture_key.is_empty() && !capabilities.face && !capabilities.vein {
        bail!("--capture-key is for a device with a face or vein reader: add --capabilities face or vein");
    }
    if args.issue_cert.is_some() {
        check_file_safe(&args.id)?;
    }
    let device = pb::Device {
        id: args.id.clone(),
        tier: tier.name().to_string(),
        kind: kind.name().to_string(),
        capabilities: capabilities.names().into_iter().map(String::from).collect(),
        location: args.location.clone(),
    };

    if !args.gateway_only {
        let mut engine = PolicyAdminClient::new(args.engine.connect().await?);
        engine
            .upsert_entities(pb::UpsertEntitiesRequest {
                devices: vec![device.clone()],
                ..pb::UpsertEntitiesRequest::default()
            })
            .await
            .map_err(|s| super::refused("engine", s))?;
        println!(
            "{}: saved in the engine's entities ({tier}, {kind})",
            args.id
        );
    }

    let gateway = GatewayArgs::new(
        &args.gateway,
        &args.engine.ca,
        &args.engine.cert,
        &args.engine.key,
    );
    let r = GatewayAdminClient::new(gateway.connect().await?)
        .register_device(pb::RegisterDeviceRequest {
            device: Some(device),
            capture_key,
        })
        .await
        .map_err(|s| super::refused("gateway", s))?
        .into_inner();
    println!(
        "{}: {} on the {tier} gateway",
        args.id,
        if r.created { "registered" } else { "updated" }
    );

    if let Some(dir) = &args.issue_cert {
        let (cert, key, new) = issue_cert(&args.id, &args.pki_dir, dir)?;
        println!(
            "{}: certificate {} and key {}{}",
            args.id,
            cert.display(),
            key.display(),
            if new { "" } else { " (already there, kept)" }
        );
    }
    Ok(Outcome::Ok)
}

/// Opens the engine's store for entity work; a SQLite file must already exist (a
/// typo in the path must not create an empty store).
async fn open_store(args: &EngineStoreArgs) -> Result<Store> {
    if let Some(rest) = args.store.strip_prefix("sqlite://") {
        let path = rest.split('?').next().unwrap_or(rest);
        if !path.is_empty() && !Path::new(path).is_file() {
            bail!("no engine store at {path} (give --store, or run where the engine keeps sekisho-engine.db)");
        }
    }
    Store::open(&args.store, &args.tenant)
        .await
        .with_context(|| format!("the engine's store {}", redact_url(&args.store)))
}

/// Device import writes the engine's store directly, as `audit import` does: the
/// comparison that makes a re-import change nothing needs the stored devices, which
/// only the store can give, and a running engine picks the change up by its entity
/// generation within `poll_interval_secs`.
pub async fn import(args: &DeviceImportArgs) -> Result<Outcome> {
    let file = &args.file;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let is_toml = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let text = if is_toml {
        String::from_utf8(bytes).map_err(|_| {
            super::users::refuse(file, &[Problem::new(0, "", "a TOML file must be UTF-8")])
        })?
    } else {
        decode(&bytes, args.encoding)
            .map_err(|p| super::users::refuse(file, &[p]))?
            .0
    };
    let rows = parse_devices(&text, is_toml).map_err(|p| super::users::refuse(file, &p))?;
    if rows.is_empty() {
        bail!("{}: no devices in the file", file.display());
    }
    let store = open_store(&args.store).await?;
    let current = store
        .load_entities()
        .await
        .context("reading the devices in the engine's store")?
        .devices;
    let by_id: std::collections::HashMap<&str, &DeviceRecord> =
        current.iter().map(|d| (d.id.as_str(), d)).collect();
    let diff = diff_devices(&rows, &current);
    let mut write = Vec::new();
    let (mut added, mut changed, mut unchanged) = (0, 0, 0);
    let what = if is_toml { "device" } else { "row" };
    for (row, change) in &diff {
        let d = &row.device;
        match change {
            Change::Added => {
                added += 1;
                println!(
                    "+ {} ({what} {}) added: {}, {}, [{}] {}",
                    d.id,
                    row.row,
                    d.tier,
                    d.kind,
                    d.capabilities.names().join(","),
                    d.location
                );
            }
            Change::Changed => {
                changed += 1;
                let fields = by_id
                    .get(d.id.as_str())
                    .map(|old| device_changes(old, d).join(", "))
                    .unwrap_or_default();
                println!("~ {} ({what} {}) changed: {fields}", d.id, row.row);
            }
            Change::Unchanged => unchanged += 1,
        }
        if *change != Change::Unchanged {
            write.push(d.clone());
        }
    }
    if !args.dry_run && !write.is_empty() {
        store
            .apply_entities(
                &EntityBatch {
                    devices: write,
                    ..EntityBatch::default()
                },
                &EntityDeletion::default(),
            )
            .await
            .context("writing the devices to the engine's store")?;
    }
    store.close().await;
    let verb = if args.dry_run { "would be " } else { "" };
    println!(
        "{added} {verb}added, {changed} {verb}changed, {unchanged} unchanged{}",
        if args.dry_run {
            " (dry run: nothing was written)"
        } else {
            ""
        }
    );
    if !args.dry_run && added + changed > 0 {
        eprintln!("register them on their tier's gateway too (sekisho device register … --gateway-only) so their certificates are accepted");
    }
    Ok(Outcome::Ok)
}

pub async fn list(args: &DeviceListArgs) -> Result<Outcome> {
    let tier: Option<Tier> = args.tier.as_deref().map(str::parse).transpose()?;
    let kind: Option<DeviceKind> = args.kind.as_deref().map(str::parse).transpose()?;
    let store = open_store(&args.store).await?;
    let devices = store
        .load_entities()
        .await
        .context("reading the devices in the engine's store")?
        .devices;
    store.close().await;
    let rows: Vec<Vec<String>> = devices
        .iter()
        .filter(|d| tier.is_none_or(|t| d.tier == t) && kind.is_none_or(|k| d.kind == k))
        .map(|d| {
            vec![
                d.id.clone(),
                d.tier.to_string(),
                d.kind.to_string(),
                d.capabilities.names().join(";"),
                d.location.clone(),
            ]
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if args.csv {
        use std::io::Write;
        writeln!(out, "{}", DEVICE_COLUMNS.join(","))?;
        for r in &rows {
            let cells: Vec<String> = r.iter().map(|c| csv_cell(c)).collect();
            writeln!(out, "{}", cells.join(","))?;
        }
    } else {
        crate::report::print_table(&mut out, DEVICE_COLUMNS, &rows)?;
        eprintln!("{} device(s)", rows.len());
    }
    Ok(Outcome::Ok)
}

/// A CSV cell, quoted when it must be.
fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_that_are_not_file_names_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x", "-rf", "a\\b"] {
            assert!(check_file_safe(bad).is_err(), "{bad:?}");
        }
        for good in ["lgwan-desk-17", "mn.counter_3"] {
            check_file_safe(good).unwrap();
        }
    }

    #[test]
    fn issues_once_and_keeps_existing_files() {
        let pki_dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = issue_cert("d1", pki_dir.path(), out.path()).unwrap_err();
        assert!(format!("{err:#}").contains("no development CA"));
        PkiFiles::ensure(pki_dir.path(), &["localhost"]).unwrap();
        let (cert, key, new) = issue_cert("d1", pki_dir.path(), out.path()).unwrap();
        assert!(new);
        assert_eq!(cert, out.path().join("d1.pem"));
        assert_eq!(key, out.path().join("d1-key.pem"));
        let der = sekisho_gateway::agent::read_certificate_der(&cert).unwrap();
        assert_eq!(
            sekisho_policy_engine::pki::common_name(&der).as_deref(),
            Some("d1")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "device key readable by others: {mode:o}");
        let before = std::fs::read(&cert).unwrap();
        let (_, _, new) = issue_cert("d1", pki_dir.path(), out.path()).unwrap();
        assert!(!new);
        assert_eq!(std::fs::read(&cert).unwrap(), before);
    }
}
