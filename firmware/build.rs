//! Puts `memory.x` where the linker finds it, and turns the build-time configuration
//! (`config_local.toml` plus the credentials directory it names) into `config.rs`: the
//! `BUILT_IN` board configuration the agent firmwares fall back to when their flash
//! configuration sector is empty. A missing or wrong value becomes a `compile_error!` in those
//! binaries only, so `test-blink` builds without any configuration.
//! `PICOLET_FIRMWARE_CONFIG=none` builds a generic firmware with no built-in configuration, for
//! boards configured with `picolet board-config`.

use std::path::{Path, PathBuf};
use std::{env, fs};

use base64::Engine;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("memory.x"), include_bytes!("memory.x")).expect("write memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-env-changed=PICOLET_FIRMWARE_CONFIG");

    let path = env::var_os("PICOLET_FIRMWARE_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("config_local.toml"));
    println!("cargo:rerun-if-changed={}", path.display());
    let code = if path.as_os_str() == "none" {
        "/// None: a generic build, configured per board in flash.\n\
         pub static BUILT_IN: Option<picolet_device::board_config::BoardConfig<'static>> = None;\n"
            .to_string()
    } else {
        match config(&path) {
            Ok(code) => code,
            Err(e) => format!(
                "compile_error!({:?});\n",
                format!("picolet firmware configuration: {e}")
            ),
        }
    };
    fs::write(out.join("config.rs"), code).expect("write config.rs");
}

fn pem_der(path: &Path, label: &str) -> Result<Vec<u8>, String> {
    println!("cargo:rerun-if-changed={}", path.display());
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text
        .find(&begin)
        .ok_or_else(|| format!("{} has no {begin} block", path.display()))?;
    let stop = text[start..]
        .find(&end)
        .ok_or_else(|| format!("{} has no {end}", path.display()))?
        + start;
    let b64: String = text[start + begin.len()..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("{}: bad base64: {e}", path.display()))
}

fn string(table: &toml::Table, key: &str, file: &Path) -> Result<String, String> {
    match table.get(key) {
        Some(toml::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(format!(
            "{} needs a non-empty `{key}` (see config_local.toml.template)",
            file.display()
        )),
    }
}

fn config(path: &Path) -> Result<String, String> {
    let text = fs::read_to_string(path).map_err(|_| {
        format!(
            "{} not found: copy config_local.toml.template to config_local.toml and fill it in \
             (or build a generic firmware with PICOLET_FIRMWARE_CONFIG=none and configure each \
             board with `picolet board-config`)",
            path.display()
        )
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // Wi-Fi settings are needed by the Wi-Fi firmware only (it checks them at compile time).
    let ssid = string(&table, "wifi_ssid", path).ok();
    let password = string(&table, "wifi_password", path).ok();
    let server = string(&table, "api_server", path)?;
    let (ip, port) = server
        .rsplit_once(':')
        .ok_or_else(|| format!("api_server {server:?} must be IPv4:PORT"))?;
    let ip: std::net::Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("api_server {server:?} must be IPv4:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("api_server {server:?} has a bad port"))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let creds = base.join(string(&table, "credentials", path)?);
    let node_toml = creds.join("node.toml");
    println!("cargo:rerun-if-changed={}", node_toml.display());
    let node: toml::Table = fs::read_to_string(&node_toml)
        .map_err(|e| {
            format!(
                "cannot read {} ({e}); run `picolet enrol` first",
                node_toml.display()
            )
        })?
        .parse()
        .map_err(|e| format!("{}: {e}", node_toml.display()))?;
    let node_name = string(&node, "node_name", &node_toml)?;
    let server_name = string(&node, "tls_server_name", &node_toml)?;
    let ca = pem_der(&creds.join("ca.crt"), "CERTIFICATE")?;
    let cert = pem_der(&creds.join("client.crt"), "CERTIFICATE")?;
    let key = pem_der(&creds.join("client.key"), "PRIVATE KEY")?;
    // The client CA, when enrolment stored one (absent: the cluster CA is used).
    let client_ca = if creds.join("client-ca.crt").exists() {
        pem_der(&creds.join("client-ca.crt"), "CERTIFICATE")?
    } else {
        Vec::new()
    };
    let o = ip.octets();
    let c = format!(
        "/// The configuration compiled in from {file:?}.\n\
         pub static BUILT_IN: Option<picolet_device::board_config::BoardConfig<'static>> =\n\
         Some(picolet_device::board_config::BoardConfig {{\n\
         node_name: {node_name:?},\n\
         tls_server_name: {server_name:?},\n\
         api_server: ([{}, {}, {}, {}], {port}),\n\
         wifi_ssid: {ssid:?},\n\
         wifi_password: {password:?},\n\
         ca_der: &{ca:?},\n\
         client_cert_der: &{cert:?},\n\
         client_key_pkcs8_der: &{key:?},\n\
         client_ca_der: &{client_ca:?},\n\
         bootstrap_token: \"\",\n\
         }});\n",
        o[0],
        o[1],
        o[2],
        o[3],
        file = path.display().to_string(),
        ssid = ssid.unwrap_or_default(),
        password = password.unwrap_or_default(),
    );
    Ok(c)
}
