//! The configuration loader (`config::Settings::load_from`): a config file (TOML, or YAML when
//! the first byte is odd) and environment overrides (`NAME=VALUE` lines after a line `%%`).
//! It never panics, whatever the file or the overrides say: every problem is an error that
//! names its key.
#![no_main]

use captain_bridge::config::Settings;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;

fn scratch(ext: &str) -> PathBuf {
    std::env::temp_dir().join(format!("captain-fuzz-config-{}.{ext}", std::process::id()))
}

fuzz_target!(
    // The build's Kafka capabilities are probed once per process (the probe leaks a little in
    // rust-rdkafka when GSSAPI is absent): probed here, before the inputs, so that leak
    // detection sees only what an input itself leaks.
    init: {
        let _ = captain_bridge::kafka::capabilities::check_properties(&Default::default());
    },
    |data: &[u8]| {
    let Some((&format, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let (file, overrides) = text.split_once("\n%%\n").unwrap_or((&text, ""));
    let path = scratch(if format % 2 == 1 { "yaml" } else { "toml" });
    std::fs::write(&path, file).expect("scratch config written");
    let mut env: Vec<(String, String)> = overrides
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // Secrets, so that loading can get past them to everything else.
    env.push(("CAPTAIN_BRIDGE_API_KEY".into(), "fuzz-key".into()));
    env.push((
        "CAPTAIN_BRIDGE_CALLBACK_KEYS".into(),
        "k1:ZnV6ei1zZWNyZXQtZnV6ei1zZWNyZXQ=".into(),
    ));
    match Settings::load_from(Some(&path), env) {
        Ok(settings) => assert!(settings.validate().is_ok(), "a loaded config validates"),
        Err(e) => assert!(!e.to_string().is_empty(), "an error says why"),
    }
});
